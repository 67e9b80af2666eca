"""The click simulation protocol, its metrics, and the instance dataset readers."""

from __future__ import annotations

import numpy as np
import pytest

from models.engine.classical import ClassicalPrior
from tests.conftest import require_data
from training.datasets import CocoInstances, PennFudan
from training.interactive import (
    Click,
    clicks_to_reach,
    interior_point,
    next_click,
    simulate_clicks,
    summarize,
)


def _rect(h: int, w: int, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[r0:r1, c0:c1] = True
    return m


def test_first_click_is_positive_at_the_interior_most_pixel() -> None:
    truth = _rect(40, 60, 10, 31, 20, 41)  # a 21x21 square: its centre is (30, 20)
    assert next_click(np.zeros_like(truth), truth) == Click(30, 20, True)
    assert interior_point(_rect(10, 10, 0, 10, 0, 3)) in {(1, y) for y in range(10)}  # the border is boundary


def test_next_click_goes_to_the_largest_error_and_says_which_kind() -> None:
    truth = _rect(40, 60, 10, 30, 10, 30)
    alarm = truth | _rect(40, 60, 5, 35, 40, 58)  # a false alarm larger than anything missed
    click = next_click(alarm, truth)
    assert not click.positive and 40 <= click.x < 58 and 5 <= click.y < 35
    missed = truth & ~_rect(40, 60, 10, 30, 10, 15)  # 5 columns missed
    click = next_click(missed, truth)
    assert click.positive and 10 <= click.x < 15
    assert next_click(truth, truth) is None


def test_noc_and_summary() -> None:
    assert clicks_to_reach([0.5, 0.86, 0.95], 0.85, 20) == 2
    assert clicks_to_reach([0.5, 0.6], 0.85, 20) == 20
    scores = summarize([[0.5, 0.9], [1.0]], at=(1, 3), cap=5)
    assert scores["miou@1"] == pytest.approx(0.75) and scores["miou@3"] == pytest.approx(0.95)
    assert scores["noc@85"] == pytest.approx(1.5) and scores["noc@90"] == pytest.approx(1.5)
    assert scores["objects"] == 2


def test_simulation_on_the_classical_prior(scene) -> None:
    engine = ClassicalPrior()
    truth = np.zeros(scene.shape[:2], bool)
    truth[80:180, 70:180] = True  # the scene's square object
    run = simulate_clicks(engine, scene, truth, max_clicks=5)
    assert 1 <= len(run.ious) <= 5 and len(run.picked_best) == len(run.ious) == len(run.seconds)
    assert all(0.0 <= v <= 1.0 for v in run.ious)
    assert run.ious[0] > 0.3  # one click in the middle of a uniform square finds much of it
    # multimask on the first click only: the engine chose among candidates once
    assert run.picked_best[0] is not None and all(p is None for p in run.picked_best[1:])
    always = simulate_clicks(engine, scene, truth, max_clicks=3, multimask="always")
    assert all(p is not None for p in always.picked_best)
    with pytest.raises(ValueError, match="multimask"):
        simulate_clicks(engine, scene, truth, max_clicks=1, multimask="sometimes")


def test_pennfudan_split_is_disjoint_and_every_fifth() -> None:
    root = require_data("pennfudan")
    val, train = PennFudan(root, "val"), PennFudan(root, "train")
    everything = PennFudan(root, "all").stems()
    assert not set(val.stems()) & set(train.stems())
    assert sorted(val.stems() + train.stems()) == everything and val.stems() == everything[::5]
    sample = val.samples()[0]
    assert sample.masks and all(m.any() for m in sample.masks) and sample.image.is_file()
    assert not any((a & b).any() for i, a in enumerate(sample.masks) for b in sample.masks[i + 1 :])


def test_coco_instances_keep_crowd_apart_and_map_category_ids() -> None:
    import json

    coco = CocoInstances(require_data("coco_mini"), "val2017")
    samples = coco.samples()
    data = json.loads(coco.annotation_file.read_text())
    solid = [a for a in data["annotations"] if not a["iscrowd"] and a["area"] > 0]
    assert sum(len(s.masks) for s in samples) <= len(solid)
    assert sum(len(s.masks) for s in samples) >= len(solid) - 5  # only empty decodes may drop
    # contiguous class ids, mapped back to the file's category ids by `category_ids`
    ids = sorted(c["id"] for c in data["categories"])
    assert coco.category_ids == tuple(ids)
    assert {coco.category_ids[c] for s in samples for c in s.class_ids} <= set(ids)
    assert sum(len(s.crowd) for s in samples) == sum(a["iscrowd"] for a in data["annotations"])
    with pytest.raises(ValueError, match="no such COCO annotation file"):
        CocoInstances(require_data("coco_mini"), "test2017")
