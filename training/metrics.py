"""Segmentation metrics, pure numpy: confusion-matrix mIoU, label quality of refinement, WvF.

Conventions: `gt` pixels equal to `ignore_index` are left out everywhere. A prediction of
`unlabeled` (255) is never right: it counts as a miss of the ground-truth class (so raw weak labels
can be scored as they are) but as no class's false positive.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from models.io import UNLABELED


@dataclass
class ConfusionMatrix:
    """Accumulates a (C x C+1) matrix: rows ground truth, columns prediction, last column unlabeled."""

    num_classes: int
    ignore_index: int | None = None
    matrix: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.matrix = np.zeros((self.num_classes, self.num_classes + 1), dtype=np.int64)

    def update(self, pred: np.ndarray, gt: np.ndarray) -> None:
        if pred.shape != gt.shape:
            raise ValueError(f"prediction shape {pred.shape} differs from ground truth {gt.shape}")
        valid = gt != self.ignore_index if self.ignore_index is not None else np.ones(gt.shape, bool)
        valid &= gt < self.num_classes
        g = gt[valid].astype(np.int64)
        p = pred[valid].astype(np.int64)
        bad = (p != UNLABELED) & (p >= self.num_classes)
        if bad.any():
            raise ValueError(
                f"prediction holds class ids {sorted(set(p[bad].tolist()))[:5]} >= {self.num_classes}"
            )
        p = np.where(p == UNLABELED, self.num_classes, p)
        self.matrix += np.bincount(g * (self.num_classes + 1) + p, minlength=self.matrix.size).reshape(
            self.matrix.shape
        )

    def iou_per_class(self) -> np.ndarray:
        """IoU per class; NaN for classes absent from both ground truth and prediction."""
        m = self.matrix
        tp = np.diag(m[:, : self.num_classes]).astype(np.float64)
        fp = m[:, : self.num_classes].sum(0) - tp
        fn = m.sum(1) - tp
        denom = tp + fp + fn
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(denom > 0, tp / denom, np.nan)

    def miou(self) -> float:
        iou = self.iou_per_class()
        return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")

    def pixel_accuracy(self) -> float:
        total = self.matrix.sum()
        return float(np.trace(self.matrix[:, : self.num_classes]) / total) if total else float("nan")

    def coverage(self) -> float:
        """Share of valid pixels that carry any label."""
        total = self.matrix.sum()
        return float(1 - self.matrix[:, -1].sum() / total) if total else float("nan")


@dataclass
class AddedLabelQuality:
    """Precision / recall / F1 of the labels refinement ADDED (unlabeled in the weak input, labeled after)."""

    ignore_index: int | None = None
    added: int = 0
    added_correct: int = 0
    missing: int = 0  # valid pixels unlabeled in the weak input: what refinement could add

    def update(self, weak: np.ndarray, refined: np.ndarray, gt: np.ndarray) -> None:
        valid = gt != self.ignore_index if self.ignore_index is not None else np.ones(gt.shape, bool)
        was_missing = valid & (weak == UNLABELED)
        added = was_missing & (refined != UNLABELED)
        self.missing += int(was_missing.sum())
        self.added += int(added.sum())
        self.added_correct += int((added & (refined == gt)).sum())

    def precision(self) -> float:
        return self.added_correct / self.added if self.added else float("nan")

    def recall(self) -> float:
        return self.added_correct / self.missing if self.missing else float("nan")

    def f1(self) -> float:
        p, r = self.precision(), self.recall()
        return 2 * p * r / (p + r) if p + r > 0 else float("nan")


def wvf(weak_miou: float, full_miou: float) -> float:
    """Weak-vs-full ratio: mIoU with weak supervision over mIoU with full supervision."""
    return weak_miou / full_miou if full_miou else float("nan")


def label_report(
    conf: ConfusionMatrix,
    class_names: list[str] | tuple[str, ...] | None = None,
    added: AddedLabelQuality | None = None,
) -> dict:
    """JSON-ready summary of a confusion matrix (and of added labels when given)."""
    iou = conf.iou_per_class()
    names = list(class_names) if class_names else [str(i) for i in range(conf.num_classes)]
    report = {
        "miou": conf.miou(),
        "pixel_accuracy": conf.pixel_accuracy(),
        "coverage": conf.coverage(),
        "per_class_iou": {n: (None if np.isnan(v) else float(v)) for n, v in zip(names, iou)},
    }
    if added is not None:
        report |= {
            "added_precision": added.precision(),
            "added_recall": added.recall(),
            "added_f1": added.f1(),
            "added_pixels": added.added,
        }
    return {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in report.items()}


def coco_mask_ap(ground_truth: dict[str, Any], results: list[dict[str, Any]]) -> dict[str, float]:
    """COCO mask AP (pycocotools' COCOeval, iouType "segm") of `results` (COCO results format) against
    `ground_truth` (a COCO instances dict). Returns AP, AP50, AP75, APs/m/l and AR100 in [0, 1]; a
    category with no ground truth in the evaluated images is left out (pycocotools' rule), so is
    every crowd region (detections on it are ignored). No results scores 0."""
    import contextlib
    import io

    from pycocotools.cocoeval import COCOeval

    from training.coco import load_coco

    names = ("AP", "AP50", "AP75", "APs", "APm", "APl")
    if not results:
        return dict.fromkeys((*names, "AR100"), 0.0)
    gt = load_coco(ground_truth)
    known = set(gt.getImgIds())
    stray = sorted({r["image_id"] for r in results} - known)
    if stray:
        raise ValueError(f"results name image ids {stray[:5]} that the ground truth does not have")
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes([dict(r) for r in results])  # loadRes writes into the dicts it gets
        ev = COCOeval(gt, dt, iouType="segm")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = [max(float(v), 0.0) for v in ev.stats]  # -1 = "no such objects": report 0
    return dict(zip(names, stats[:6])) | {"AR100": stats[8]}
