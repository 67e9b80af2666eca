"""Drawing: masks over images, for overlays and reports."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from models.io import UNLABELED

PALETTE = np.array(
    [
        [230, 25, 75],
        [60, 180, 75],
        [0, 130, 200],
        [245, 130, 48],
        [145, 30, 180],
        [70, 240, 240],
        [240, 50, 230],
        [210, 245, 60],
        [250, 190, 212],
        [0, 128, 128],
        [220, 190, 255],
        [170, 110, 40],
    ],
    dtype=np.uint8,
)


def overlay_masks(
    image: np.ndarray,
    masks: np.ndarray,
    alpha: float = 0.45,
    points: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    box: list[float] | None = None,
) -> np.ndarray:
    """HxWx3 uint8 image with each of the KxHxW masks tinted in its own colour, prompts drawn on top."""
    out = image.astype(np.float32).copy()
    for k, mask in enumerate(masks):
        color = PALETTE[k % len(PALETTE)].astype(np.float32)
        out[mask] = (1 - alpha) * out[mask] + alpha * color
    canvas = Image.fromarray(out.round().astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    if box is not None:
        draw.rectangle([float(v) for v in box], outline=(255, 255, 0), width=2)
    if points is not None:
        for (x, y), lab in zip(points, labels if labels is not None else np.ones(len(points))):
            fill = (0, 255, 0) if lab == 1 else (255, 0, 0)
            draw.ellipse([x - 4, y - 4, x + 4, y + 4], fill=fill, outline=(0, 0, 0))
    return np.asarray(canvas)


def class_palette(n: int = 256) -> np.ndarray:
    """nx3 uint8 colours: the fixed palette first, then a deterministic spread of hues."""
    rng = np.random.default_rng(12345)
    extra = rng.integers(40, 255, size=(max(0, n - len(PALETTE)), 3), dtype=np.uint8)
    return np.concatenate([PALETTE, extra])[:n]


def label_overlay(
    image: np.ndarray, labels: np.ndarray, alpha: float = 0.55, unlabeled: int = UNLABELED
) -> np.ndarray:
    """HxWx3 image with every labelled pixel tinted by its class colour; unlabeled pixels untouched."""
    out = image.astype(np.float32).copy()
    labelled = labels != unlabeled
    colours = class_palette()[labels[labelled]].astype(np.float32)
    out[labelled] = (1 - alpha) * out[labelled] + alpha * colours
    return out.round().astype(np.uint8)


def side_by_side(pictures: list[np.ndarray], gap: int = 6) -> np.ndarray:
    """Pictures of equal height next to each other with a white gap."""
    h = max(p.shape[0] for p in pictures)
    parts = []
    for i, p in enumerate(pictures):
        if i:
            parts.append(np.full((h, gap, 3), 255, np.uint8))
        parts.append(np.pad(p, ((0, h - p.shape[0]), (0, 0), (0, 0)), constant_values=255))
    return np.concatenate(parts, axis=1)
