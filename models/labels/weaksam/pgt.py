"""Adaptive pseudo ground truth (WeakSAM, paper 004, Algorithm 2): detections -> PGT boxes.

Per tagged class y (lines 1-11): the class's boxes, scores min-max normalised to [0, 1], boxes with
normalised score > tau_s kept (when all of a class's scores are equal, e.g. it has one box, the
normalisation is 0 / 0: every box of the class is kept). Then (lines 12-18) a kept box b_j is
dropped when it is mostly contained in another kept box of its class: |b_j & b_k| / |b_j| >= tau_o
for some k != j (the paper writes "all overlaps < tau_o" to keep). Normalising per class lets one
threshold serve every class, so a class whose boxes all score low still gets its best box (the
paper's PGT incompleteness). The defaults are the paper's (App. H, following SoS-WSOD):
tau_s = 0.3, tau_o = 0.85.

`variant="authors"` follows hustvl/WeakSAM `retraining/SoS-WSOD/tools/adaptive_pgt.py` (`pgt`):
scores are divided by (max - min) without subtracting the minimum; the first (here: the
highest-scoring) box of each class is always kept; the others are kept when their score >= tau_s;
then the same containment test. Both variants only keep classes among the image's tags.

Pure numpy; boxes are Nx4 (x0, y0, x1, y1).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

PGT_VARIANTS = ("paper", "authors")
TAU_S, TAU_O = 0.3, 0.85  # Algorithm 2's thresholds, the paper's App. H


def containment(boxes: np.ndarray) -> np.ndarray:
    """NxN: [j, k] = |b_j & b_k| / |b_j| (the share of box j inside box k)."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    x0 = np.maximum(b[:, None, 0], b[None, :, 0])
    y0 = np.maximum(b[:, None, 1], b[None, :, 1])
    x1 = np.minimum(b[:, None, 2], b[None, :, 2])
    y1 = np.minimum(b[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    return inter / (area[:, None] + 1e-6)


def adaptive_pgt(
    boxes: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    tags: Sequence[int],
    tau_s: float = TAU_S,
    tau_o: float = TAU_O,
    variant: str = "paper",
) -> np.ndarray:
    """Indices (ascending) of the detections kept as pseudo ground truth.

    boxes Nx4, scores N, labels N (class ids) of one image's detections; tags: its classes
    (detections of other classes are never kept)."""
    if variant not in PGT_VARIANTS:
        raise ValueError(f"pgt variant {variant!r} unknown; choose one of {PGT_VARIANTS}")
    boxes, scores, labels = np.asarray(boxes, float), np.asarray(scores, float), np.asarray(labels, int)
    kept: list[int] = []
    for y in sorted({int(t) for t in tags}):
        idx = np.flatnonzero(labels == y)
        if len(idx) == 0:
            continue
        s = scores[idx]
        spread = s.max() - s.min()
        if variant == "paper":
            norm = (s - s.min()) / spread if spread > 0 else np.ones_like(s)  # one box: it is the best
            idx = idx[norm > tau_s] if spread > 0 else idx
        else:
            norm = s / (spread + 1e-8)
            first = idx[np.argmax(s)]
            idx = np.asarray(sorted({int(first)} | {int(i) for i in idx[norm >= tau_s]}))
        inside = containment(boxes[idx])
        np.fill_diagonal(inside, 0.0)
        kept.extend(int(i) for i, row in zip(idx, inside) if (row < tau_o).all())
    return np.asarray(sorted(kept), dtype=int)
