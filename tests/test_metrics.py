from __future__ import annotations

import numpy as np
import pytest

from training.metrics import AddedLabelQuality, ConfusionMatrix, label_report, wvf


def test_miou_against_hand_computed_values() -> None:
    gt = np.array([[0, 0, 1, 1], [0, 0, 1, 9]])
    pred = np.array([[0, 1, 1, 1], [0, 255, 1, 0]])
    conf = ConfusionMatrix(2, ignore_index=9)
    conf.update(pred, gt)
    # class 0: TP 2, FP 0, FN 2 (one predicted 1, one unlabeled) -> 2/4
    # class 1: TP 3, FP 1, FN 0 -> 3/4
    np.testing.assert_allclose(conf.iou_per_class(), [0.5, 0.75])
    assert conf.miou() == pytest.approx(0.625)
    assert conf.pixel_accuracy() == pytest.approx(5 / 7)
    assert conf.coverage() == pytest.approx(6 / 7)


def test_absent_class_is_nan_and_skipped() -> None:
    conf = ConfusionMatrix(3)
    conf.update(np.zeros((2, 2), int), np.zeros((2, 2), int))
    iou = conf.iou_per_class()
    assert iou[0] == 1.0 and np.isnan(iou[1:]).all() and conf.miou() == 1.0


def test_bad_predictions() -> None:
    conf = ConfusionMatrix(2)
    with pytest.raises(ValueError, match="differs from ground truth"):
        conf.update(np.zeros((2, 2)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match=r"class ids \[5\] >= 2"):
        conf.update(np.full((2, 2), 5), np.zeros((2, 2), int))


def test_added_label_quality() -> None:
    gt = np.array([[1, 1, 2, 2, 9]])
    weak = np.array([[1, 255, 255, 255, 255]])
    refined = np.array([[1, 1, 1, 255, 1]])
    q = AddedLabelQuality(ignore_index=9)
    q.update(weak, refined, gt)
    # missing (valid, unlabeled in weak): 3 px; added: 2 (the ignore pixel does not count); correct: 1
    assert (q.missing, q.added, q.added_correct) == (3, 2, 1)
    assert q.precision() == 0.5 and q.recall() == pytest.approx(1 / 3) and q.f1() == pytest.approx(0.4)
    report = label_report(ConfusionMatrix(3), ["a", "b", "c"], q)
    assert report["added_precision"] == 0.5 and report["miou"] is None


def test_wvf() -> None:
    assert wvf(0.6, 0.75) == pytest.approx(0.8)
