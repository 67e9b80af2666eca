"""WeakSAM-proposals (paper 004, Sec. 3.1): SAM prompted automatically, its masks as boxes.

Prompts of two kinds (Fig. 2):
- spatial-aware: the centres of a dense `points_per_side` x `points_per_side` grid;
- semantic-aware: the peaks of each tagged class's CAM, found with Algorithm 1 (`models.peaks`:
  max-pool kernel k, peaks below tau dropped, peaks within k/2 of a stronger one dropped) on the
  CAM average-pooled to 1/`peak_stride` of the image (the CAM networks' own resolution).
  WeakSAM also takes peaks of a transformer's cross-attention maps; our CAM classifier is a CNN
  and has none, so that third kind is not built.

Each prompt is one positive point; SAM's candidates (all three, or the best-scored one) become
boxes; tiny masks are dropped and duplicates removed by box NMS at `nms_iou` (the paper clusters
redundant prompts; NMS on the resulting boxes is the equivalent on the output side).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import masks_to_boxes, nms

from models.config import setting
from models.engine import ImageHandle, Prompt, PromptableSegmenter
from models.peaks import peak_points

CANDIDATE_RULES = ("all", "best")


@dataclass
class ProposalOptions:
    """WeakSAM's prompt and proposal settings (the paper follows WeakTr's defaults, unstated)."""

    points_per_side: int = setting(16, help="spatial-aware prompts: an N x N grid of points (0: none)")
    peak_kernel: int = setting(3, help="Algorithm 1's max-pool kernel k, in CAM cells (odd)")
    peak_threshold: float = setting(0.5, help="Algorithm 1's tau on the CAM normalised to [0, 1]")
    peak_stride: int = setting(16, help="CAM cells: the CAM average-pooled by this factor before Algorithm 1")
    candidates: str = setting("all", help="SAM's candidates per prompt that become proposals: all or best")
    nms_iou: float = setting(0.9, help="duplicate proposals: box NMS IoU")
    min_area: int = setting(16, help="masks smaller than this (pixels) give no proposal")
    chunk: int = setting(
        64, help="at most this many prompts per SAM call (fewer where their masks would pass the byte budget)"
    )

    def validate(self, source: str = "weaksam proposals") -> None:
        if self.points_per_side < 0 or self.peak_stride < 1 or self.chunk < 1:
            raise ValueError(f"{source}: points_per_side >= 0, peak_stride >= 1 and chunk >= 1 are required")
        if self.peak_kernel < 1 or self.peak_kernel % 2 == 0:
            raise ValueError(f"{source}: peak_kernel {self.peak_kernel} must be an odd number >= 1")
        if self.candidates not in CANDIDATE_RULES:
            raise ValueError(
                f"{source}: candidates {self.candidates!r} unknown; choose one of {CANDIDATE_RULES}"
            )


@dataclass
class Proposals:
    """N proposals of one image: boxes Nx4 (x0, y0, x1, y1) in pixels, SAM's score N, and the prompt
    kind that produced each ('grid' or 'peak:<class>')."""

    boxes: np.ndarray
    scores: np.ndarray
    sources: list[str]

    def __len__(self) -> int:
        return len(self.boxes)


def grid_points(size: tuple[int, int], n: int) -> np.ndarray:
    """(n*n)x2 (x, y) cell centres of an n x n grid over an image of `size` (H, W)."""
    h, w = size
    xs, ys = (np.arange(n) + 0.5) * w / n, (np.arange(n) + 0.5) * h / n
    return np.stack(np.meshgrid(xs, ys), -1).reshape(-1, 2)


def cam_peak_points(
    cams: torch.Tensor, tags: Sequence[int], kernel: int, threshold: float, stride: int
) -> tuple[np.ndarray, list[int]]:
    """Algorithm 1 on each tagged class's CAM (CxHxW at the image size, in [0, 1]) pooled by
    `stride`: peak points Nx2 (x, y) in image pixels (cell centres) and their classes."""
    h, w = cams.shape[-2:]
    classes = sorted({int(t) for t in tags if 0 <= int(t) < cams.shape[0]})
    if not classes:
        return np.zeros((0, 2)), []
    pooled = (
        F.avg_pool2d(cams[classes][None].float(), stride, ceil_mode=True)[0] if stride > 1 else cams[classes]
    )
    points, owners = [], []
    for c, peaks in zip(classes, peak_points(pooled, kernel, threshold)):
        xy = (peaks.points.numpy() + 0.5) * stride
        points.extend(np.clip(xy, 0, [w - 1, h - 1]))
        owners += [c] * len(xy)
    return np.asarray(points).reshape(-1, 2), owners


def weaksam_proposals(
    engine: PromptableSegmenter,
    handle: ImageHandle,
    cams: torch.Tensor | None = None,
    tags: Sequence[int] = (),
    options: ProposalOptions | None = None,
) -> Proposals:
    """The proposals of one image: grid and CAM-peak prompts -> SAM (in chunks, `predict_chunks`:
    memory O(chunk), the deadline checked between chunks) -> boxes -> NMS."""
    from models.refine.common import predict_chunks  # models.refine imports this module

    options = options or ProposalOptions()
    h, w = handle.original_size
    points = [grid_points((h, w), options.points_per_side)] if options.points_per_side else []
    sources = ["grid"] * (options.points_per_side**2)
    if cams is not None and tags:
        peaks, owners = cam_peak_points(
            cams, tags, options.peak_kernel, options.peak_threshold, options.peak_stride
        )
        points.append(peaks)
        sources += [f"peak:{c}" for c in owners]
    if not points or not sum(len(p) for p in points):
        return Proposals(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), [])
    xy = np.concatenate(points)
    prompts = [Prompt(points=[p], labels=[1]) for p in xy]
    boxes, scores, kinds = [], [], []
    for start, pred in predict_chunks(engine, handle, prompts, max_prompts=options.chunk):
        masks, iou = pred.masks, pred.iou  # Px3xHxW, Px3
        if options.candidates == "best":
            rows = np.arange(len(pred))
            best = iou.argmax(1)
            masks, iou = masks[rows, best][:, None], iou[rows, best][:, None]
        flat = torch.from_numpy(masks.reshape(-1, h, w))
        area = flat.flatten(1).sum(1)
        keep = torch.nonzero(area >= options.min_area).flatten()
        if len(keep):
            boxes.append(masks_to_boxes(flat[keep]) + torch.tensor([0.0, 0.0, 1.0, 1.0]))
            scores.append(torch.from_numpy(iou.reshape(-1)[keep.numpy()]).float())
            per_prompt = masks.shape[1]
            kinds += [sources[start + int(i) // per_prompt] for i in keep]
    if not boxes:
        return Proposals(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), [])
    all_boxes, all_scores = torch.cat(boxes), torch.cat(scores)
    survivors = nms(all_boxes, all_scores, options.nms_iou)
    return Proposals(
        all_boxes[survivors].numpy(), all_scores[survivors].numpy(), [kinds[int(i)] for i in survivors]
    )
