"""Export: ONNX graphs, TensorRT engines, the bundle writer and its manifest."""
