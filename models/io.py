"""Files every stage writes and reads: the unlabeled value, atomic writes, class-map PNGs, JSON,
checkpoints and their weights, a per-process cache of models read from disk, and masks as data
(COCO RLE via pycocotools, tight boxes, an instance answer as records).

Written once here and used by refinement, training, export, serving and the benchmarks. Every
writer here goes through `atomic_write`: to a temp file in the target's folder, then renamed onto
it, so a reader never sees half a file and a crash leaves the earlier file whole.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pycocotools.mask as mask_utils
from PIL import Image

# the class id of "no label" in every HxW uint8 class map (weak maps, refined maps, pseudo-labels)
UNLABELED = 255


def unreadable(path: str | Path, what: str, exc: BaseException) -> str:
    """Why torch could not load `path`: torch's own first line for a file torch.save wrote (its zip
    archive, whole or truncated, or its legacy pickle), else that it is not such a file."""
    with open(path, "rb") as f:
        head = f.read(2)
    if head == b"PK" or head[:1] == b"\x80":
        lines = str(exc).strip().splitlines()
        return f"{path}: cannot read the {what}: {lines[0] if lines else type(exc).__name__}"
    return f"{path}: cannot read the {what}: not a file torch.save wrote"


def missing_file(path: str | Path, what: str) -> str:
    """Why `path` is not the `what` file asked for: a folder given where a file is meant, or nothing there."""
    if Path(path).is_dir():
        return f"{path}: a folder, not a {what} file"
    return f"{path}: no such {what}"


def atomic_write(path: str | Path, write: Callable[[str], Any]) -> None:
    """Call write(tmp_path) then rename onto `path`, so readers never see a half-written file.
    Makes the parent folders; the file gets the usual permissions (0666 less the umask); the temp
    file is removed when `write` fails."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, "a folder, not a file to write", str(path))
    path.parent.mkdir(parents=True, exist_ok=True)  # its error names the folder in the way
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:  # name the file asked for, not the temporary
        raise type(exc)(exc.errno, f"cannot write it ({exc.strerror})", str(path)) from exc
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; outputs get the usual permissions
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


CHECKPOINT_FORMAT = "sesam-checkpoint"
CHECKPOINT_VERSION = 1


@dataclass(frozen=True)
class Checkpoint:
    """What every checkpoint the project writes holds (students, CAM classifiers, WSOD heads,
    detectors, and the training loop's resume state `last.pt`).

    `kind` names what it is ("semantic_student", "train_state", ...); `config` what rebuilds it (the
    architecture's name and sizes); `weights` its state dict(s) (tensors only); `metadata` anything
    else (class names, the run's summary, the iteration). `version` is the layout's version.
    """

    kind: str
    config: dict[str, Any]
    weights: dict[str, Any]
    metadata: dict[str, Any] = field(default_factory=dict)
    version: int = CHECKPOINT_VERSION


@dataclass(frozen=True)
class LegacyLayout:
    """An unversioned (pre-version-1) network checkpoint: a dict of `config_keys`, `state_dict` and
    any other keys (the metadata), tagged by a top-level "kind" equal to `tag`. `tag` None: the
    semantic student's layout, whose "kind" (when there) was the label kind, never another tag."""

    config_keys: tuple[str, ...]
    tag: str | None

    def read(self, payload: dict[str, Any]) -> tuple[dict, dict, dict] | None:
        """(config, weights, metadata), or None when `payload` is not this layout."""
        tagged = payload.get("kind") in LEGACY_TAGS
        if (payload.get("kind") != self.tag if self.tag else tagged) or not {
            *self.config_keys,
            "state_dict",
        } <= payload.keys():
            return None
        dropped = {*self.config_keys, "state_dict"} | ({"kind"} if self.tag else set())
        metadata = {k: v for k, v in payload.items() if k not in dropped}
        return {k: payload[k] for k in self.config_keys}, payload["state_dict"], metadata


def _legacy_train_state(payload: dict[str, Any]) -> tuple[dict, dict, dict] | None:
    """The training loop's last.pt before version 1, {**recipe state, iteration, config, best_miou},
    or WeakSAM's own, {model, optimizer, iteration, settings}; `iteration` is the last one done."""
    if "iteration" not in payload:
        return None
    if isinstance(payload.get("config"), dict):
        weights = {k: v for k, v in payload.items() if k not in ("iteration", "config", "best_miou")}
        metadata = {"iteration": payload["iteration"], "best_score": payload.get("best_miou", float("nan"))}
        return payload["config"], weights, metadata
    if isinstance(payload.get("settings"), dict) and {"model", "optimizer"} <= payload.keys():
        weights = {"model": payload["model"], "optimizer": payload["optimizer"]}
        return payload["settings"], weights, {"iteration": payload["iteration"]}
    return None


# kind -> the reader of its layout from before version 1: (config, weights, metadata) or None
LEGACY_LAYOUTS: dict[str, Callable[[dict[str, Any]], tuple[dict, dict, dict] | None]] = {
    "semantic_student": LegacyLayout(("name", "num_classes"), None).read,
    "instance_student": LegacyLayout(("name", "num_classes"), "instance").read,
    "cam": LegacyLayout(("student", "num_classes", "output_stride"), "cam").read,
    "wsod": LegacyLayout(("student", "num_classes", "refinements", "hidden", "roi_size"), "wsod").read,
    "detector": LegacyLayout(("num_classes",), "detector").read,
    "train_state": _legacy_train_state,
}
LEGACY_TAGS = ("instance", "cam", "wsod", "detector")


def save_checkpoint(
    path: str | Path,
    kind: str,
    config: dict[str, Any],
    weights: dict[str, Any],
    metadata: dict[str, Any] | None = None,
) -> None:
    """Write a `Checkpoint` atomically (torch.save of plain containers, readable with weights_only)."""
    import torch

    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "kind": kind,
        "config": dict(config),
        "weights": weights,
        "metadata": dict(metadata or {}),
    }
    atomic_write(path, lambda tmp: torch.save(payload, tmp))


def load_checkpoint(
    path: str | Path, kinds: str | tuple[str, ...], what: str = "checkpoint", mmap: bool = False
) -> Checkpoint:
    """Read a checkpoint of one of `kinds` (weights only, on the CPU; `mmap` maps the tensors instead
    of reading them). Errors name the file and `what` it should be: a missing or unreadable file, a
    payload that is no checkpoint, another kind, or a version newer than this code reads.
    Unversioned files of the layouts written before version 1 are read through `LEGACY_LAYOUTS`."""
    import torch

    kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)
    path = Path(path)
    if not path.is_file():
        raise ValueError(missing_file(path, what))
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:  # torch raises many types here (pickle, zip, EOF, runtime)
        raise ValueError(unreadable(path, what, exc)) from exc
    if not isinstance(payload, dict):
        raise ValueError(f"{path}: not a {what}")
    if payload.get("format") != CHECKPOINT_FORMAT:
        for kind in kinds:
            reader = LEGACY_LAYOUTS.get(kind)
            layout = reader(payload) if reader is not None else None
            if layout is not None:
                config, weights, metadata = layout
                return Checkpoint(kind, config, weights, metadata, version=0)
        raise ValueError(f"{path}: not a {what} (no sesam checkpoint of kind {' or '.join(kinds)})")
    version = payload.get("version")
    if type(version) is not int or not 1 <= version <= CHECKPOINT_VERSION:
        raise ValueError(
            f"{path}: checkpoint layout version {version!r}; this sesam reads up to {CHECKPOINT_VERSION}"
        )
    if payload.get("kind") not in kinds:
        raise ValueError(
            f"{path}: a {payload.get('kind')!r} checkpoint, expected {what} ({' or '.join(kinds)})"
        )
    parts = [payload.get(key, {}) for key in ("config", "weights", "metadata")]
    if "config" not in payload or "weights" not in payload or not all(isinstance(p, dict) for p in parts):
        raise ValueError(f"{path}: a damaged {what} (config, weights and metadata must be dicts)")
    return Checkpoint(payload["kind"], *parts, version=version)


@functools.lru_cache(maxsize=8)
def _loaded(loader: Callable[..., Any], path: str, mtime_ns: int, args: tuple) -> Any:
    return loader(path, *args)


def load_once(loader: Callable[..., Any], path: str | Path, *args: Any, what: str = "file") -> Any:
    """`loader(path, *args)`, cached per process: the key is (loader, resolved path, its
    modification time, args), and the 8 most recently used results are kept. A rewritten file
    loads afresh; for a folder only the folder's own modification time counts (a file replaced
    inside it may not). A missing path is a ValueError naming `what` it should be. The service
    builds labelers per request; their models (CAM classifiers, WSOD heads, detectors) are read
    from disk once while they stay in the cache."""
    resolved = Path(path).resolve()
    if not resolved.exists():
        raise ValueError(f"{path}: no such {what}")
    return _loaded(loader, str(resolved), resolved.stat().st_mtime_ns, args)


def weights_state(model: Any, half: bool = False) -> dict[str, Any]:
    """A module's state dict for a checkpoint; `half` stores floating tensors as fp16 (shipping)."""
    return {k: (v.half() if half and v.is_floating_point() else v) for k, v in model.state_dict().items()}


def load_weights(model: Any, state: dict[str, Any], path: str | Path, what: str) -> Any:
    """Load a checkpoint's state dict (floating tensors, fp16 ones included, as fp32) into `model`
    and return it in eval mode; a mismatch is a ValueError naming the file and `what` it should fit."""
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ValueError(f"{path}: weights do not fit {what}: {str(exc)[:300]}") from exc
    return model.eval()


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a text file atomically."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def save_png(array: np.ndarray, path: str | Path) -> None:
    """Write an HxW class map or HxWx3 picture as PNG (cast to uint8), atomically."""
    atomic_write(path, lambda tmp: Image.fromarray(array.astype(np.uint8)).save(tmp, format="PNG"))


def save_json(data: Any, path: str | Path) -> None:
    """Write JSON (indent 1) atomically."""

    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(data, f, indent=1)

    atomic_write(path, write)


def read_label_png(
    path: str | Path | BinaryIO, source: str | None = None, expected_size: tuple[int, int] | None = None
) -> np.ndarray:
    """Read an HxW uint8 class map from an 8-bit single-channel image (mode L, or P: the palette
    indices are the classes); errors name the file (`source`, else the path).

    With `expected_size` (H, W) the header is checked before any pixel is decoded, so a small file
    declaring a huge map (a decompression bomb) is refused without allocating it.
    """
    label = source or str(path)
    try:
        with Image.open(path) as img:
            if expected_size is not None and (img.height, img.width) != tuple(expected_size):
                h, w = expected_size
                raise ValueError(f"{label}: {img.width}x{img.height} class map, the image is {w}x{h}")
            if img.mode not in ("L", "P"):
                raise ValueError(
                    f"{label}: class maps must be 8-bit single-channel PNGs, got mode {img.mode}"
                )
            return np.asarray(img, dtype=np.uint8).copy()
    except FileNotFoundError as exc:
        raise ValueError(f"{label}: no such file") from exc
    except (OSError, Image.DecompressionBombError) as exc:
        raise ValueError(f"{label}: not a readable PNG ({exc})") from exc


# -- masks as data ----------------------------------------------------------------------------------
def encode_rle(mask: np.ndarray) -> dict:
    """HxW bool -> COCO RLE {"size": [H, W], "counts": str} (column-major, as COCO stores it)."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def decode_rle(rle: dict) -> np.ndarray:
    return mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode("ascii")}).astype(bool)


def mask_box(mask: np.ndarray) -> list[int]:
    """HxW bool -> [x0, y0, x1, y1], the tight box in pixels (x1, y1 exclusive); zeros when empty."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if not len(rows):
        return [0, 0, 0, 0]
    return [int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1]


def instance_records(
    masks: np.ndarray,
    classes: np.ndarray,
    scores: np.ndarray,
    class_names: list[str] | None = None,
    encode: Callable[[np.ndarray], Any] = encode_rle,
) -> list[dict]:
    """One image's instances (masks KxHxW bool, classes K, scores K) ->
    [{"class_id", "class_name", "score", "box": [x0, y0, x1, y1], "mask": encode(mask)}], in order."""
    out = []
    for mask, c, score in zip(masks, classes, scores, strict=True):
        c = int(c)
        out.append(
            {
                "class_id": c,
                "class_name": class_names[c] if class_names and c < len(class_names) else None,
                "score": round(float(score), 6),
                "box": mask_box(mask),
                "mask": encode(mask),
            }
        )
    return out
