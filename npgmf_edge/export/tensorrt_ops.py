"""ONNX operators our graphs may contain: all parsed by TensorRT 10 and 11 (onnx-tensorrt's operator
support matrix), and all run by onnxruntime's CPU provider. A graph test fails on any op outside this set,
so a change that would break engine builds on a station shows up here, on a CPU-only machine."""

TENSORRT_OPS = frozenset(
    {
        "Add", "ArgMin", "AveragePool", "BatchNormalization", "Cast", "Clip", "Concat", "Constant",
        "ConstantOfShape", "Conv", "ConvTranspose", "DequantizeLinear", "Div", "Equal", "Erf", "Expand",
        "Flatten", "Gather", "Gemm", "GlobalAveragePool", "Identity", "LayerNormalization", "MatMul", "Max",
        "MaxPool", "Min", "Mul", "Neg", "Pad", "Pow", "QuantizeLinear", "ReduceL2", "ReduceMax", "ReduceMean",
        "ReduceMin", "ReduceSum", "Relu", "Reshape", "Resize", "Shape", "Sigmoid", "Slice", "Softmax",
        "Split", "Sqrt", "Squeeze", "Sub", "Tile", "Transpose", "Unsqueeze", "Where",
    }
)  # fmt: skip
