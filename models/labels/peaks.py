"""Peak points of activation maps: WeakSAM's Algorithm 1 (paper 004), shared by every tags pipeline.

WISH turns image tags into points from its CAM (paper 002) and WeakSAM prompts SAM with the peaks
of CAMs and cross-attention maps (paper 004); both use this one finder:

1. local maxima by max pooling with kernel k (stride 1): a pixel is a candidate where it equals the
   maximum of its k x k window (lines 3-4);
2. candidates sorted by value, highest first (line 5);
3. candidates below the activation threshold tau are dropped (lines 12-15);
4. walking down the sorted list, every weaker candidate within k/2 (Euclidean) of a kept one is
   dropped (lines 17-22).

Pure torch on tensors; no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Peaks:
    """The peaks of one map: points Nx2 (x, y) in map pixels and their values N, strongest first."""

    points: torch.Tensor
    values: torch.Tensor

    def __len__(self) -> int:
        return int(self.values.numel())


def peak_points(maps: torch.Tensor, kernel: int, threshold: float) -> list[Peaks]:
    """Algorithm 1 on each of the ...xHxW maps (any leading shape, flattened as line 1 does).

    kernel: the max-pool window k (odd, >= 1); threshold: tau. Returns one `Peaks` per map, in the
    flattened order of the leading dimensions.
    """
    if kernel < 1 or kernel % 2 == 0:
        raise ValueError(f"kernel must be an odd integer >= 1, got {kernel}")
    if maps.dim() < 2:
        raise ValueError(f"maps must be ...xHxW, got shape {tuple(maps.shape)}")
    h, w = maps.shape[-2:]
    flat = maps.reshape(-1, 1, h, w).float()
    pooled = F.max_pool2d(flat, kernel, stride=1, padding=kernel // 2)
    out = []
    for m, p in zip(flat[:, 0], pooled[:, 0]):
        ys, xs = torch.nonzero((m == p) & (m >= threshold), as_tuple=True)
        values = m[ys, xs]
        order = torch.argsort(values, descending=True, stable=True)
        points = torch.stack([xs, ys], 1)[order].float()
        values = values[order]
        keep = torch.ones(len(values), dtype=torch.bool)
        for i in range(len(values)):
            if not keep[i]:
                continue
            near = (points[i + 1 :] - points[i]).norm(dim=1) <= kernel / 2
            keep[i + 1 :] &= ~near
        out.append(Peaks(points[keep], values[keep]))
    return out
