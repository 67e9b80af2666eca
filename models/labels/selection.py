"""Choosing one of SAM's candidate masks for a weak mask (SeSAM step 4 and the ablation selectors).

Every selector: (candidates CxHxW bool, weak HxW bool, scores C, rng) -> candidate index. Pure.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def coverage_compatibility(candidates: np.ndarray, weak: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Coverage r_i = |S_i & W| / |W| and compatibility p_i = |S_i & W| / |S_i| for every candidate."""
    weak_area = int(np.count_nonzero(weak))
    rows, cols = np.flatnonzero(weak.any(1)), np.flatnonzero(weak.any(0))
    if weak_area == 0:
        zeros = np.zeros(len(candidates))
        return zeros, zeros
    window = (slice(None), slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    inter = np.count_nonzero(candidates[window] & weak[window[1:]], axis=(1, 2)).astype(np.float64)
    areas = np.count_nonzero(candidates.reshape(len(candidates), -1), axis=1).astype(np.float64)
    coverage = inter / weak_area
    compatibility = np.divide(inter, areas, out=np.zeros_like(inter), where=areas > 0)
    return coverage, compatibility


def select_coverage(
    candidates: np.ndarray,
    weak: np.ndarray,
    scores: np.ndarray | None = None,
    rng: np.random.Generator | None = None,
    tau1: float = 0.3,
    tau2: float = 0.7,
) -> int:
    """SeSAM: keep r >= tau1 and p >= tau2, take the kept mask with the highest p; if none is kept,
    the mask with the highest p overall."""
    return choose_by_coverage(*coverage_compatibility(candidates, weak), tau1, tau2)


def choose_by_coverage(
    coverage: np.ndarray, compatibility: np.ndarray, tau1: float = 0.3, tau2: float = 0.7
) -> int:
    """The SeSAM rule on precomputed scores (see `select_coverage`)."""
    kept = np.flatnonzero((coverage >= tau1) & (compatibility >= tau2))
    if len(kept):
        return int(kept[np.argmax(compatibility[kept])])
    return int(np.argmax(compatibility))


def select_best_score(
    candidates: np.ndarray,
    weak: np.ndarray,
    scores: np.ndarray | None = None,
    rng: np.random.Generator | None = None,
) -> int:
    """The candidate SAM itself rates best (highest predicted IoU)."""
    if scores is None:
        raise ValueError("selection 'best-score' needs the candidates' scores")
    return int(np.argmax(scores))


def select_random(
    candidates: np.ndarray,
    weak: np.ndarray,
    scores: np.ndarray | None = None,
    rng: np.random.Generator | None = None,
) -> int:
    rng = rng or np.random.default_rng()
    return int(rng.integers(len(candidates)))


def select_smallest(
    candidates: np.ndarray,
    weak: np.ndarray | None = None,
    scores: np.ndarray | None = None,
    rng: np.random.Generator | None = None,
) -> int:
    """The smallest non-empty candidate (precision first: SeSAM's initial mask from points/scribbles)."""
    areas = np.count_nonzero(candidates.reshape(len(candidates), -1), axis=1)
    nonempty = np.flatnonzero(areas > 0)
    if len(nonempty) == 0:
        return 0
    return int(nonempty[np.argmin(areas[nonempty])])


# selection rule -> selector (candidates, weak, scores, rng) -> index, read through `lookup`
SELECTORS: dict[str, Callable[..., int]] = {
    "coverage": select_coverage,
    "best-score": select_best_score,
    "random": select_random,
}
