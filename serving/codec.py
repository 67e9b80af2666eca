"""Mask encodings for HTTP responses: COCO RLE (pycocotools) and PNG, plus their decoders."""

from __future__ import annotations

import base64
import io

import numpy as np
import pycocotools.mask as mask_utils
from PIL import Image

MASK_FORMATS = ("rle", "png")


def encode_rle(mask: np.ndarray) -> dict:
    """HxW bool -> COCO RLE {"size": [H, W], "counts": str} (column-major, as COCO stores it)."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def decode_rle(rle: dict) -> np.ndarray:
    return mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode("ascii")}).astype(bool)


def encode_png(mask: np.ndarray) -> str:
    """HxW bool -> base64 of a 1-bit PNG."""
    buf = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * 255).convert("1").save(buf, format="PNG", optimize=True)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def decode_png(data: str) -> np.ndarray:
    with Image.open(io.BytesIO(base64.b64decode(data))) as img:
        return np.asarray(img.convert("L")) > 127


def encode_mask(mask: np.ndarray, fmt: str) -> dict | str:
    if fmt == "rle":
        return encode_rle(mask)
    if fmt == "png":
        return encode_png(mask)
    raise ValueError(f"mask_format {fmt!r} unknown; choose one of {MASK_FORMATS}")
