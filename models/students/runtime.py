"""Students behind one image API, whatever runs them: a PyTorch checkpoint, an ONNX export (ONNX
Runtime: CPU, CUDA or TensorRT execution provider) or a TensorRT engine.

`load_segmenter(source, runtime)` returns a `StudentSegmenter` (semantic: images -> label maps) or
an `InstanceSegmenter` (instance: images -> masks, classes, scores). Both own the pre- and
post-processing (scaling, letterbox, Mask2Former's rule), so every runtime gives the same answers up
to float rounding; only the network's forward differs:

- `torch`: the `.pt` checkpoint (`sesam train`), any device;
- `onnx`: an export directory (`sesam export student`), `providers` as in `models.runtime.onnx_runtime`;
- `tensorrt`: an export directory with an engine built for this GPU (`sesam export tensorrt`).

`auto`: `torch` for a file, `tensorrt` for a directory with an engine for this GPU, else `onnx`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.io import load_checkpoint
from models.runtime.onnx_runtime import create_session, model_file, read_metadata
from models.students.instance import CHECKPOINT_KIND as INSTANCE_KIND
from models.students.instance import InstanceSegmenter, load_instance_student, torch_instance_forward
from models.students.onnx_student import pad_images
from models.students.semantic import CHECKPOINT_KIND as SEMANTIC_KIND
from models.students.semantic import StudentSegmenter, load_student, torch_semantic_forward

RUNTIMES = ("auto", "torch", "onnx", "tensorrt")
STUDENT_TASKS = {"student": "semantic", "instance_student": "instance"}  # export kind -> task
OUTPUT_ORDER = ("logits", "class_logits", "mask_logits")  # the student graphs' outputs (export.onnx_export)

Segmenter = StudentSegmenter | InstanceSegmenter


def checkpoint_task(path: str | Path) -> str:
    """'instance' or 'semantic': what a student checkpoint holds (its tensors are mapped, not read).
    A missing or unreadable file, or one that is no student checkpoint, is a ValueError naming it."""
    kinds = (INSTANCE_KIND, SEMANTIC_KIND)
    checkpoint = load_checkpoint(path, kinds, "student checkpoint", mmap=True)
    return "instance" if checkpoint.kind == INSTANCE_KIND else "semantic"


def _array_forward(run, num_outputs: int):
    """Wrap a numpy runner (feeds -> list of outputs) as a torch-in, torch-out forward."""

    def forward(images: torch.Tensor):
        outputs = run(np.ascontiguousarray(images.numpy(), dtype=np.float32))
        tensors = tuple(torch.from_numpy(np.asarray(o)) for o in outputs[:num_outputs])
        return tensors[0] if num_outputs == 1 else tensors

    return forward


def _semantic_runner(run, metadata: dict[str, Any]):
    """Semantic exports take H, W in multiples of the stride: pad with the mean colour, crop back."""
    stride, pad_value = int(metadata["stride"]), metadata["pad_value"]

    def padded_run(x: np.ndarray) -> list[np.ndarray]:
        h, w = x.shape[-2:]
        return [run(pad_images(x, stride, pad_value))[0][..., :h, :w]]

    return padded_run


def _onnx_run(directory: Path, metadata: dict[str, Any], providers, threads: int | None, role: str):
    session = create_session(model_file(directory, metadata, role), providers, threads)
    names = [o.name for o in session.get_outputs()]
    return (lambda x: session.run(names, {"images": x})), session.get_providers()


def _student_engine(directory: Path) -> Path:
    """The student engine built for this GPU and TensorRT version (raises TensorRTUnavailable)."""
    from models.runtime.tensorrt_runtime import find_engine, require_tensorrt

    trt = require_tensorrt()
    return find_engine(directory, "student", torch.cuda.get_device_name(0), trt.__version__)


def _tensorrt_run(directory: Path):
    from models.runtime.tensorrt_runtime import TensorRTModel

    engine = TensorRTModel(_student_engine(directory))
    # the forward's order (class logits before mask logits), whatever order the engine lists them in
    names = sorted(
        engine.outputs, key=lambda n: OUTPUT_ORDER.index(n) if n in OUTPUT_ORDER else len(OUTPUT_ORDER)
    )

    def run(x: np.ndarray) -> list[np.ndarray]:
        out = engine.run({"images": x})
        return [out[name] for name in names]

    return run


def has_tensorrt_engine(directory: Path) -> bool:
    """Whether TensorRT, a GPU and an engine for it are all here (the `auto` runtime's test)."""
    try:
        _student_engine(directory)
    except Exception:  # no tensorrt, no CUDA, or no engine for this GPU: ONNX Runtime instead
        return False
    return True


def check_providers(source: str | Path, providers: Sequence[str] | str | None) -> None:
    """ONNX Runtime providers are read only from an export directory's runtime: given with a `.pt`
    checkpoint (run by torch) they are an error, not silently ignored."""
    if providers and not Path(source).is_dir():
        raise ValueError(
            f"{source}: providers are read by the onnx runtime of an export directory only; "
            "a .pt checkpoint runs on torch (device)"
        )


def load_segmenter(
    source: str | Path,
    runtime: str = "auto",
    device: str = "cpu",
    providers: Sequence[str] | str | None = None,
    threads: int | None = None,
    batch_size: int = 8,
    onnx_file: str = "student",
) -> Segmenter:
    """A student from a `.pt` checkpoint or an export directory, run by `runtime` (see module doc).
    `onnx_file`: the export's graph ONNX Runtime runs, `student` or `student_int8` (`sesam export
    quantize`)."""
    if runtime not in RUNTIMES:
        raise ValueError(f"student runtime {runtime!r} unknown; choose one of {RUNTIMES}")
    path = Path(source)
    if path.is_dir():
        metadata = read_metadata(path)
        task = STUDENT_TASKS.get(metadata.get("kind"))
        if task is None:
            raise ValueError(
                f"{path}/metadata.json: holds a {metadata.get('kind')!r} export, not a student "
                f"({', '.join(STUDENT_TASKS)})"
            )
        if runtime == "torch":
            raise ValueError(f"{path}: runtime torch needs the .pt checkpoint, not an export directory")
        if runtime == "auto":
            runtime = "tensorrt" if has_tensorrt_engine(path) else "onnx"
        meta = metadata | {"name": metadata.get("student"), "num_classes": metadata["num_classes"]}
        if runtime == "onnx":
            run, used = _onnx_run(path, metadata, providers, threads, onnx_file)
            meta["providers"] = used
            runtime = runtime if onnx_file == "student" else f"onnx-{onnx_file}"
        else:
            run = _tensorrt_run(path)
        if task == "semantic":
            forward = _array_forward(_semantic_runner(run, metadata), 1)
            return StudentSegmenter(forward, meta, runtime, batch_size)
        return InstanceSegmenter(_array_forward(run, 2), meta, runtime, batch_size)
    if runtime not in ("auto", "torch"):
        raise ValueError(f"{path}: runtime {runtime} needs an export directory (sesam export student)")
    check_providers(path, providers)
    if checkpoint_task(path) == "instance":
        model, meta = load_instance_student(path)
        return InstanceSegmenter(torch_instance_forward(model, device), meta, "torch", batch_size)
    model, meta = load_student(path)
    return StudentSegmenter(torch_semantic_forward(model, device), meta, "torch", batch_size)


__all__ = ["RUNTIMES", "Segmenter", "check_providers", "checkpoint_task", "load_segmenter"]
