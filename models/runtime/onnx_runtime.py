"""ONNX Runtime sessions and export-directory metadata, shared by the SAM engine and the students.

Providers are picked automatically (TensorRT EP, then CUDA EP, then CPU, whichever this onnxruntime
build offers) or named explicitly; threads are configurable. `load_export_metadata` is the one
reader of the `metadata.json` that `sesam export` writes beside the ONNX files: it checks the
format, the kind and the fields and files that kind must have, once, and gives an `ExportMetadata`
that the runtimes are handed instead of reading the file again.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.config import lookup
from models.runtime.deps import require

EXPORT_FORMAT = "sesam-onnx/1"
PREFERRED_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


@dataclass(frozen=True)
class ExportKind:
    """What metadata.json of one kind of export must hold besides `format`, `kind`, `files` and
    `source`: fields (name -> JSON type) and the ONNX graphs, by role, that runtimes build from."""

    fields: Mapping[str, type | tuple[type, ...]]
    roles: tuple[str, ...]


SAM_FIELDS: dict[str, type | tuple[type, ...]] = {
    "sam_type": str,
    "image_size": int,
    "pixel_mean": list,
    "pixel_std": list,
    "mask_threshold": (int, float),
}
SAM_KINDS = ("sam", "sam2")  # exports a SAM engine runs (promptable segmenters)

# export kind -> what its metadata.json holds (every field a runtime or `sesam export verify` reads)
EXPORT_KINDS: dict[str, ExportKind] = {
    "sam": ExportKind(SAM_FIELDS, ("encoder", "decoder", "decoder_single")),
    # SAM 2.1: the encoder also gives two high-res maps, images are stretched (`preprocess`)
    "sam2": ExportKind(
        {**SAM_FIELDS, "preprocess": dict, "encoder_outputs": dict}, ("encoder", "decoder", "decoder_single")
    ),
    "student": ExportKind(
        {"student": str, "num_classes": int, "stride": int, "pad_value": list}, ("student",)
    ),
    "instance_student": ExportKind(
        {"student": str, "num_classes": int, "input_side": int, "pad_value": list}, ("student",)
    ),
}


@dataclass(frozen=True, eq=False)
class ExportMetadata(Mapping[str, Any]):
    """metadata.json of an export directory, read and checked once (`load_export_metadata`).

    Reads as the file's mapping (`md["files"]`, `md.get("source")`); `kind` is checked against
    `EXPORT_KINDS`, and every field and file that kind must have is present."""

    directory: Path
    kind: str
    data: dict[str, Any]  # the whole file, as written

    @property
    def path(self) -> Path:
        return self.directory / "metadata.json"

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)

    def __or__(self, other: Mapping[str, Any]) -> dict[str, Any]:
        return self.data | dict(other)

    def expect(self, kind: str | tuple[str, ...]) -> ExportMetadata:
        """Itself when it holds an export of `kind` (or of one of several kinds), else a ValueError
        naming the file."""
        kinds = (kind,) if isinstance(kind, str) else kind
        if self.kind not in kinds:
            wanted = " or ".join(repr(k) for k in kinds)
            raise ValueError(f"{self.path}: holds a {self.kind!r} export, expected {wanted}")
        return self

    @property
    def roles(self) -> tuple[str, ...]:
        """The ONNX graphs runtimes build from (TensorRT engines, Triton models), by role."""
        return EXPORT_KINDS[self.kind].roles

    def file(self, role: str) -> Path:
        """Path of the file registered under `role` (e.g. encoder, decoder, student_int8)."""
        entry = self.data["files"].get(role)
        if not isinstance(entry, Mapping) or not isinstance(entry.get("path"), str):
            raise ValueError(f"{self.path}: no file registered as {role!r}")
        return self.directory / entry["path"]


def _check_fields(path: Path, data: dict[str, Any], kind: str, spec: ExportKind) -> None:
    """Every field and file an export of `kind` must have, of its JSON type; errors name the file."""
    needed = {"files": dict, "source": dict, **spec.fields}
    for name, types in needed.items():
        if name not in data:
            raise ValueError(f"{path}: a {kind!r} export needs {name!r}, which is missing")
        value = data[name]
        if not isinstance(value, types) or isinstance(value, bool):
            wanted = types.__name__ if isinstance(types, type) else " or ".join(t.__name__ for t in types)
            raise ValueError(f"{path}: {name} = {value!r}, expected {wanted}")
    for role in spec.roles:
        entry = data["files"].get(role)
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
            raise ValueError(f"{path}: no file registered as {role!r}")
    # a graph replaced or cut short since metadata.json was written (an interrupted re-export, a
    # copy that stopped): its size no longer matches (sizes only: hashing gigabytes at every load
    # would cost seconds; the cache namespace still trusts the recorded sha256)
    for role, entry in data["files"].items():
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
            continue
        file, size = path.parent / entry["path"], entry.get("bytes")
        actual = file.stat().st_size if isinstance(size, int) and file.is_file() else size
        if actual != size:
            raise ValueError(
                f"{path}: {entry['path']} ({role}) is {actual} bytes, metadata.json says "
                f"{size}: the export is incomplete or was changed; export it again"
            )


def load_export_metadata(
    source: str | Path | ExportMetadata, kind: str | tuple[str, ...] | None = None
) -> ExportMetadata:
    """The checked metadata of an export directory (a given `ExportMetadata` is not read again);
    with `kind`, an export of another kind is refused. Errors name the file and what is wrong."""
    if isinstance(source, ExportMetadata):
        return source.expect(kind) if kind is not None else source
    directory = Path(source)
    path = directory / "metadata.json"
    if not path.is_file():
        raise ValueError(f"{source}: not an export directory (no metadata.json; run `sesam export ...`)")
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: cannot read ({exc})") from exc
    if not isinstance(data, dict) or data.get("format") != EXPORT_FORMAT:
        raise ValueError(
            f"{path}: format {data.get('format') if isinstance(data, dict) else None!r} is not {EXPORT_FORMAT!r}"
        )
    try:
        spec = lookup(EXPORT_KINDS, data.get("kind"), "export kind")
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    _check_fields(path, data, data["kind"], spec)
    metadata = ExportMetadata(directory, data["kind"], data)
    return metadata.expect(kind) if kind is not None else metadata


def read_metadata(directory: str | Path, kind: str | tuple[str, ...] | None = None) -> dict[str, Any]:
    """metadata.json of an export directory as a plain dict (checked by `load_export_metadata`),
    for callers that edit and rewrite it."""
    return load_export_metadata(directory, kind).data


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


def model_file(directory: str | Path, metadata: Mapping[str, Any], role: str) -> Path:
    """Path of the file registered under `role` in metadata (e.g. encoder, decoder)."""
    entry = metadata.get("files", {}).get(role)
    if entry is None:
        raise ValueError(f"{directory}/metadata.json: no file registered as {role!r}")
    return Path(directory) / entry["path"]
