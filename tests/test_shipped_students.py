"""The students shipped in models/students/weights load and score a few val images above a floor (the full
val figures, and the commands that trained them, are in the README and docs/training.md)."""

from __future__ import annotations

from models.students.runtime import load_segmenter
from models.students.semantic import SHIPPED_INSTANCE_STUDENT, SHIPPED_SEMANTIC_STUDENT
from tests.conftest import require_data
from training.evaluate import camvid_pairs, instance_scores, semantic_scores

# floors about 3/4 of what each student scores on these images (measured when shipped); an untrained
# student scores far below them (0 AP, a few % mIoU)
SEMANTIC_FLOOR_MIOU = 0.35  # first 12 CamVid val images (shipped: 46.4 %)
INSTANCE_FLOOR_AP50 = 0.06  # first 10 Penn-Fudan val images (shipped: 8.9 %)


def test_shipped_semantic_student_scores_above_its_floor() -> None:
    camvid = require_data("camvid")
    student = load_segmenter(SHIPPED_SEMANTIC_STUDENT)
    assert (
        student.task == "semantic" and student.meta["mode"] == "sesam" and student.meta["kind"] == "scribbles"
    )
    scores = semantic_scores(student, camvid_pairs(camvid, "val", 12))
    assert scores["miou"] > SEMANTIC_FLOOR_MIOU, scores


def test_shipped_instance_student_scores_above_its_floor() -> None:
    from training.datasets import PennFudan

    pennfudan = require_data("pennfudan")
    student = load_segmenter(SHIPPED_INSTANCE_STUDENT)
    assert student.task == "instance" and student.meta["mode"] == "wish" and student.meta["labels"] == "boxes"
    data = PennFudan(pennfudan, "val")
    scores = instance_scores(student, data.samples()[:10], data.class_names)
    assert scores["AP50"] > INSTANCE_FLOOR_AP50, scores
