"""Merging per-instance masks into one class map.

The rule (documented in docs/engine.md):
1. Every instance mask paints its class.
2. Where instances of DIFFERENT classes overlap: `overlap="score"` gives the pixel to the instance
   with the higher score; `overlap="unlabeled"` leaves it unlabeled (255). Instances of the same
   class never conflict.
3. Weak labels always win: every pixel the weak labels name directly keeps its weak class.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.io import UNLABELED

OVERLAP_RULES = ("score", "unlabeled")


@dataclass(frozen=True)
class Instance:
    class_id: int
    mask: np.ndarray  # HxW bool
    score: float


def apply_weak_labels(labels: np.ndarray, weak_map: np.ndarray | None) -> np.ndarray:
    """Rule 3 in place: every pixel the weak labels name keeps its weak class. Returns `labels`."""
    if weak_map is not None:
        named = weak_map != UNLABELED
        labels[named] = weak_map[named]
    return labels


def merge_instances(
    size: tuple[int, int],
    instances: list[Instance],
    weak_map: np.ndarray | None = None,
    overlap: str = "score",
) -> np.ndarray:
    """HxW uint8 class map from instance masks (see the module rule); 255 where nothing is known."""
    if overlap not in OVERLAP_RULES:
        raise ValueError(f"overlap rule {overlap!r} unknown; choose one of {OVERLAP_RULES}")
    out = np.full(size, UNLABELED, dtype=np.uint8)
    conflict = np.zeros(size, dtype=bool)
    for inst in sorted(instances, key=lambda i: i.score):  # ascending: a higher score paints last and wins
        conflict |= inst.mask & (out != UNLABELED) & (out != inst.class_id)
        out[inst.mask] = inst.class_id
    if overlap == "unlabeled":
        out[conflict] = UNLABELED
    return apply_weak_labels(out, weak_map)
