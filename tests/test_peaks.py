"""WeakSAM's peak finder (Algorithm 1) on maps whose peaks are known."""

from __future__ import annotations

import pytest
import torch

from models.labels.peaks import peak_points


def bump(h: int, w: int, x: float, y: float, height: float, width: float = 3.0) -> torch.Tensor:
    yy, xx = torch.meshgrid(
        torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij"
    )
    return height * torch.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * width**2))


def test_two_separate_bumps_give_two_peaks_strongest_first() -> None:
    m = bump(40, 60, 10, 12, 0.6) + bump(40, 60, 45, 30, 0.9)
    (peaks,) = peak_points(m, kernel=5, threshold=0.3)
    assert len(peaks) == 2
    assert peaks.points.tolist() == [[45.0, 30.0], [10.0, 12.0]]
    assert peaks.values[0] == pytest.approx(0.9, abs=1e-3) and peaks.values[1] == pytest.approx(0.6, abs=0.02)


def test_threshold_drops_weak_peaks() -> None:
    m = bump(40, 60, 10, 12, 0.2) + bump(40, 60, 45, 30, 0.9)
    (peaks,) = peak_points(m, kernel=5, threshold=0.3)
    assert peaks.points.tolist() == [[45.0, 30.0]]


def test_weaker_peaks_within_half_a_kernel_of_a_stronger_one_are_dropped() -> None:
    m = torch.zeros(20, 20)
    m[10, 10], m[10, 13], m[10, 19] = 1.0, 0.8, 0.7  # 3 and 9 pixels from the strongest
    (wide,) = peak_points(m, kernel=7, threshold=0.1)  # k/2 = 3.5: (13, 10) goes, (19, 10) stays
    assert wide.points.tolist() == [[10.0, 10.0], [19.0, 10.0]]
    (narrow,) = peak_points(m, kernel=1, threshold=0.1)  # k = 1: every local maximum stays
    assert len(narrow) == 3


def test_plateaus_collapse_to_one_peak_and_leading_dims_flatten() -> None:
    m = torch.zeros(2, 3, 16, 16)
    m[0, 1, 4:6, 4:6] = 1.0  # a 2x2 plateau: four equal maxima within k/2 of each other
    found = peak_points(m, kernel=5, threshold=0.5)
    assert len(found) == 6 and [len(p) for p in found] == [0, 1, 0, 0, 0, 0]


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="kernel"):
        peak_points(torch.zeros(4, 4), kernel=4, threshold=0.5)
    with pytest.raises(ValueError, match="maps"):
        peak_points(torch.zeros(4), kernel=3, threshold=0.5)
