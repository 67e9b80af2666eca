"""Masks as data: COCO RLE (pycocotools), tight boxes, and an instance segmenter's answer as records.
Shared by the service's codec (`serving.codec`) and folder jobs (`sesam segment`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pycocotools.mask as mask_utils


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
