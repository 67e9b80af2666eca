"""Export SAM and the students to ONNX, TensorRT engines and Triton model repositories."""
