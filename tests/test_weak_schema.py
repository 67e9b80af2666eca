from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from models.labels.schema import (
    BoxLabel,
    PointLabel,
    Scribble,
    WeakLabels,
    load_weak_labels,
    save_weak_labels,
)


def _weak() -> WeakLabels:
    coarse = np.full((30, 40), 255, np.uint8)
    coarse[5:10, 5:10] = 2
    return WeakLabels(
        30,
        40,
        points=[PointLabel(3.5, 4, 1)],
        scribbles=[Scribble(0, np.array([[1.0, 1.0], [20.0, 1.0], [20.0, 20.0]]), 3)],
        boxes=[BoxLabel(2, (0.0, 0.0, 10.0, 12.0))],
        tags=[0, 1, 2],
        coarse=coarse,
    )


def test_round_trip(tmp_path) -> None:
    weak = _weak()
    written = save_weak_labels(weak, tmp_path, "img")
    assert sorted(p.name for p in written) == ["img.json", "img.png"]
    back = load_weak_labels(tmp_path, "img", (30, 40), num_classes=3)
    assert back.to_json() == weak.to_json()
    assert np.array_equal(back.coarse, weak.coarse)
    assert back.kinds() == ["points", "scribbles", "boxes", "tags", "coarse"]
    assert back.class_ids() == {0, 1, 2}
    assert not list(tmp_path.glob("*.tmp"))


def test_saving_a_stem_again_leaves_exactly_the_new_labels(tmp_path) -> None:
    """Writing a stem's weak labels replaces what the folder held for it: points written over a
    coarse mask (`sesam weak derive` of another kind into the same folder) read back as points
    only (before: the old PNG was merged in on reading), and a coarse mask over points as coarse."""
    weak = _weak()
    coarse_only = WeakLabels(30, 40, coarse=weak.coarse)
    points_only = WeakLabels(30, 40, points=[PointLabel(3.5, 4, 1)])
    save_weak_labels(coarse_only, tmp_path, "img")
    assert [p.name for p in save_weak_labels(points_only, tmp_path, "img")] == ["img.json"]
    assert load_weak_labels(tmp_path, "img", (30, 40), num_classes=3).kinds() == ["points"]
    save_weak_labels(coarse_only, tmp_path, "img")
    assert load_weak_labels(tmp_path, "img", (30, 40), num_classes=3).kinds() == ["coarse"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img.png"]


def test_scribble_raster_and_sparse_map() -> None:
    weak = _weak()
    stroke = weak.scribble_mask(weak.scribbles[0])
    assert stroke[1, 1:21].all() and stroke[1:21, 20].all()
    assert stroke[0, 10] and stroke[2, 10] and not stroke[4, 10]  # 3 px thick
    sparse = weak.sparse_map()
    assert sparse[4, 3] == 1 and sparse[7, 7] == 2 and sparse[1, 10] == 0
    assert sparse[25, 35] == 255


BAD = [
    (
        {"points": [{"x": 1, "y": 1, "class_id": 11}]},
        r"points\[0\].class_id = 11 is out of range for 11 classes",
    ),
    ({"points": [{"x": 50, "y": 1, "class_id": 1}]}, r"points\[0\] = \(50, 1\) lies outside the 40x30 image"),
    ({"points": [{"x": 1, "y": 1}]}, "missing field 'class_id'"),
    ({"points": [{"x": 1, "y": 1, "class_id": 1.5}]}, "is not an integer"),
    (
        {"boxes": [{"class_id": 1, "box": [0, 0, 50, 5]}]},
        r"boxes\[0\].box = \[0.0, 0.0, 50.0, 5.0\] is not inside",
    ),
    ({"scribbles": [{"class_id": 1, "points": []}]}, "must be a non-empty list"),
    (
        {"scribbles": [{"class_id": 1, "width": 10**6, "points": [[1, 1]]}]},
        r"width = 1000000 must be in \[1, 40\]",
    ),
    ({"tags": [300]}, r"tags\[0\] = 300 is not a class id"),
    ({"colour": "red"}, r"unknown fields \['colour'\]"),
    ({"version": 3}, r"version = 3; this reader understands versions \[1, 2\]"),
    ({"instances": True}, r"unknown fields \['instances'\]"),  # a version 1 file has no instance meaning
]


@pytest.mark.parametrize(("extra", "message"), BAD)
def test_invalid_json_labels(tmp_path, extra: dict, message: str) -> None:
    data = {"version": 1, "width": 40, "height": 30} | extra
    (tmp_path / "img.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=message) as info:
        load_weak_labels(tmp_path, "img", (30, 40), num_classes=11)
    assert "img.json" in str(info.value)


def test_unreadable_and_mismatched_files(tmp_path) -> None:
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"broken\.json: invalid JSON"):
        load_weak_labels(tmp_path, "broken")
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / "small.png")
    with pytest.raises(ValueError, match="labels are for a 10x10 image, the image is 40x30"):
        load_weak_labels(tmp_path, "small", (30, 40))
    Image.fromarray(np.full((30, 40), 20, np.uint8)).save(tmp_path / "range.png")
    with pytest.raises(ValueError, match=r"class ids \[20\] out of range for 11 classes"):
        load_weak_labels(tmp_path, "range", (30, 40), num_classes=11)
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(ValueError, match="8-bit single-channel"):
        load_weak_labels(tmp_path, "rgb", (30, 40))
    with pytest.raises(ValueError, match="no weak labels for 'ghost'"):
        load_weak_labels(tmp_path, "ghost")


@pytest.mark.parametrize("width", [1, 2, 3, 7, 12, 40])
def test_scribble_width_is_a_disk_dilation(width: int) -> None:
    """The distance-threshold raster equals dilating the polyline by skimage's disk(width // 2)."""
    from scipy import ndimage as ndi
    from skimage import morphology

    weak = WeakLabels(60, 80)
    scribble = Scribble(1, np.array([[3.0, 5.0], [70.0, 12.0], [40.0, 55.0], [41.0, 55.0]]), width)
    centre = weak.scribble_mask(Scribble(1, scribble.points, 1))
    radius = width // 2
    expected = ndi.binary_dilation(centre, structure=morphology.disk(radius)) if radius else centre
    assert np.array_equal(weak.scribble_mask(scribble), expected)


def test_version_2_instance_labels_round_trip(tmp_path) -> None:
    """Version 2 carries instance meaning; version 1 files still read, as semantic labels."""
    weak = WeakLabels(30, 40, points=[PointLabel(3, 4, 1), PointLabel(20, 9, 1)], tags=[1], instances=True)
    save_weak_labels(weak, tmp_path, "inst")
    data = json.loads((tmp_path / "inst.json").read_text())
    assert data["version"] == 2 and data["instances"] is True
    back = load_weak_labels(tmp_path, "inst", (30, 40))
    assert back.instances and back.points == weak.points and back.tags == [1]
    (tmp_path / "old.json").write_text(json.dumps({"version": 1, "width": 40, "height": 30, "tags": [2]}))
    old = load_weak_labels(tmp_path, "old", (30, 40))
    assert not old.instances and old.tags == [2]
    (tmp_path / "bad.json").write_text(
        json.dumps({"version": 2, "width": 40, "height": 30, "instances": "yes"})
    )
    with pytest.raises(ValueError, match=r"bad\.json: instances = 'yes' must be true or false"):
        load_weak_labels(tmp_path, "bad")
