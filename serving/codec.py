"""Mask encodings for HTTP responses: COCO RLE (pycocotools), PNG and polygons, plus decoders.

Label maps (HxW uint8 class ids, 255 = unlabeled) travel as a base64 8-bit PNG (lossless) or as
one COCO RLE per present class.
"""

from __future__ import annotations

import base64
import io

import numpy as np
import pycocotools.mask as mask_utils
from PIL import Image

from models.io import decode_rle, encode_rle, instance_records

MASK_FORMATS = ("rle", "png", "polygons")
LABEL_FORMATS = ("png", "rle")
INSTANCE_MASK_FORMATS = ("rle", "polygons")


def encode_png(mask: np.ndarray) -> str:
    """HxW bool -> base64 of a 1-bit PNG."""
    buf = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * 255).convert("1").save(buf, format="PNG", optimize=True)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def decode_png(data: str) -> np.ndarray:
    with Image.open(io.BytesIO(base64.b64decode(data))) as img:
        return np.asarray(img.convert("L")) > 127


# rings enclosing less than this many square pixels are dropped: a lone pixel's ring encloses 0.5,
# and a ring that simplification flattened onto a line encloses 0 (COCO readers reject those)
MIN_RING_AREA = 0.5


def ring_area(ring: np.ndarray) -> float:
    """Area enclosed by a closed Nx2 ring (shoelace formula; the last point may repeat the first)."""
    y, x = ring[:, 0], ring[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def encode_polygons(
    mask: np.ndarray, tolerance: float = 0.5, min_area: float = MIN_RING_AREA
) -> list[list[float]]:
    """HxW bool -> COCO-style polygons [[x0, y0, x1, y1, ...], ...] of the outer and hole boundaries.

    Contours run on the mask padded by one pixel (so shapes touching the border close) at level 0.5,
    simplified with Douglas-Peucker at `tolerance` pixels; coordinates are pixel centres (x, y).
    A ring that simplification flattens is kept unsimplified; rings enclosing less than `min_area`
    square pixels are dropped, so a mask may answer an empty list (never a broken polygon).
    """
    from skimage.measure import approximate_polygon, find_contours

    padded = np.pad(mask.astype(np.uint8), 1)
    polygons = []
    for contour in find_contours(padded, 0.5):
        contour = contour - 1
        ring = approximate_polygon(contour, tolerance)
        if len(ring) < 4 or ring_area(ring) < min_area:  # closed: 3 corners + the repeated first
            ring = contour
        if len(np.unique(ring, axis=0)) < 3 or ring_area(ring) < min_area:
            continue
        polygons.append([round(float(v), 2) for yx in ring for v in (yx[1], yx[0])])
    return polygons


def decode_polygons(polygons: list[list[float]], height: int, width: int) -> np.ndarray:
    """Rasterise COCO polygons (even-odd across rings, as pycocotools merges them) -> HxW bool."""
    if not polygons:
        return np.zeros((height, width), bool)
    rles = mask_utils.frPyObjects([p for p in polygons if len(p) >= 6], height, width)
    masks = mask_utils.decode(rles)
    return (masks.sum(axis=2) % 2).astype(bool)


def encode_mask(mask: np.ndarray, fmt: str) -> dict | str | list:
    if fmt == "rle":
        return encode_rle(mask)
    if fmt == "png":
        return encode_png(mask)
    if fmt == "polygons":
        return encode_polygons(mask)
    raise ValueError(f"mask_format {fmt!r} unknown; choose one of {MASK_FORMATS}")


def encode_label_png(labels: np.ndarray) -> str:
    """HxW uint8 class map -> base64 of an 8-bit grayscale PNG (lossless)."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(labels, dtype=np.uint8), mode="L").save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def decode_label_png(data: str) -> np.ndarray:
    with Image.open(io.BytesIO(base64.b64decode(data))) as img:
        if img.mode not in ("L", "P"):
            raise ValueError(f"label map PNG has mode {img.mode}, expected 8-bit L")
        return np.array(img)


def encode_labels(labels: np.ndarray, fmt: str, class_names: list[str] | None = None) -> dict:
    """A label map as {"format": "png", "png": ...} or {"format": "rle", "classes": [...]}."""
    if fmt == "png":
        return {"format": "png", "png": encode_label_png(labels)}
    if fmt == "rle":
        classes = []
        for c in np.unique(labels):
            c = int(c)
            if c == 255:
                continue
            name = class_names[c] if class_names and c < len(class_names) else None
            classes.append({"class_id": c, "name": name, "rle": encode_rle(labels == c)})
        return {
            "format": "rle",
            "height": int(labels.shape[0]),
            "width": int(labels.shape[1]),
            "classes": classes,
        }
    raise ValueError(f"label_format {fmt!r} unknown; choose one of {LABEL_FORMATS}")


def decode_labels(payload: dict) -> np.ndarray:
    """Inverse of `encode_labels` (255 where no class is set)."""
    if payload.get("format") == "png":
        return decode_label_png(payload["png"])
    out = np.full((payload["height"], payload["width"]), 255, np.uint8)
    for item in payload["classes"]:
        out[decode_rle(item["rle"])] = item["class_id"]
    return out


def encode_instances(
    masks: np.ndarray,
    classes: np.ndarray,
    scores: np.ndarray,
    class_names: list[str] | None = None,
    fmt: str = "rle",
) -> list[dict]:
    """An instance student's answer for one image -> `models.io.instance_records` with each mask
    in `fmt` (rle or polygons)."""
    if fmt not in INSTANCE_MASK_FORMATS:
        raise ValueError(f"mask_format {fmt!r} unknown; choose one of {INSTANCE_MASK_FORMATS}")
    return instance_records(masks, classes, scores, class_names, lambda m: encode_mask(m, fmt))


def decode_instances(items: list[dict], height: int, width: int, fmt: str = "rle") -> np.ndarray:
    """The masks of `encode_instances` -> KxHxW bool."""
    decode = decode_rle if fmt == "rle" else (lambda p: decode_polygons(p, height, width))
    return np.stack([decode(i["mask"]) for i in items]) if items else np.zeros((0, height, width), bool)
