"""WISH's tags -> points (paper 002, Sec. 4.3, Eq. 18): instance points from a class activation map.

For every tagged class c:
1. the CAM A_c is normalised to [0, 1] (ReLU, divided by its maximum; the paper leaves the scale
   open) and its peaks found with WeakSAM's Algorithm 1 (`models.labels.peaks`: max-pool kernel k, peaks
   below tau dropped, peaks within k/2 of a stronger one dropped);
2. every peak alone is a positive point prompt (the paper found several peaks together, or
   negative points, hurt); its mask is SAM's best-scored candidate;
3. peaks whose masks overlap with IoU above `merge_iou` belong to one instance (connected groups);
4. each instance keeps the peak whose mask has the highest stability score.

The result has the form of point labels (Eq. 4) plus SAM's three candidates per point, which is
what the WISH targets need. `merge_peaks` is the pure part (tests script it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from models.config import setting
from models.engine import ImageHandle, Prompt, PromptableSegmenter
from models.labels.common import PackedMasks, predict_chunks
from models.labels.peaks import peak_points
from models.students.cam import normalise_cam


@dataclass(frozen=True)
class TagPointOptions:
    """WISH's tags -> points; the paper names tau and the merge IoU without values (chosen here)."""

    peak_kernel: int = setting(3, help="Algorithm 1's max-pool kernel k, in CAM cells (odd)")
    peak_threshold: float = setting(
        0.5, help="tau: peaks below it on the CAM normalised to [0, 1] are dropped"
    )
    merge_iou: float = setting(0.5, help="peaks whose SAM masks overlap with IoU above this are one instance")

    def validate(self, source: str = "tag_points") -> None:
        if self.peak_kernel < 1 or self.peak_kernel % 2 == 0:
            raise ValueError(f"{source}: peak_kernel {self.peak_kernel} must be an odd number >= 1")
        if not 0 <= self.peak_threshold <= 1 or not 0 <= self.merge_iou <= 1:
            raise ValueError(f"{source}: peak_threshold and merge_iou must lie in [0, 1]")


@dataclass
class TagInstances:
    """Instances found from tags: K points (x, y) in original pixels, their classes, SAM's three
    candidates (Kx3xHxW bool) and the kept mask's stability."""

    points: np.ndarray
    class_ids: np.ndarray
    candidates: np.ndarray
    stability: np.ndarray

    def __len__(self) -> int:
        return len(self.class_ids)


def mask_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """NxHxW, MxHxW bool -> NxM IoU."""
    fa, fb = a.reshape(len(a), -1).astype(np.float32), b.reshape(len(b), -1).astype(np.float32)
    inter = fa @ fb.T
    union = fa.sum(1)[:, None] + fb.sum(1)[None] - inter
    return inter / np.maximum(union, 1)


def merge_peaks(
    masks: np.ndarray, stability: np.ndarray, class_ids: Sequence[int], merge_iou: float
) -> list[int]:
    """Indices of the peaks kept: peaks of one class whose masks (NxHxW bool) overlap with IoU >
    merge_iou are grouped (transitively); each group keeps its most stable peak. Sorted."""
    n = len(masks)
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    iou = mask_iou(masks, masks) if n else np.zeros((0, 0))
    classes = np.asarray(class_ids)
    for i in range(n):
        for j in range(i + 1, n):
            if classes[i] == classes[j] and iou[i, j] > merge_iou:
                parent[root(j)] = root(i)
    best: dict[int, int] = {}
    for i in range(n):
        r = root(i)
        if r not in best or stability[i] > stability[best[r]]:
            best[r] = i
    return sorted(best.values())


def tags_to_points(
    engine: PromptableSegmenter,
    handle: ImageHandle,
    cam: torch.Tensor,
    tags: Sequence[int],
    to_image: Callable[[np.ndarray], np.ndarray],
    options: TagPointOptions = TagPointOptions(),
) -> TagInstances:
    """Instances of the tagged classes from one image's CAM (CxHcxWc). `to_image` maps Nx2 CAM
    cell coordinates (x, y) to original image pixels and returns NaN for cells outside the image."""
    h, w = handle.original_size
    cam = normalise_cam(cam.detach().float().cpu())
    points, classes = [], []
    for c in sorted(set(int(t) for t in tags)):
        peaks = peak_points(cam[c], options.peak_kernel, options.peak_threshold)[0]
        if len(peaks):
            xy = to_image(peaks.points.numpy())
            inside = np.isfinite(xy).all(1)
            xy = np.clip(xy[inside], 0, [w - 1, h - 1])
            points.extend(xy)
            classes.extend([c] * len(xy))
    if not points:
        return TagInstances(np.zeros((0, 2)), np.zeros(0, int), np.zeros((0, 3, h, w), bool), np.zeros(0))
    prompts = [Prompt(points=np.asarray([p]), labels=np.ones(1, int)) for p in points]
    # decoded in chunks (`predict_chunks`): each peak's best mask is kept for the merge, its three
    # candidates bit-packed; only the kept peaks' candidates are unpacked
    best_masks = np.zeros((len(prompts), h, w), bool)
    stability, candidates = [], PackedMasks((3 * h, w))
    for start, pred in predict_chunks(engine, handle, prompts):
        rows = np.arange(len(pred))
        best = pred.iou.argmax(1)
        best_masks[start : start + len(pred)] = pred.masks[rows, best]
        stability.append(pred.stability[rows, best])
        for m in pred.masks:
            candidates.append(m.reshape(3 * h, w))
    stability = np.concatenate(stability)
    keep = merge_peaks(best_masks, stability, classes, options.merge_iou)
    return TagInstances(
        np.asarray(points)[keep],
        np.asarray(classes)[keep],
        np.stack([candidates[i].reshape(3, h, w) for i in keep]),
        stability[keep],
    )
