"""Scores of a deployed student (any runtime: `models.students.runtime`) on a labelled split: CamVid
mIoU for semantic students, COCO mask AP for instance students. Used by the shipped-student tests,
the int8 accuracy report and `benchmarks/`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from models.engine import read_image
from models.io import read_label_png
from training.datasets import InstanceSample
from training.metrics import ConfusionMatrix, coco_mask_ap

CAMVID_VOID = 11


def camvid_pairs(
    root: str | Path, split: str = "val", limit: int | None = None
) -> list[tuple[str, Path, Path]]:
    """(stem, image path, label path) of a CamVid split, in the split file's order."""
    root = Path(root)
    stems = (root / f"{split}.txt").read_text().split()[:limit]
    return [(s, root / "images" / split / f"{s}.jpg", root / "labels" / split / f"{s}.png") for s in stems]


def semantic_scores(
    student: Any,
    pairs: Sequence[tuple[str, Path, Path]],
    ignore_index: int | None = CAMVID_VOID,
    batch: int = 4,
) -> dict[str, Any]:
    """mIoU (and per-class IoU) of a semantic segmenter on (stem, image, label) files."""
    confusion = ConfusionMatrix(student.num_classes, ignore_index)
    for start in range(0, len(pairs), batch):
        chunk = pairs[start : start + batch]
        predictions = student.segment([read_image(image) for _, image, _ in chunk])
        for (_, _, label), prediction in zip(chunk, predictions, strict=True):
            confusion.update(prediction, read_label_png(label))
    per_class = confusion.iou_per_class()
    return {"miou": float(np.nanmean(per_class)), "per_class_iou": per_class.tolist(), "images": len(pairs)}


def instance_scores(
    student: Any,
    samples: Sequence[InstanceSample],
    class_names: Sequence[str],
    category_ids: Sequence[int] | None = None,
    batch: int = 4,
) -> dict[str, float]:
    """COCO mask AP of an instance segmenter on samples with ground-truth instances."""
    from training.coco import coco_dataset, coco_results

    predictions = []
    for start in range(0, len(samples), batch):
        chunk = samples[start : start + batch]
        predictions.extend(student.segment([s.load_image() for s in chunk], top_k=100, min_score=0.0))
    gt = coco_dataset(samples, class_names, category_ids)
    return coco_mask_ap(gt, coco_results([s.image_id for s in samples], predictions, category_ids))
