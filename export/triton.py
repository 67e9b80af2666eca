"""Triton Inference Server model repositories from an export directory.

`write_repository(DIR, OUT)` lays out one model per exported graph:

    OUT/<prefix>encoder/config.pbtxt, 1/model.onnx      (max_batch_size 8, dynamic batching)
    OUT/<prefix>decoder/config.pbtxt, 1/model.onnx      (3 masks; no batching: the prompt axis is B)
    OUT/<prefix>decoder_single/...                      (1 mask)
    OUT/<prefix>student/...                             (for student exports; dynamic batching)

platform `onnxruntime_onnx` (copies of the ONNX files, external data included) or `tensorrt_plan`
(the engines `sesam export tensorrt` built; they must match the server's GPU and TensorRT). The
engine backend `models.engine.sam_triton.TritonSamEngine` talks to the SAM models over HTTP.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from export.onnx_export import model_roles
from models.io import missing_file
from models.runtime.onnx_runtime import model_file, read_metadata

PLATFORMS = ("onnxruntime_onnx", "tensorrt_plan")
ENCODER_MAX_BATCH = 8
STUDENT_MAX_BATCH = 8
QUEUE_DELAY_US = 2000


def _tensor(name: str, dtype: str, dims: list[int]) -> str:
    return f'  {{ name: "{name}" data_type: {dtype} dims: [ {", ".join(str(d) for d in dims)} ] }}'


def model_config(
    role: str,
    name: str,
    platform: str,
    instances: int = 1,
    kind: str = "KIND_AUTO",
    metadata: dict | None = None,
) -> str:
    """config.pbtxt text for one model role (encoder, decoder, decoder_single, student); `metadata`
    (of the export) gives the encoder's input side and, for SAM 2, its high-res outputs."""
    if platform not in PLATFORMS:
        raise ValueError(f"platform {platform!r} unknown; choose one of {PLATFORMS}")
    side = int((metadata or {}).get("image_size", 1024))
    maps = (metadata or {}).get("encoder_outputs", {"image_embeddings": [256, 64, 64]})
    if role == "encoder":
        batch, batching = ENCODER_MAX_BATCH, True
        inputs = [_tensor("images", "TYPE_FP32", [3, side, side])]
        outputs = [_tensor(n, "TYPE_FP32", list(shape)) for n, shape in maps.items()]
    elif role.startswith("decoder"):
        batch, batching = 0, False
        c = 3 if role == "decoder" else 1
        inputs = [
            *(_tensor(n, "TYPE_FP32", [1, *shape]) for n, shape in maps.items()),
            _tensor("point_coords", "TYPE_FP32", [-1, -1, 2]),
            _tensor("point_labels", "TYPE_FP32", [-1, -1]),
            _tensor("mask_input", "TYPE_FP32", [-1, 1, 256, 256]),
            _tensor("has_mask_input", "TYPE_FP32", [-1]),
            _tensor("orig_im_size", "TYPE_INT64", [2]),
        ]
        outputs = [
            _tensor("masks", "TYPE_FP32", [-1, c, -1, -1]),
            _tensor("iou_predictions", "TYPE_FP32", [-1, c]),
            _tensor("low_res_masks", "TYPE_FP32", [-1, c, 256, 256]),
        ]
    elif role == "student":
        batch, batching = STUDENT_MAX_BATCH, True
        inputs = [_tensor("images", "TYPE_FP32", [3, -1, -1])]
        outputs = [_tensor("logits", "TYPE_FP32", [-1, -1, -1])]
    else:
        raise ValueError(f"unknown model role {role!r}")
    lines = [
        f'name: "{name}"',
        f'platform: "{platform}"',
        f"max_batch_size: {batch}",
        "input [",
        ",\n".join(inputs),
        "]",
        "output [",
        ",\n".join(outputs),
        "]",
        f"instance_group [ {{ count: {instances} kind: {kind} }} ]",
    ]
    if batching:
        lines.append(f"dynamic_batching {{ max_queue_delay_microseconds: {QUEUE_DELAY_US} }}")
    return "\n".join(lines) + "\n"


def write_repository(
    directory: str | Path,
    out: str | Path,
    platform: str = "onnxruntime_onnx",
    prefix: str = "sam_",
    instances: int = 1,
) -> list[Path]:
    """Write (or update) a Triton model repository; returns the model directories."""
    directory, out = Path(directory), Path(out)
    md = read_metadata(directory)
    if md["kind"] == "instance_student":
        raise ValueError(
            f"{directory}: Triton repositories for instance students are not written yet; serve it with "
            "`bentoml serve` (SESAM_STUDENT_CHECKPOINT={directory})"
        )
    prefix = "" if md["kind"] == "student" and prefix == "sam_" else prefix
    # every model's file first, so that a missing one leaves the repository as it was
    sources: dict[str, tuple[Path, str]] = {}
    for role in model_roles(md):
        if platform == "onnxruntime_onnx":
            source, file_name = model_file(directory, md, role), "model.onnx"
        else:
            plans = [e for e in md.get("tensorrt", []) if role in e["files"]]
            if not plans:
                raise ValueError(
                    f"{directory}: no TensorRT engine for {role}; run `sesam export tensorrt {directory}`"
                )
            source, file_name = directory / plans[-1]["files"][role], "model.plan"
        if not source.is_file():
            raise ValueError(f"{missing_file(source, role + ' model')} (the export is incomplete)")
        sources[role] = (source, file_name)
    written = []
    for role, (source, file_name) in sources.items():
        name = prefix + role
        model_dir = out / name
        version = model_dir / "1"
        version.mkdir(parents=True, exist_ok=True)
        copies = [(source, file_name)]
        data = source.with_name(source.name + ".data")
        if platform == "onnxruntime_onnx" and data.exists():  # the graph names its sidecar: keep the name
            copies.insert(0, (data, data.name))
        for src, dst in copies:  # each file whole or not at all (Triton may be polling the repository)
            tmp = version / f".{dst}.tmp"
            shutil.copy2(src, tmp)
            tmp.replace(version / dst)
        tmp = model_dir / "config.pbtxt.tmp"
        tmp.write_text(model_config(role, name, platform, instances, metadata=md))
        tmp.replace(model_dir / "config.pbtxt")
        written.append(model_dir)
    return written
