"""SEPL (paper 001): enhance a class pseudo-label map with SAM's automatic masks.

Input: per-class pseudo-labels P_k (from CAMs when the image has tags, `models.students.cam`; else the weak
labels' own pixel map) and SAM's automatic masks S_l.

1. Automatic masks: a grid of `points_per_side`^2 single-point prompts; keep candidates with
   predicted IoU >= pred_iou_thresh and stability >= stability_thresh; box NMS at nms_thresh.
2. The rule (`rule`), all pure functions of (masks, P):
   - `paper` (default, the paper's Sec. 3): each S goes to the class k with the largest |S & P_k|
     (masks overlapping no class are dropped); a class keeps S when
     o_s = |S & P_k| / |S| > t1 OR o_p = |S & P_k| / |P_k| > t2; its new label is the union of its
     kept masks, or P_k itself when none is kept. P_k pixels outside the kept masks are dropped,
     which is how SEPL removes a falsely activated CAM region.
   - `authors` (cskyl/SAM_WSSS `merge/max_iou_imp2.py`, their default): classes in ascending id;
     each claims, greedily and for good, every still unclaimed S with o_s > 0.5 or o_p >= t2
     (their t1 is fixed at 0.5); P_k pixels under no unclaimed mask stay ("trust the CAM where SAM
     says nothing"), P_k pixels under masks it did not claim are dropped; the class paints the
     union, so a higher class id wins overlaps.
   - `keep_pseudo` (this project's earlier default): as `paper`, and every P_k pixel stays too
     (SEPL can then only add pixels).
3. Merge (`paper`, `keep_pseudo`): class overlaps by `overlap`: `score` gives a pixel to the class
   with the higher score (the mean o_s of its kept masks; 1.0 for a class that kept P_k as is),
   `unlabeled` leaves it unlabeled.
4. Background: pixels no class claims are `background_class` when the dataset has one (VOC's 0;
   SAM masks are never assigned to it, as in the authors' code), else unlabeled (255).
5. Weak labels win, as in every labeler: pixels the weak labels name (points, scribbles, coarse)
   keep their weak class. CAM pseudo-labels are a model's guess, not weak labels, so SEPL may
   overrule them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torchvision.ops import batched_nms

from models.config import setting
from models.engine import ImageHandle, Prompt, PromptableSegmenter
from models.io import UNLABELED
from models.labels.common import PackedMasks, RefineResult, ensure_handle, predict_chunks
from models.labels.merge import OVERLAP_RULES, Instance, apply_weak_labels, merge_instances
from models.labels.schema import WeakLabels
from models.runtime.deadline import check_deadline
from models.students.cam import CamPredictor, cam_predictor, cam_pseudo_labels

SEPL_RULES = ("paper", "authors", "keep_pseudo")


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
    rule: str = setting("paper", help="paper, authors (cskyl/SAM_WSSS merge) or keep_pseudo (see module)")
    overlap: str = setting("score", help="class overlaps (paper, keep_pseudo): score or unlabeled")
    background_class: int | None = setting(None, help="the dataset's background class id (none: unlabeled)")
    cam: str | None = setting(
        None, help="tags: a CAM classifier checkpoint (default: the shipped CamVid one)"
    )
    cam_threshold: float | None = setting(
        None, help="tags: background threshold on the normalised CAMs (default: the CAM checkpoint's)"
    )

    MOVED_SETTINGS: ClassVar[dict[str, str]] = {
        "keep_uncovered": "is `rule` now: keep_uncovered true is rule: keep_pseudo (rule: paper is the default)",
    }

    def validate(self, source: str = "sepl options") -> None:
        if self.overlap not in OVERLAP_RULES:
            raise ValueError(f"{source}: overlap {self.overlap!r} unknown; choose one of {OVERLAP_RULES}")
        if self.rule not in SEPL_RULES:
            raise ValueError(f"{source}: rule {self.rule!r} unknown; choose one of {SEPL_RULES}")
        if self.cam_threshold is not None and not 0 < self.cam_threshold < 1:
            raise ValueError(f"{source}: cam_threshold must lie in (0, 1), got {self.cam_threshold}")
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
    masks: Sequence[np.ndarray],
    pseudo: np.ndarray,
    t1: float = 0.5,
    t2: float = 0.85,
    keep_pseudo: bool = False,
    background_class: int | None = None,
) -> dict[int, tuple[np.ndarray, float]]:
    """SEPL's assignment and selection (rule `paper`, or `keep_pseudo`) on a class map `pseudo`
    (HxW, 255 unlabeled): class -> (new mask, score). `background_class` takes no masks."""
    classes = [int(c) for c in np.unique(pseudo) if c != UNLABELED and c != background_class]
    per_class = {c: pseudo == c for c in classes}
    unions: dict[int, np.ndarray] = {}  # a class's kept masks, OR-ed as they come (memory O(classes))
    scores: dict[int, list[float]] = {c: [] for c in classes}
    for s in masks:
        check_deadline()
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
            unions[k] = unions[k] | s if k in unions else s.copy()
            scores[k].append(o_s)
    out = {}
    for c in classes:
        if scores[c]:
            union = unions[c]
            if keep_pseudo:
                union |= per_class[c]
            out[c] = (union, float(np.mean(scores[c])))
        else:
            out[c] = (per_class[c], 1.0)
    return out


def authors_merge(
    masks: Sequence[np.ndarray], pseudo: np.ndarray, t2: float = 0.85, background_class: int | None = None
) -> np.ndarray:
    """The authors' default merge (cskyl/SAM_WSSS `max_iou_imp2.py`), rule `authors`: HxW uint8.

    Classes in ascending id (the background class skipped) claim unclaimed masks with
    o_s > 0.5 (their `2 |S & P| - |S| > 0`) or o_p >= t2; P_k pixels under none of the masks still
    unclaimed when the class's turn came stay; the class paints its union, later classes overwrite."""
    fill = UNLABELED if background_class is None else background_class
    out = np.full(pseudo.shape, fill, np.uint8)
    claimed = [False] * len(masks)
    for c in sorted(int(v) for v in np.unique(pseudo) if v != UNLABELED and v != background_class):
        p = pseudo == c
        area_p = int(p.sum())
        under_sam = np.zeros_like(p)
        chosen = np.zeros_like(p)  # the union of the masks it claims
        for i, s in enumerate(masks):
            if claimed[i]:
                continue
            check_deadline()
            under_sam |= s
            inter = int((s & p).sum())
            if 2 * inter - int(s.sum()) > 0 or inter / area_p >= t2:
                chosen |= s
                claimed[i] = True
        out[chosen | (p & ~under_sam)] = c
    return out


class SEPLLabeler:
    name = "sepl"
    reads = frozenset({"points", "scribbles", "coarse", "tags"})  # pixel map, or tags through CAMs
    prompts_each: frozenset[str] = frozenset()  # its prompts are a grid (`points_per_side`)

    def __init__(
        self,
        engine: PromptableSegmenter,
        options: SEPLOptions | None = None,
        cams: CamPredictor | None = None,
    ) -> None:
        self.engine = engine
        self.options = options or SEPLOptions()
        self.options.validate()
        self._cams = cams

    @property
    def cams(self) -> CamPredictor:
        """The CAM classifier for tags (`cam` option; else the shipped CamVid one), loaded once."""
        if self._cams is None:
            self._cams = cam_predictor(self.options.cam, "sepl")
        return self._cams

    def pseudo_from_tags(self, image: np.ndarray, weak: WeakLabels) -> np.ndarray:
        """P from the image's tags: the CAM pseudo-labels (`models.students.cam.cam_pseudo_labels`)."""
        cams = self.cams
        bad = [t for t in weak.tags if t >= cams.num_classes]
        if bad:
            raise ValueError(
                f"weak: tags {bad} are out of range for the CAM classifier's {cams.num_classes} classes"
            )
        threshold = self.options.cam_threshold if self.options.cam_threshold is not None else cams.threshold
        return cam_pseudo_labels(cams(image), weak.tags, threshold, self.options.background_class)

    def automatic_masks(self, handle: ImageHandle, result: RefineResult) -> Sequence[np.ndarray]:
        """Step 1: the automatic masks (HxW bool, held bit-packed), decoded chunk by chunk."""
        o = self.options
        h, w = handle.original_size
        n = o.points_per_side
        xs = (np.arange(n) + 0.5) * w / n
        ys = (np.arange(n) + 0.5) * h / n
        prompts = [Prompt(points=[[x, y]], labels=[1]) for y in ys for x in xs]
        # per chunk, only the candidates that pass the thresholds are kept, bit-packed (1 bit per
        # pixel) with their box and score; NMS runs on the boxes; the survivors stay packed
        packed, boxes_, scores_ = PackedMasks((h, w)), [], []
        for _, out in predict_chunks(self.engine, handle, prompts, result):
            masks = out.masks.reshape(-1, h, w)
            keep = (out.iou.ravel() >= o.pred_iou_thresh) & (out.stability.ravel() >= o.stability_thresh)
            keep &= masks.reshape(len(masks), -1).any(1)
            idx = np.flatnonzero(keep)
            for i in idx:
                packed.append(masks[i])
            if len(idx):
                boxes_.append(mask_boxes(masks[idx]))
                scores_.append(out.iou.ravel()[idx])
        if not len(packed):
            return packed
        boxes = torch.as_tensor(np.concatenate(boxes_))
        scores = torch.as_tensor(np.concatenate(scores_), dtype=torch.float32)
        survivors = batched_nms(boxes, scores, torch.zeros(len(packed), dtype=torch.int64), o.nms_thresh)
        return packed.select(survivors.tolist())

    def refine(
        self, image: ImageHandle | np.ndarray, weak: WeakLabels, pseudo: np.ndarray | None = None, **_: object
    ) -> RefineResult:
        """`pseudo`: the class pseudo-label map to enhance; defaults to the CAM pseudo-labels of the
        image's tags when it has tags and no pixel labels, else the weak labels' pixel map."""
        handle = ensure_handle(self.engine, image)
        weak_map = weak.sparse_map()
        if pseudo is None:
            named = (weak_map != UNLABELED).any()
            if not named and weak.tags:
                if not isinstance(image, np.ndarray):
                    raise ValueError("sepl: tags need the image pixels (for the CAM), not only a handle")
                pseudo = self.pseudo_from_tags(image, weak)
            else:
                pseudo = weak_map
        result = RefineResult(labels=np.empty(0))
        masks = self.automatic_masks(handle, result)
        result.labels, result.instances = self.enhance(masks, pseudo, weak_map)
        return result

    def enhance(
        self, masks: Sequence[np.ndarray], pseudo: np.ndarray, weak_map: np.ndarray, rule: str | None = None
    ) -> tuple[np.ndarray, list[dict]]:
        """Steps 2-5 on given automatic masks: (HxW uint8 labels, per-class records). `rule`
        overrides the option (benchmarks compare the rules on one set of masks)."""
        o = self.options
        rule = rule or o.rule
        if rule == "authors":
            labels = authors_merge(masks, pseudo, o.t2, o.background_class)
            records = [
                {"class_id": int(c), "area": int((labels == c).sum())}
                for c in np.unique(labels)
                if c != UNLABELED and c != o.background_class
            ]
        else:
            selected = assign_and_select(masks, pseudo, o.t1, o.t2, rule == "keep_pseudo", o.background_class)
            records = [
                {"class_id": c, "area": int(m.sum()), "score": round(s, 4)} for c, (m, s) in selected.items()
            ]
            instances = [Instance(c, m, score) for c, (m, score) in selected.items()]
            labels = merge_instances(pseudo.shape, instances, None, o.overlap)
            if o.background_class is not None:
                # step 4: background is where no class claims the pixel; a class overlap that
                # `overlap: unlabeled` left unlabeled stays unlabeled
                claimed = np.zeros(pseudo.shape, bool)
                for mask, _ in selected.values():
                    claimed |= mask
                labels[~claimed] = o.background_class
        return apply_weak_labels(labels, weak_map), records  # weak labels win
