"""Graph runners behind one interface (`base.Backend`): onnxruntime and native TensorRT, imported lazily."""
