"""Issue 25: COCO crowd regions keep their own category through read -> write (and so AP ignores a
detection on a crowd region of its own class, as COCOeval does per category)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from training.coco import coco_dataset, coco_results, load_coco, samples_from_coco
from training.metrics import coco_mask_ap

H, W = 20, 20


def _rect(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((H, W), bool)
    m[y0:y1, x0:x1] = True
    return m


def _uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE (what crowd annotations hold): run lengths over the column-major
    pixels, starting with a run of zeros."""
    flat = mask.flatten(order="F").astype(np.uint8)
    counts, value, run = [], 0, 0
    for v in flat:
        if v == value:
            run += 1
        else:
            counts.append(run)
            value, run = int(v), 1
    counts.append(run)
    return {"counts": counts, "size": [H, W]}


def _polygon(y0: int, y1: int, x0: int, x1: int) -> list[list[float]]:
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


# category ids 3 ("a") and 7 ("b"): a gap, as in real COCO files; crowd "b" is listed after crowd "a"
SOLID_A, SOLID_B = (0, 5, 0, 5), (0, 5, 10, 15)
CROWD_A, CROWD_B = _rect(10, 20, 0, 8), _rect(10, 20, 10, 20)


def _hand_made() -> dict:
    anns = [
        (3, {"segmentation": _polygon(*SOLID_A), "iscrowd": 0}),
        (7, {"segmentation": _polygon(*SOLID_B), "iscrowd": 0}),
        (3, {"segmentation": _uncompressed_rle(CROWD_A), "iscrowd": 1}),
        (7, {"segmentation": _uncompressed_rle(CROWD_B), "iscrowd": 1}),
    ]
    return {
        "images": [{"id": 1, "file_name": "one.jpg", "height": H, "width": W}],
        "annotations": [
            {"id": i + 1, "image_id": 1, "category_id": cat, "area": 1.0, "bbox": [0, 0, 1, 1]} | ann
            for i, (cat, ann) in enumerate(anns)
        ],
        "categories": [{"id": 3, "name": "a"}, {"id": 7, "name": "b"}],
    }


def test_crowd_regions_keep_their_own_category_through_a_round_trip(tmp_path) -> None:
    samples = samples_from_coco(load_coco(_hand_made()), tmp_path)
    assert len(samples) == 1 and len(samples[0].crowd) == 2
    written = coco_dataset(samples, ["a", "b"], [3, 7])
    crowd = {a["category_id"]: a for a in written["annotations"] if a["iscrowd"]}
    assert sorted(crowd) == [3, 7], [a["category_id"] for a in written["annotations"] if a["iscrowd"]]
    assert crowd[3]["area"] == CROWD_A.sum() and crowd[7]["area"] == CROWD_B.sum()
    # read back: the same crowd masks with the same classes
    back = samples_from_coco(load_coco(written), tmp_path)[0]
    assert back.crowd_class_ids == samples[0].crowd_class_ids == [0, 1]
    assert all(np.array_equal(x, y) for x, y in zip(back.crowd, [CROWD_A, CROWD_B], strict=True))


def test_a_detection_on_a_crowd_region_of_its_class_is_ignored(tmp_path) -> None:
    """Hand-worked AP: each class has one object, detected exactly. Class b also has a higher-scored
    detection on the b crowd region; COCOeval ignores it (crowd of the same class), so AP = 1. Were the
    crowd region written as class a, that detection would be b's first false positive and b's AP 0.5."""
    written = coco_dataset(samples_from_coco(load_coco(_hand_made()), tmp_path), ["a", "b"], [3, 7])
    solid_a, solid_b = _rect(*SOLID_A), _rect(*SOLID_B)
    predictions = [(np.stack([solid_a, solid_b, CROWD_B]), np.array([0, 1, 1]), np.array([0.9, 0.5, 0.9]))]
    ap = coco_mask_ap(written, coco_results([1], predictions, [3, 7]))
    assert ap["AP"] == pytest.approx(1.0)


def test_crowd_masks_without_classes_are_refused(tmp_path) -> None:
    sample = dataclasses.replace(samples_from_coco(load_coco(_hand_made()), tmp_path)[0], crowd_class_ids=[])
    with pytest.raises(ValueError, match="2 crowd regions but 0 crowd class ids"):
        coco_dataset([sample], ["a", "b"], [3, 7])
