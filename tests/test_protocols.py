from __future__ import annotations

import numpy as np
import pytest

from training.protocols import derive, derive_coarse, longest_skeleton_path, regions

IGNORE = 11


@pytest.fixture
def gt() -> np.ndarray:
    g = np.full((120, 160), 3, np.uint8)  # road
    g[:40] = 0  # sky
    g[50:100, 20:70] = 8  # car
    g[60:70, 100:110] = 9  # small pedestrian (100 px)
    g[110:, :] = IGNORE
    return g


@pytest.mark.parametrize("kind", ["points", "scribbles", "coarse", "boxes", "tags"])
def test_deterministic_by_seed(gt, kind: str) -> None:
    a, b = derive(kind, gt, IGNORE, seed=0, stem="x"), derive(kind, gt, IGNORE, seed=0, stem="x")
    assert a.to_json() == b.to_json()
    if kind == "points":
        c = derive(kind, gt, IGNORE, seed=1, stem="x")
        assert a.to_json() != c.to_json()


def test_points_one_per_class_on_that_class(gt) -> None:
    weak = derive("points", gt, IGNORE, seed=0)
    assert sorted(p.class_id for p in weak.points) == [0, 3, 8, 9]
    assert all(gt[int(p.y), int(p.x)] == p.class_id for p in weak.points)


def test_scribbles_follow_regions(gt) -> None:
    weak = derive("scribbles", gt, IGNORE, seed=0)
    assert sorted(s.class_id for s in weak.scribbles) == [0, 3, 8, 9]
    for s in weak.scribbles:
        stroke = weak.scribble_mask(s)
        assert (gt[stroke] == s.class_id).mean() > 0.99
    car = next(s for s in weak.scribbles if s.class_id == 8)
    assert len(car.points) >= 5  # a real stroke, not a dot


def test_coarse_is_precise_and_partial(gt) -> None:
    weak = derive_coarse(gt, IGNORE, min_area=400)
    labelled = weak.coarse != 255
    assert (weak.coarse[labelled] == gt[labelled]).mean() > 0.98
    valid = gt != IGNORE
    assert 0.4 < labelled[valid].mean() < 0.9
    assert 9 not in np.unique(weak.coarse)  # the 100 px pedestrian is dropped


def test_boxes_and_tags(gt) -> None:
    boxes = derive("boxes", gt, IGNORE).boxes
    car = next(b for b in boxes if b.class_id == 8)
    assert car.box == (20.0, 50.0, 70.0, 100.0)
    assert derive("tags", gt, IGNORE).tags == [0, 3, 8, 9]
    with pytest.raises(ValueError, match="unknown weak-label kind"):
        derive("polygons", gt, IGNORE)


def test_regions_and_skeleton_path() -> None:
    g = np.zeros((20, 20), np.uint8)
    g[2:5, 2:5] = 1
    g[10:15, 10:15] = 1
    assert len(regions(g, None, min_area=1)) == 3  # class 0 background + two class-1 squares
    line = np.zeros((10, 30), bool)
    line[5, 3:27] = True
    path = longest_skeleton_path(line)
    assert len(path) == 24 and {tuple(path[0]), tuple(path[-1])} == {(5, 3), (5, 26)}
