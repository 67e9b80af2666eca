"""The CAM classifier from tags: pseudo-label rule on hand-made maps, training (3 iterations),
checkpoints, `sesam cam`, and SEPL reading tags through it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from models.io import UNLABELED
from models.students.cam import (
    CamClassifier,
    CamPredictor,
    cam_pseudo_labels,
    image_logits,
    load_cam_classifier,
    normalise_cam,
    save_cam_classifier,
)
from tests.conftest import require_data
from tests.scripted import ObjectClicks


def test_cam_pseudo_labels_on_hand_made_maps() -> None:
    cams = torch.tensor(
        [
            [[0.9, 0.6, 0.1, 0.0]],  # class 0
            [[0.2, 0.7, 0.3, 0.0]],  # class 1
            [[1.0, 1.0, 1.0, 1.0]],  # class 2: not tagged, never wins
        ]
    )
    assert cam_pseudo_labels(cams, [0, 1], 0.25).tolist() == [[0, 1, 1, UNLABELED]]
    assert cam_pseudo_labels(cams, [0, 1], 0.25, background_class=5).tolist() == [[0, 1, 1, 5]]
    assert cam_pseudo_labels(cams, [0], 0.5).tolist() == [[0, 0, UNLABELED, UNLABELED]]
    assert cam_pseudo_labels(cams, [], 0.5).tolist() == [[UNLABELED] * 4]


def test_normalise_and_gap() -> None:
    cam = torch.tensor([[[-1.0, 2.0], [4.0, 0.0]], [[-3.0, -1.0], [-2.0, -1.0]]])
    out = normalise_cam(cam)
    assert out[0].tolist() == [[0.0, 0.5], [1.0, 0.0]] and out[1].abs().sum() == 0
    assert image_logits(cam[None]).tolist() == [[1.25, -1.75]]


@pytest.mark.parametrize("stride", [8, 16, 32])
def test_cam_classifier_shapes_and_checkpoint(tmp_path, stride) -> None:
    torch.manual_seed(0)
    model = CamClassifier("fpn-mobilenetv2", 3, stride).eval()
    assert model(torch.zeros(1, 3, 64, 96)).shape == (1, 3, 64 // stride, 96 // stride)
    save_cam_classifier(tmp_path / "c.pt", model, {"base_scale": 0.5, "cam_threshold": 0.2}, half=True)
    loaded, meta = load_cam_classifier(tmp_path / "c.pt")
    assert meta["output_stride"] == stride and meta["base_scale"] == 0.5
    x = torch.rand(1, 3, 64, 96)
    assert torch.allclose(loaded(x), model(x), atol=1e-2)  # fp16 storage, same network
    predictor = CamPredictor.from_checkpoint(tmp_path / "c.pt")
    image = np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8)
    cams = predictor(image)
    assert cams.shape == (3, 50, 70) and float(cams.min()) >= 0 and float(cams.max()) <= 1
    assert predictor.threshold == 0.2 and predictor.scores(image).shape == (3,)
    with pytest.raises(ValueError, match="not a CAM classifier"):
        torch.save({"name": "x"}, tmp_path / "bad.pt")
        load_cam_classifier(tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="output_stride"):
        CamClassifier("fpn-mobilenetv2", 3, 4)


def test_cam_mode_trains_three_iterations_and_resumes(tmp_path) -> None:
    from training.trainer import TrainConfig, build_trainer

    values = {
        "mode": "cam",
        "camvid_root": str(require_data("camvid")),
        "kind": "tags",
        "train_limit": 4,
        "val_limit": 2,
        "iterations": 3,
        "batch_size": 2,
        "crop": [96, 128],
        "base_scale": 0.3,
        "eval_every": 3,
        "checkpoint_every": 1,
        "out_dir": str(tmp_path / "cam"),
        "quiet": True,
    }
    summary = build_trainer(TrainConfig.from_mapping(values)).train()
    assert summary["iterations"] == 3 and 0 <= summary["val_miou"] <= 1
    _, meta = load_cam_classifier(tmp_path / "cam" / "cam.pt")
    assert meta["class_names"][0] == "sky" and meta["base_scale"] == 0.3
    rows = (tmp_path / "cam" / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("iteration") and len(rows) >= 3
    again = build_trainer(TrainConfig.from_mapping(values | {"iterations": 4})).train()
    assert again["iterations"] == 4  # resumed from last.pt
    with pytest.raises(ValueError, match="kind: tags"):
        TrainConfig.from_mapping(values | {"kind": "points"})


def test_sesam_cam_writes_maps_and_report(tmp_path, capsys) -> None:
    from models.io import save_png
    from models.labels.schema import WeakLabels, save_weak_labels
    from sesam.cli import main

    torch.manual_seed(0)
    save_cam_classifier(tmp_path / "c.pt", CamClassifier("fpn-mobilenetv2", 3, 16), {"cam_threshold": 0.3})
    images, weak = tmp_path / "images", tmp_path / "weak"
    for i in range(2):
        save_png(np.full((40, 60, 3), 60 * i, np.uint8), images / f"i{i}.png")
    save_weak_labels(WeakLabels(40, 60, tags=[1, 2]), weak, "i0")
    save_weak_labels(WeakLabels(40, 60, points=[]), weak, "i1")  # no tags: reported, not fatal
    args = ["cam", "--images", str(images), "--out", str(tmp_path / "out"), "--cam", str(tmp_path / "c.pt")]
    assert main([*args, "--weak", str(weak), "--report", "--quiet"]) == 1
    out = tmp_path / "out"
    assert np.load(out / "i0.npz")["cams"].shape == (3, 40, 60)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["done"] == 1 and "i1" in summary["failures"] and (out / "report.html").exists()
    assert summary["per_image"]["i0"]["tags"] == [1, 2] and summary["per_image"]["i0"]["threshold"] == 0.3
    assert main([*args, "--weak", str(weak), "--quiet"]) == 1  # the same run resumes: i0 is done
    assert json.loads((out / "summary.json").read_text())["skipped_existing"] == 1
    # another run into the same folder (without --weak: predicted classes) would skip i0, made with
    # the weak tags, and name options that never ran on it: refused, unless --overwrite
    assert main([*args, "--quiet"]) == 2
    assert main([*args, "--quiet", "--overwrite"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["skipped_existing"] == 0 and summary["per_image"]["i0"]["tags_from"] == "predicted"


class HandMadeCams:
    """A CAM predictor with fixed maps (the `cams` a SEPLLabeler takes): 3 classes, threshold 0.5."""

    num_classes, threshold = 3, 0.5

    def __init__(self, maps: torch.Tensor) -> None:
        self.maps, self.seen = maps, []

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        self.seen.append(image.shape)
        return self.maps


def test_sepl_reads_tags_through_the_cam_and_weak_labels_win(tmp_path) -> None:
    """Hand-worked on a 40x60 image with two objects, a (rows 5-19, cols 5-29, 375 px) and
    b (rows 22-37, cols 30-57, 448 px); tags [1, 2]; the CAMs (threshold 0.5):

    - class 0 (untagged) is 0.9 everywhere: it never competes;
    - class 1 is 0.8 on a's cols 5-24 (300 px) and on a false region (rows 30-37, cols 0-9, 80 px);
    - class 2 is 0.8 on b's rows 22-29 (224 px).

    SEPL (rule paper, t1 0.5, t2 0.85): a overlaps P1 by 300 px: o_s = 300/375 = 0.8 > t1, kept;
    b overlaps P2 by 224 px: o_s = 224/448 = 0.5 (not > t1) but o_p = 224/224 = 1 > t2, kept. Class 1
    becomes a (the false region, under no kept mask, is dropped), class 2 becomes b, the rest unlabeled.
    """
    from models.labels import build_labeler
    from models.labels.schema import PointLabel, WeakLabels
    from models.labels.sepl import SEPLLabeler, SEPLOptions

    a = np.zeros((40, 60), bool)
    a[5:20, 5:30] = True
    b = np.zeros((40, 60), bool)
    b[22:38, 30:58] = True
    maps = torch.zeros(3, 40, 60)
    maps[0] = 0.9
    maps[1, 5:20, 5:25] = maps[1, 30:38, 0:10] = 0.8
    maps[2, 22:30, 30:58] = 0.8
    cams = HandMadeCams(maps)
    options = SEPLOptions(points_per_side=4, pred_iou_thresh=0.0, stability_thresh=0.0)
    labeler = SEPLLabeler(ObjectClicks([a, b]), options, cams=cams)
    image = np.zeros((40, 60, 3), np.uint8)
    tags_only = WeakLabels(40, 60, tags=[1, 2])

    pseudo = labeler.pseudo_from_tags(image, tags_only)
    expected_pseudo = np.full((40, 60), UNLABELED, np.uint8)
    expected_pseudo[5:20, 5:25] = expected_pseudo[30:38, 0:10] = 1
    expected_pseudo[22:30, 30:58] = 2
    assert np.array_equal(pseudo, expected_pseudo)

    result = labeler.refine(image, tags_only)
    expected = np.full((40, 60), UNLABELED, np.uint8)
    expected[a], expected[b] = 1, 2
    assert np.array_equal(result.labels, expected)
    assert {r["class_id"]: r["score"] for r in result.instances} == {1: 0.8, 2: 0.5}
    assert cams.seen == [(40, 60, 3)] * 2  # the CAM saw the image, once per call

    # with a pixel label, SEPL enhances the weak labels' own map (not the CAM's): the point's class 0
    # keeps a (o_p = 1/1), b has no class under it and stays unlabeled
    point = WeakLabels(40, 60, points=[PointLabel(10, 10, 0)], tags=[1, 2])
    expected = np.full((40, 60), UNLABELED, np.uint8)
    expected[a] = 0
    assert np.array_equal(labeler.refine(image, point).labels, expected)
    assert len(cams.seen) == 2  # no CAM for an image with pixel labels
    with pytest.raises(ValueError, match="out of range for the CAM"):
        labeler.refine(image, WeakLabels(40, 60, tags=[7]))

    # the `cam` option names the checkpoint the CAMs come from
    torch.manual_seed(0)
    save_cam_classifier(tmp_path / "c.pt", CamClassifier("fpn-mobilenetv2", 3, 16), {"cam_threshold": 0.05})
    from_file = build_labeler("sepl", ObjectClicks([a, b]), cam=str(tmp_path / "c.pt")).cams
    assert isinstance(from_file, CamPredictor) and from_file.num_classes == 3 and from_file.threshold == 0.05
