"""Where and how work runs: devices and mixed precision, deadlines, optional dependencies, progress
bars, and the ONNX Runtime and TensorRT sessions that exported SAM and exported students share."""
