"""int8 quantization for CPUs: the exported SAM encoder (dynamic) and students (dynamic, or static
with calibration images), with fidelity reports.

`quantize_encoder(DIR)` writes `encoder_int8.onnx` beside `encoder.onnx` (weights int8, activations
quantized on the fly by onnxruntime; MatMul and Gemm only, the bulk of a ViT) and registers it in
metadata.json, so `OnnxSamEngine(DIR, encoder_file="encoder_int8")` can use it. `fidelity` compares
it with the fp32 encoder on real images: embedding cosine / max diff and agreement of the masks the
same decoder makes from either embedding.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import numpy as np

from export.onnx_export import _file_entry, write_metadata
from models.runtime.deps import require
from models.runtime.onnx_runtime import SAM_KINDS, model_file, read_metadata
from models.students.runtime import STUDENT_TASKS


def _require_quantization() -> None:
    """onnxruntime.quantization imports onnx: name the extras instead of a bare ImportError."""
    require("onnxruntime", "onnx", "int8 quantization (sesam export quantize)")
    require("onnx", "export", "int8 quantization (sesam export quantize)")


def quantize_encoder(directory: str | Path) -> Path:
    _require_quantization()
    from onnxruntime.quantization import QuantType, quantize_dynamic

    directory = Path(directory)
    md = read_metadata(directory, kind=SAM_KINDS)
    source = model_file(directory, md, "encoder")
    target = directory / "encoder_int8.onnx"
    tmp = directory / "encoder_int8.tmp.onnx"
    quantize_dynamic(
        str(source),
        str(tmp),
        weight_type=QuantType.QInt8,
        op_types_to_quantize=["MatMul", "Gemm"],
        extra_options={"MatMulConstBOnly": True},
        use_external_data_format=(source.with_name(source.name + ".data")).exists(),
    )
    quantized = _quantized_ops(tmp)
    if not quantized:
        tmp.unlink(missing_ok=True)
        Path(str(tmp) + ".data").unlink(missing_ok=True)
        raise ValueError(
            f"{directory}: the encoder has no MatMul or Gemm with constant weights, so dynamic int8 would "
            "write an unchanged copy (EfficientViT-SAM's encoder is convolutions); use the fp32 encoder"
        )
    tmp.replace(target)
    md["files"]["encoder_int8"] = _file_entry(target) | {
        "quantization": f"dynamic int8 (MatMul, Gemm): {quantized} ops"
    }
    write_metadata(directory, md)
    return target


def _quantized_ops(path: Path) -> int:
    """How many integer ops (MatMulInteger, ConvInteger, ...) a quantized graph holds."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return sum(node.op_type.endswith("Integer") for node in graph.node)


def fidelity(
    directory: str | Path, prompts_per_image: int = 16, seed: int = 0, fp32: Any = None, int8: Any = None
) -> dict[str, Any]:
    """int8 vs fp32 encoder on the verification images; the decoder is the same fp32 one.
    `fp32` / `int8`: engines already open on this directory (saves loading the models twice)."""
    from export.verify import random_prompts, sample_images
    from models.engine.base import backend_payload
    from models.engine.sam_onnx import OnnxSamEngine

    fp32 = fp32 or OnnxSamEngine(directory)
    int8 = int8 or OnnxSamEngine(directory, encoder_file="encoder_int8")
    rng = np.random.default_rng(seed)
    cosines, diffs, agreements, ious = [], [], [], []
    for image in sample_images(seed).values():
        a, b = fp32.embed([image])[0], int8.embed([image])[0]
        ea, eb = backend_payload(a.payload).embedding.ravel(), backend_payload(b.payload).embedding.ravel()
        cosines.append(float(ea @ eb / (np.linalg.norm(ea) * np.linalg.norm(eb) + 1e-12)))
        diffs.append(float(np.abs(ea - eb).max()))
        prompts = random_prompts(prompts_per_image, image.shape[:2], rng)
        pa, pb = fp32.predict(a, prompts, True), int8.predict(b, prompts, True)
        agreements.append(float((pa.masks == pb.masks).mean()))
        inter = (pa.masks & pb.masks).sum((-1, -2))
        union = (pa.masks | pb.masks).sum((-1, -2))
        ious.append(float(np.mean(np.where(union > 0, inter / np.maximum(union, 1), 1.0))))
    return {
        "embedding_cosine_min": min(cosines),
        "embedding_max_abs_diff": max(diffs),
        "mask_pixel_agreement_mean": float(np.mean(agreements)),
        "mask_iou_int8_vs_fp32_mean": float(np.mean(ious)),
        "images": len(cosines),
        "prompts_per_image": prompts_per_image,
    }


QUANTIZATION_MODES = ("dynamic", "static")


class _CalibrationImages:
    """ONNX Runtime calibration reader: each image preprocessed exactly as the student's runtime
    does (`StudentSegmenter` / `InstanceSegmenter`), one image per batch."""

    def __init__(self, directory: Path, images: list[np.ndarray]) -> None:
        from models.students.runtime import load_segmenter

        student = load_segmenter(directory, "onnx")
        captured: list[np.ndarray] = []

        def capture(x):  # record what the runtime would feed the graph, answer nothing useful
            captured.append(np.ascontiguousarray(x.numpy(), np.float32))
            raise _Captured

        student.forward = capture
        self.feeds = []
        for image in images:
            with contextlib.suppress(_Captured):
                student.segment([image])
            x = captured.pop()
            if student.task == "semantic":  # the graph takes multiples of the stride
                from models.students.onnx_student import pad_images

                md = student.meta
                x = pad_images(x, int(md["stride"]), md["pad_value"])
            self.feeds.append({"images": x})
        self._iter = iter(self.feeds)

    def get_next(self):
        return next(self._iter, None)

    def rewind(self) -> None:
        self._iter = iter(self.feeds)


class _Captured(Exception):
    pass


def quantize_student(
    directory: str | Path, mode: str = "dynamic", calibration: list[np.ndarray] | None = None
) -> Path:
    """Write student_int8.onnx beside student.onnx and register it as `student_int8`.

    dynamic: int8 weights, activations quantized on the fly (no data needed). static: weights and
    activations int8 in QDQ form, activation ranges calibrated on `calibration` images (MinMax)."""
    _require_quantization()
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    directory = Path(directory)
    md = read_metadata(directory)
    if md.get("kind") not in STUDENT_TASKS:
        raise ValueError(f"{directory}: holds a {md.get('kind')!r} export, not a student")
    if mode not in QUANTIZATION_MODES:
        raise ValueError(f"quantization mode {mode!r} unknown; choose one of {QUANTIZATION_MODES}")
    source = model_file(directory, md, "student")
    target, tmp = directory / "student_int8.onnx", directory / "student_int8.tmp.onnx"
    if mode == "dynamic":
        quantize_dynamic(str(source), str(tmp), weight_type=QuantType.QInt8)
        note = "dynamic int8 (weights int8, activations quantized on the fly)"
    else:
        if not calibration:
            raise ValueError("static quantization needs calibration images (--calibration DIR)")
        reader = _CalibrationImages(directory, calibration)
        quantize_static(
            str(source),
            str(tmp),
            reader,
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
        )
        note = f"static int8 QDQ, per-channel weights, MinMax calibration on {len(calibration)} images"
    tmp.replace(target)
    md["files"]["student_int8"] = _file_entry(target) | {"quantization": note}
    write_metadata(directory, md)
    return target
