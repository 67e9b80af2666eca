"""ONNX Runtime sessions and export-directory metadata, shared by the SAM engine and the students.

Providers are picked automatically (TensorRT EP, then CUDA EP, then CPU, whichever this onnxruntime
build offers) or named explicitly; threads are configurable. `read_metadata` reads the
`metadata.json` that `sesam export` writes beside the ONNX files.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from models.runtime.deps import require

EXPORT_FORMAT = "sesam-onnx/1"
PREFERRED_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


def read_metadata(directory: str | Path, kind: str | None = None) -> dict[str, Any]:
    """metadata.json of an export directory; errors name the file and what is wrong."""
    path = Path(directory) / "metadata.json"
    if not path.is_file():
        raise ValueError(f"{directory}: not an export directory (no metadata.json; run `sesam export ...`)")
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: cannot read ({exc})") from exc
    if not isinstance(data, dict) or data.get("format") != EXPORT_FORMAT:
        raise ValueError(
            f"{path}: format {data.get('format') if isinstance(data, dict) else None!r} is not {EXPORT_FORMAT!r}"
        )
    if kind is not None and data.get("kind") != kind:
        raise ValueError(f"{path}: holds a {data.get('kind')!r} export, expected {kind!r}")
    return data


def choose_providers(requested: Sequence[str] | str | None = None) -> list[str]:
    """The providers to use: `requested` (names, comma-separated or a list; "auto"/None = best available)."""
    ort = require("onnxruntime", "onnx", "ONNX Runtime inference (backend onnx, ONNX students)")

    available = ort.get_available_providers()
    if requested in (None, "", "auto"):
        return [p for p in PREFERRED_PROVIDERS if p in available] or available
    names = [p.strip() for p in requested.split(",")] if isinstance(requested, str) else list(requested)
    short = {p.removesuffix("ExecutionProvider").lower(): p for p in available}
    resolved = []
    for name in names:
        full = name if name in available else short.get(name.lower())
        if full is None:
            raise ValueError(f"onnx provider {name!r} is not available here; available: {available}")
        resolved.append(full)
    return resolved


def create_session(
    path: str | Path, providers: Sequence[str] | str | None = None, threads: int | None = None
):
    """An InferenceSession for `path`, all graph optimisations on; errors name the file."""
    ort = require("onnxruntime", "onnx", "ONNX Runtime inference (backend onnx, ONNX students)")

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such ONNX file")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = int(threads)
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=choose_providers(providers))
    except Exception as exc:
        raise ValueError(f"{path}: onnxruntime cannot load it ({str(exc)[:300]})") from exc


def model_file(directory: str | Path, metadata: dict[str, Any], role: str) -> Path:
    """Path of the file registered under `role` in metadata (e.g. encoder, decoder)."""
    entry = metadata.get("files", {}).get(role)
    if entry is None:
        raise ValueError(f"{directory}/metadata.json: no file registered as {role!r}")
    return Path(directory) / entry["path"]
