"""Running TensorRT engines built by `sesam export tensorrt`: lookup by GPU and version, execution
on CUDA with torch tensors as buffers. Import-safe without TensorRT; every entry point raises
`TensorRTUnavailable` with what to install."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from models.runtime.deps import MissingDependency


class TensorRTUnavailable(MissingDependency):
    """TensorRT or a CUDA GPU is missing."""


def require_tensorrt():
    """Import tensorrt and check for a CUDA device, or explain what is missing."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise TensorRTUnavailable(
            "TensorRT is not installed: on a machine with an NVIDIA GPU, pip install 'sesam[tensorrt]' "
            "(NVIDIA's tensorrt wheels)"
        ) from exc
    import torch

    if not torch.cuda.is_available():
        raise TensorRTUnavailable("TensorRT needs a CUDA GPU; torch.cuda.is_available() is False here")
    return trt


def engine_filename(role: str, gpu_name: str, trt_version: str, fp16: bool) -> str:
    """`role.GPU.trtX.Y.Z.fp16|fp32.plan` with the GPU name made file-safe."""
    gpu = re.sub(r"[^A-Za-z0-9]+", "_", gpu_name).strip("_") or "gpu"
    return f"{role}.{gpu}.trt{trt_version}.{'fp16' if fp16 else 'fp32'}.plan"


def find_engine(
    directory: str | Path, role: str, gpu_name: str, trt_version: str, fp16: bool | None = None
) -> Path:
    """The engine of `role` built for this GPU and TensorRT version (fp16 preferred when None)."""
    options = [fp16] if fp16 is not None else [True, False]
    for precision in options:
        path = Path(directory) / engine_filename(role, gpu_name, trt_version, precision)
        if path.is_file():
            return path
    raise ValueError(
        f"{directory}: no TensorRT engine for {role} built on {gpu_name!r} with TensorRT {trt_version}; "
        f"run `sesam export tensorrt {directory}` on this machine"
    )


class TensorRTModel:
    """One deserialized engine and its execution context; `run` maps numpy inputs to numpy outputs.

    Inputs go to the GPU as torch tensors; shape-tensor inputs (the decoder's orig_im_size) stay in
    host memory as TensorRT requires; outputs whose shape depends on input values (the decoder's
    full-size masks) are allocated when TensorRT asks, through an output allocator."""

    def __init__(self, path: str | Path) -> None:
        trt = require_tensorrt()
        import torch

        self.trt, self.torch = trt, torch
        self.path = Path(path)
        logger = trt.Logger(trt.Logger.WARNING)
        self.engine = trt.Runtime(logger).deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise ValueError(f"{self.path}: TensorRT cannot deserialize this engine (other GPU or version?)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]

    def _torch_dtype(self, name: str):
        return {
            self.trt.float32: self.torch.float32,
            self.trt.float16: self.torch.float16,
            self.trt.int64: self.torch.int64,
            self.trt.int32: self.torch.int32,
        }[self.engine.get_tensor_dtype(name)]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch, trt = self.torch, self.trt
        keep = []
        for name in self.inputs:
            value = np.ascontiguousarray(feeds[name])
            if self.engine.is_shape_inference_io(name):
                host = np.ascontiguousarray(value.astype(np.int64))
                keep.append(host)
                self.context.set_tensor_address(name, host.ctypes.data)
                continue
            tensor = torch.from_numpy(value).to("cuda", dtype=self._torch_dtype(name))
            keep.append(tensor)
            if not self.context.set_input_shape(name, tuple(tensor.shape)):
                raise ValueError(
                    f"{self.path}: input {name} of shape {tuple(tensor.shape)} lies outside the engine's "
                    "optimization profile (see `sesam export tensorrt`)"
                )
            self.context.set_tensor_address(name, tensor.data_ptr())
        allocator = _OutputAllocator(trt, torch)
        out = {}
        for name in self.outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            if -1 in shape:  # data-dependent: TensorRT allocates through the allocator
                self.context.set_output_allocator(name, allocator)
                continue
            out[name] = torch.empty(shape, dtype=self._torch_dtype(name), device="cuda")
            self.context.set_tensor_address(name, out[name].data_ptr())
        stream = torch.cuda.current_stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError(f"{self.path}: TensorRT execution failed")
        stream.synchronize()
        for name, (buffer, shape) in allocator.buffers.items():
            out[name] = buffer.view(self._torch_dtype(name))[: int(np.prod(shape))].reshape(shape)
        return {k: v.float().cpu().numpy() for k, v in out.items()}


class _OutputAllocator:
    """trt.IOutputAllocator backed by torch CUDA byte buffers (built lazily: needs tensorrt)."""

    def __new__(cls, trt, torch):
        class Allocator(trt.IOutputAllocator):
            def __init__(self) -> None:
                super().__init__()
                self.buffers: dict[str, tuple] = {}
                self.shapes: dict[str, tuple] = {}

            def reallocate_output(self, name, memory, size, alignment):
                buffer = torch.empty(max(int(size), 1), dtype=torch.uint8, device="cuda")
                self.buffers[name] = (buffer, self.shapes.get(name, ()))
                return buffer.data_ptr()

            def notify_shape(self, name, shape):
                buffer = self.buffers[name][0]
                self.buffers[name] = (buffer, tuple(shape))

        return Allocator()
