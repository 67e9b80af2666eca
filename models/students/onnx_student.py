"""Students exported to ONNX (`sesam export student`), run with ONNX Runtime.

`OnnxStudent.logits` equals `models.students.semantic.predict_logits` of the source checkpoint: the graph
normalises, the host pads to the stride with the mean colour (which normalises to 0, as the torch
path pads after normalising) and crops the logits back.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from models.runtime.onnx_runtime import create_session, model_file, read_metadata


def pad_images(images: np.ndarray, stride: int, pad_value: Sequence[float]) -> np.ndarray:
    """Bx3xHxW float32 -> padded bottom/right to multiples of `stride` with a per-channel value."""
    b, c, h, w = images.shape
    ph, pw = (-h) % stride, (-w) % stride
    if not ph and not pw:
        return np.ascontiguousarray(images, dtype=np.float32)
    out = np.empty((b, c, h + ph, w + pw), np.float32)
    out[:] = np.asarray(pad_value, np.float32).reshape(1, c, 1, 1)
    out[:, :, :h, :w] = images
    return out


class OnnxStudent:
    """A student from an export directory; `logits` takes Bx3xHxW RGB pixels (uint8 or [0, 255])."""

    def __init__(
        self, export_dir: str | Path, providers: Sequence[str] | str | None = None, threads: int | None = None
    ) -> None:
        self.export_dir = Path(export_dir)
        self.metadata: dict[str, Any] = read_metadata(export_dir, kind="student")
        self.session = create_session(model_file(export_dir, self.metadata, "student"), providers, threads)
        self.num_classes = int(self.metadata["num_classes"])
        self.stride = int(self.metadata["stride"])
        self.pad_value = self.metadata["pad_value"]

    def logits(self, images: np.ndarray) -> np.ndarray:
        """Bx3xHxW -> BxCxHxW float32 logits at the input size."""
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images: expected Bx3xHxW, got shape {images.shape}")
        h, w = images.shape[-2:]
        x = pad_images(images.astype(np.float32, copy=False), self.stride, self.pad_value)
        return self.session.run(None, {"images": x})[0][..., :h, :w]
