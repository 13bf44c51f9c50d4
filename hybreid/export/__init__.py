"""Export: ONNX, TensorRT engines, FP16 graphs and device bundles."""
