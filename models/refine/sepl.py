"""SEPL (paper 001): enhance a class pseudo-label map with SAM's automatic masks.

1. Automatic masks: a grid of `points_per_side`^2 single-point prompts; keep candidates with
   predicted IoU >= pred_iou_thresh and stability >= stability_thresh; box NMS at nms_thresh.
2. Assignment (pure, `assign_and_select`): each mask S goes to the class k with the largest
   |S & P_k|; masks overlapping no class are dropped.
3. Selection per class: keep S when o_s = |S & P_k| / |S| > t1 OR o_p = |S & P_k| / |P_k| > t2;
   the class's new label is the union of its kept masks, or P_k itself when none is kept. With
   `keep_uncovered` (the authors' code) P_k pixels that no kept mask covers stay labelled too.
Classes then merge by the shared rule (overlaps by score = o_s, or unlabeled).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torchvision.ops import batched_nms

from models.config import setting
from models.engine import ImageHandle, Prompt, PromptableSegmenter
from models.io import UNLABELED
from models.refine.common import RefineResult, ensure_handle, predict_counted
from models.refine.merge import OVERLAP_RULES, Instance, merge_instances
from models.weak import WeakLabels


@dataclass
class SEPLOptions:
    """SEPL's settings: SAM's automatic-mask defaults, the paper's t1 / t2."""

    points_per_side: int = setting(16, help="automatic masks: a grid of N x N point prompts")
    pred_iou_thresh: float = setting(
        0.86, help="automatic masks: minimal predicted IoU (0 on the classical prior)"
    )
    stability_thresh: float = setting(
        0.92, help="automatic masks: minimal stability (0 on the classical prior)"
    )
    nms_thresh: float = setting(0.7, help="automatic masks: box NMS IoU")
    t1: float = setting(0.5, help="keep a mask when |S & P_k| / |S| > t1 ...")
    t2: float = setting(0.85, help="... or when |S & P_k| / |P_k| > t2")
    keep_uncovered: bool = setting(True, help="P_k pixels no kept mask covers stay labelled (authors' code)")
    overlap: str = setting("score", help="class overlaps: score or unlabeled")

    def validate(self, source: str = "sepl options") -> None:
        if self.overlap not in OVERLAP_RULES:
            raise ValueError(f"{source}: overlap {self.overlap!r} unknown; choose one of {OVERLAP_RULES}")
        if self.points_per_side < 1:
            raise ValueError(f"{source}: points_per_side must be >= 1, got {self.points_per_side}")


def mask_boxes(masks: np.ndarray) -> np.ndarray:
    """Nx4 (x0, y0, x1, y1) boxes of NxHxW masks (zeros for empty masks)."""
    boxes = np.zeros((len(masks), 4), dtype=np.float32)
    for i, m in enumerate(masks):
        rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
        if len(rows):
            boxes[i] = (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)
    return boxes


def assign_and_select(
    masks: list[np.ndarray],
    pseudo: np.ndarray,
    t1: float = 0.5,
    t2: float = 0.85,
    keep_uncovered: bool = True,
) -> dict[int, tuple[np.ndarray, float]]:
    """SEPL's rule on a class map `pseudo` (HxW, 255 unlabeled): class -> (new mask, score)."""
    classes = [int(c) for c in np.unique(pseudo) if c != UNLABELED]
    per_class = {c: pseudo == c for c in classes}
    kept: dict[int, list[tuple[np.ndarray, float]]] = {c: [] for c in classes}
    for s in masks:
        area = int(s.sum())
        if area == 0 or not classes:
            continue
        overlaps = np.array([(s & per_class[c]).sum() for c in classes])
        if overlaps.max() == 0:
            continue
        k = classes[int(np.argmax(overlaps))]
        inter = float(overlaps.max())
        o_s, o_p = inter / area, inter / per_class[k].sum()
        if o_s > t1 or o_p > t2:
            kept[k].append((s, o_s))
    out = {}
    for c in classes:
        if kept[c]:
            union = np.logical_or.reduce([m for m, _ in kept[c]])
            if keep_uncovered:
                union |= per_class[c]
            out[c] = (union, float(np.mean([score for _, score in kept[c]])))
        else:
            out[c] = (per_class[c], 1.0)
    return out


class SEPLLabeler:
    name = "sepl"
    reads = frozenset({"points", "scribbles", "coarse"})  # through the weak labels' pixel map

    def __init__(self, engine: PromptableSegmenter, options: SEPLOptions | None = None) -> None:
        self.engine = engine
        self.options = options or SEPLOptions()

    def automatic_masks(self, handle: ImageHandle, result: RefineResult) -> list[np.ndarray]:
        o = self.options
        h, w = handle.original_size
        n = o.points_per_side
        xs = (np.arange(n) + 0.5) * w / n
        ys = (np.arange(n) + 0.5) * h / n
        prompts = [Prompt(points=[[x, y]], labels=[1]) for y in ys for x in xs]
        out = predict_counted(self.engine, handle, prompts, result)
        masks = out.masks.reshape(-1, h, w)
        keep = (out.iou.ravel() >= o.pred_iou_thresh) & (out.stability.ravel() >= o.stability_thresh)
        keep &= masks.reshape(len(masks), -1).any(1)
        idx = np.flatnonzero(keep)
        if len(idx) == 0:
            return []
        boxes = torch.as_tensor(mask_boxes(masks[idx]))
        scores = torch.as_tensor(out.iou.ravel()[idx], dtype=torch.float32)
        survivors = batched_nms(boxes, scores, torch.zeros(len(idx), dtype=torch.int64), o.nms_thresh)
        return [masks[idx[i]] for i in survivors.tolist()]

    def refine(
        self, image: ImageHandle | np.ndarray, weak: WeakLabels, pseudo: np.ndarray | None = None, **_: object
    ) -> RefineResult:
        """`pseudo`: the class pseudo-label map to enhance; defaults to the weak labels' pixel map."""
        o = self.options
        handle = ensure_handle(self.engine, image)
        pseudo = weak.sparse_map() if pseudo is None else pseudo
        result = RefineResult(labels=np.empty(0))
        masks = self.automatic_masks(handle, result)
        selected = assign_and_select(masks, pseudo, o.t1, o.t2, o.keep_uncovered)
        instances = [Instance(c, m, score) for c, (m, score) in selected.items()]
        result.instances = [
            {"class_id": c, "area": int(m.sum()), "score": round(s, 4)} for c, (m, s) in selected.items()
        ]
        result.labels = merge_instances(weak.size, instances, None, o.overlap)
        return result
