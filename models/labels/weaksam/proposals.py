"""WeakSAM-proposals (paper 004, Sec. 3.1): SAM prompted automatically, its masks as boxes.

Prompts of two kinds (Fig. 2):
- spatial-aware: the centres of a dense `points_per_side` x `points_per_side` grid (the paper's
  S x S patches; it does not state S);
- semantic-aware: the peaks of each tagged class's CAM, found with Algorithm 1 (`models.labels.peaks`:
  max-pool kernel k, peaks below tau dropped, peaks within k/2 of a stronger one dropped). The
  CAM (at the image size, normalised to [0, 1]) is first average-pooled by `peak_stride`, so one
  cell covers `peak_stride` x `peak_stride` image pixels (16: the token grid of WeakTr's
  DeiT-S/16, the paper's CAM network).
  WeakSAM also takes peaks of a transformer's cross-attention maps; our CAM classifier is a CNN
  and has none, so that third kind is not built.

Algorithm 1's settings are the paper's (App. H, following WeakTr): k = 128 and tau = 0.9, with k
in image pixels. `kernel_cells` turns k into the odd number of CAM cells nearest to
k / `peak_stride` (ties go up, at least 1): 128 px at stride 16 is 8 cells -> 9 (144 px), so the
max-pool window is 9 x 9 cells and the k/2 suppression radius 4.5 cells (72 px, the paper's 64).

Each prompt is one positive point; SAM's candidates (all three, or the best-scored one) become
boxes (the mask's bounding box, x1 / y1 exclusive); masks under `min_area` pixels are dropped and
duplicate boxes removed by box NMS at `nms_iou`, over every prompt kind. The paper instead
clusters its redundant cross-attention prompts before SAM (not built here); the NMS is this
project's step, not the paper's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import masks_to_boxes, nms

from models.config import setting
from models.engine import ImageHandle, Prompt, PromptableSegmenter
from models.labels.peaks import peak_points

CANDIDATE_RULES = ("all", "best")


PAPER = "paper 004, App. H"


@dataclass
class ProposalOptions:
    """WeakSAM's prompt and proposal settings. Algorithm 1's k and tau are the paper's (App. H,
    following WeakTr); every other value here is not stated by the paper and was not tuned."""

    points_per_side: int = setting(
        16,
        help="spatial-aware prompts: an N x N grid of points (0: none); not stated by the paper, not tuned",
    )
    peak_kernel_px: int = setting(
        128,
        help=f"Algorithm 1's max-pool kernel k in image pixels ({PAPER}: 128, WeakTr's); run as the odd "
        "number of CAM cells nearest to k / peak_stride",
    )
    peak_threshold: float = setting(
        0.9, help=f"Algorithm 1's tau on the CAM normalised to [0, 1] ({PAPER}: 0.9, WeakTr's)"
    )
    peak_stride: int = setting(
        16,
        help="CAM cells: the CAM average-pooled by this factor before Algorithm 1; not stated by the paper "
        "(16 = the CAM classifier's output stride)",
    )
    candidates: str = setting(
        "all", help="SAM's candidates per prompt that become proposals: all or best; not stated by the paper"
    )
    nms_iou: float = setting(
        0.9, help="duplicate proposals: box NMS IoU; not stated by the paper (it clusters prompts), not tuned"
    )
    min_area: int = setting(
        16, help="masks smaller than this (pixels) give no proposal; not stated by the paper, not tuned"
    )
    chunk: int = setting(
        64, help="at most this many prompts per SAM call (fewer where their masks would pass the byte budget)"
    )

    MOVED_SETTINGS: ClassVar[dict[str, str]] = {
        "peak_kernel": "is peak_kernel_px now: Algorithm 1's k in image pixels (the paper's 128), "
        "turned into CAM cells by peak_stride",
    }

    def validate(self, source: str = "weaksam proposals") -> None:
        if self.points_per_side < 0 or self.peak_stride < 1 or self.chunk < 1:
            raise ValueError(f"{source}: points_per_side >= 0, peak_stride >= 1 and chunk >= 1 are required")
        if self.peak_kernel_px < 1:
            raise ValueError(f"{source}: peak_kernel_px {self.peak_kernel_px} must be >= 1 (image pixels)")
        if not 0 <= self.peak_threshold <= 1:
            raise ValueError(f"{source}: peak_threshold {self.peak_threshold} must lie in [0, 1]")
        if not 0 <= self.nms_iou <= 1 or self.min_area < 0:
            raise ValueError(f"{source}: nms_iou {self.nms_iou} must lie in [0, 1] and min_area be >= 0")
        if self.candidates not in CANDIDATE_RULES:
            raise ValueError(
                f"{source}: candidates {self.candidates!r} unknown; choose one of {CANDIDATE_RULES}"
            )

    @property
    def peak_kernel_cells(self) -> int:
        """Algorithm 1's kernel in CAM cells (`kernel_cells(peak_kernel_px, peak_stride)`)."""
        return kernel_cells(self.peak_kernel_px, self.peak_stride)


def kernel_cells(kernel_px: int, stride: int) -> int:
    """Algorithm 1's kernel k, given in image pixels, in cells of a map whose cell is `stride` x
    `stride` pixels: the odd integer nearest to k / stride, ties going up, at least 1
    (128 px: stride 16 -> 9, stride 8 -> 17, stride 32 -> 5, stride 1 -> 129)."""
    if kernel_px < 1 or stride < 1:
        raise ValueError(f"kernel_cells: kernel_px {kernel_px} and stride {stride} must be >= 1")
    return 2 * (int(kernel_px) // (2 * int(stride))) + 1


@dataclass
class Proposals:
    """N proposals of one image: boxes Nx4 (x0, y0, x1, y1) in pixels, scores N (SAM's predicted IoU
    of the mask; a retrained detector's score where `models.labels.weaksam.labeler` takes its boxes), and
    what produced each ('grid', 'peak:<class>' or 'detector')."""

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
    """Algorithm 1 on each tagged class's CAM (CxHxW at the image size, in [0, 1]) average-pooled
    by `stride`, with `kernel` in CAM cells (`kernel_cells` turns pixels into cells): peak points
    Nx2 (x, y) in image pixels (the peak cell's centre, clipped to the image) and their classes,
    classes in ascending order. Tags outside the CAM's classes are skipped."""
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
    """The proposals of one image: grid and CAM-peak prompts (peaks only with both `cams` and
    `tags`) -> SAM, three candidates per prompt (in chunks of at most `chunk` prompts,
    `predict_chunks`: memory O(chunk), the deadline checked before each chunk) -> the kept
    candidates' boxes -> NMS. Boxes come out in NMS order (score descending)."""
    from models.labels.common import predict_chunks  # models.labels imports this module

    options = options or ProposalOptions()
    h, w = handle.original_size
    points = [grid_points((h, w), options.points_per_side)] if options.points_per_side else []
    sources = ["grid"] * (options.points_per_side**2)
    if cams is not None and tags:
        peaks, owners = cam_peak_points(
            cams, tags, options.peak_kernel_cells, options.peak_threshold, options.peak_stride
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
