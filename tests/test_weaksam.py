"""WeakSAM's pieces on hand-made inputs: the paper's settings (Algorithm 1's pixel kernel and tau,
Algorithm 2's thresholds), Algorithm 2 (both variants), the RoI-drop rule (both variants) inside a
torchvision Faster R-CNN, OICR / MIST refinement targets, the WSOD head, proposal generation on a
scripted segmenter, the retrained detector's evaluation (AP50, CorLoc) and use as the pseudo
boxes' source, and the device the WSOD head and the detector train on."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from models.labels.weaksam.pgt import adaptive_pgt, containment
from models.labels.weaksam.proposals import (
    ProposalOptions,
    cam_peak_points,
    grid_points,
    kernel_cells,
    weaksam_proposals,
)
from models.students.roi_drop import per_roi_losses, roi_keep, with_roi_drop
from models.students.wsod import WSODHead, detection_scores, refinement_targets, select_seeds, wsod_losses
from tests.scripted import ScriptedSegmenter


# -- the paper's settings (App. H) ---------------------------------------------------------------
def test_defaults_are_the_papers_values() -> None:
    """Algorithm 1: k = 128 image pixels and tau = 0.9 (WeakTr's); Algorithm 2: tau_s = 0.3 and
    tau_o = 0.85 (SoS-WSOD's), in the options and in `adaptive_pgt` itself."""
    import inspect

    from models.config import from_mapping
    from models.labels.weaksam.labeler import WeakSAMOptions

    options = WeakSAMOptions()
    assert (options.peak_kernel_px, options.peak_threshold) == (128, 0.9)
    assert (options.tau_s, options.tau_o) == (0.3, 0.85)
    assert (ProposalOptions().peak_kernel_px, ProposalOptions().peak_threshold) == (128, 0.9)
    defaults = inspect.signature(adaptive_pgt).parameters
    assert (defaults["tau_s"].default, defaults["tau_o"].default) == (0.3, 0.85)
    with pytest.raises(
        ValueError, match="peak_kernel_px now"
    ):  # the old cell-unit setting says where it went
        from_mapping(ProposalOptions, {"peak_kernel": 3})


def test_the_pixel_kernel_becomes_odd_cam_cells() -> None:
    """k / stride rounded to the nearest odd number of cells (ties up), at least 1."""
    assert [kernel_cells(128, s) for s in (1, 8, 16, 32)] == [129, 17, 9, 5]
    assert kernel_cells(100, 16) == 7 and kernel_cells(90, 16) == 5 and kernel_cells(8, 16) == 1
    assert ProposalOptions().peak_kernel_cells == 9  # 128 px at the default stride 16
    assert ProposalOptions(peak_stride=8).peak_kernel_cells == 17
    with pytest.raises(ValueError, match="peak_kernel_px"):
        ProposalOptions(peak_kernel_px=0).validate()
    for bad in ({"nms_iou": 5.0}, {"nms_iou": -0.1}, {"min_area": -1}):  # were accepted
        with pytest.raises(ValueError, match=r"nms_iou .* must lie in \[0, 1\] and min_area be >= 0"):
            ProposalOptions(**bad).validate()


def test_default_peaks_follow_algorithm_1_in_pixels() -> None:
    """Two peaks of one class 56 px apart (within k/2 = 64 px) are one peak; a peak at 0.8 (under
    tau = 0.9) is none. The old defaults (3 cells, tau 0.5) kept all three."""
    cams = torch.zeros(1, 64, 320)
    cams[0, 24:32, 16:24] = 1.0
    cams[0, 24:32, 72:80] = 0.95
    cams[0, 24:32, 240:248] = 0.8
    o = ProposalOptions(peak_stride=8)
    points, _ = cam_peak_points(cams, [0], o.peak_kernel_cells, o.peak_threshold, o.peak_stride)
    assert points.tolist() == [[20.0, 28.0]]
    old, _ = cam_peak_points(cams, [0], 3, 0.5, 8)
    assert len(old) == 3


def test_adaptive_pgt_keeps_a_box_over_the_papers_tau_s() -> None:
    """Normalised scores [1, 0.4, 0]: tau_s = 0.3 keeps the box at 0.4 (0.5 would not)."""
    boxes = np.array([[0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10]], float)
    assert adaptive_pgt(boxes, np.array([0.9, 0.5, 0.1]), np.zeros(3, int), tags=[0]).tolist() == [0, 1]


# -- Algorithm 2 ---------------------------------------------------------------------------------
BOXES = np.array(
    [
        [0, 0, 100, 100],  # 0 class 1, score 0.9: the object
        [10, 10, 50, 50],  # 1 class 1, score 0.8: a part of box 0 (fully inside)
        [200, 0, 260, 60],  # 2 class 1, score 0.6: a second object
        [300, 0, 340, 40],  # 3 class 1, score 0.1: a weak box
        [0, 200, 50, 250],  # 4 class 2, scores low but the class is tagged
        [60, 200, 90, 230],  # 5 class 2
        [500, 500, 510, 510],  # 6 class 3: not tagged
    ],
    float,
)
SCORES = np.array([0.9, 0.8, 0.6, 0.1, 0.05, 0.02, 0.99])
LABELS = np.array([1, 1, 1, 1, 2, 2, 3])


def test_containment_is_the_share_inside() -> None:
    inside = containment(BOXES[:2])
    assert inside[1, 0] == pytest.approx(1.0, abs=1e-6) and inside[0, 1] == pytest.approx(0.16, abs=1e-6)


def test_adaptive_pgt_paper() -> None:
    """Class 1 normalised: [1, 0.875, 0.625, 0] -> > 0.5 keeps 0, 1, 2; box 1 lies inside box 0
    -> dropped. Class 2 normalised: [1, 0] -> keeps box 4 although its raw score is 0.05 (the
    incompleteness the paper fixes). Class 3 is not tagged."""
    assert adaptive_pgt(BOXES, SCORES, LABELS, tags=[1, 2]).tolist() == [0, 2, 4]
    assert adaptive_pgt(BOXES, SCORES, LABELS, tags=[1, 2], tau_s=0.7).tolist() == [0, 4]
    # tau_o above 1 keeps contained boxes
    assert adaptive_pgt(BOXES, SCORES, LABELS, tags=[1], tau_o=1.1).tolist() == [0, 1, 2]


def test_adaptive_pgt_authors_variant() -> None:
    """Authors' code: score / (max - min) without subtracting min. Class 1: [1.125, 1.0, 0.75,
    0.125] -> >= 0.5 keeps 0, 1, 2 (as the paper). Class 2: [1.67, 0.67] -> both kept (the paper
    keeps one), and the top box is kept whatever its score."""
    assert adaptive_pgt(BOXES, SCORES, LABELS, tags=[1, 2], variant="authors").tolist() == [0, 2, 4, 5]
    assert adaptive_pgt(BOXES, SCORES, LABELS, tags=[1], tau_s=5.0, variant="authors").tolist() == [0]
    with pytest.raises(ValueError, match="variant"):
        adaptive_pgt(BOXES, SCORES, LABELS, tags=[1], variant="topk")


# -- RoI drop ------------------------------------------------------------------------------------
def test_roi_drop_rule_both_variants() -> None:
    cls = torch.tensor([1.0, 5.0, 1.0, 5.0])
    reg = torch.tensor([0.5, 0.5, 2.0, 2.0])
    assert roi_keep(cls, reg, 4.0, 1.0, "paper").tolist() == [1, 0, 0, 0]  # both must be under
    assert roi_keep(cls, reg, 4.0, 1.0, "code").tolist() == [1, 1, 1, 0]  # dropped only if both over
    with pytest.raises(ValueError, match="rule"):
        roi_keep(cls, reg, rule="median")


def test_per_roi_losses_average_to_torchvisions() -> None:
    from torchvision.models.detection.roi_heads import fastrcnn_loss

    g = torch.Generator().manual_seed(0)
    logits, deltas = torch.randn(6, 3, generator=g), torch.randn(6, 12, generator=g)
    labels, targets = torch.tensor([0, 1, 2, 1, 0, 2]), torch.randn(6, 4, generator=g)
    cls, reg = per_roi_losses(logits, deltas, labels, targets)
    ref_cls, ref_reg = fastrcnn_loss(logits, deltas, [labels], [targets])
    assert cls.mean().item() == pytest.approx(ref_cls.item(), rel=1e-5)
    assert reg.sum().item() / 6 == pytest.approx(ref_reg.item(), rel=1e-5)
    assert reg[0] == 0 and reg[4] == 0  # background RoIs have no regression loss


def test_faster_rcnn_trains_under_roi_drop() -> None:
    from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_fpn

    torch.manual_seed(0)
    model = fasterrcnn_mobilenet_v3_large_fpn(
        weights=None, weights_backbone=None, num_classes=3, min_size=128, max_size=128
    )
    model = with_roi_drop(model, tau_cls=4.0, tau_reg=1.0, rule="paper")
    images = [torch.rand(3, 128, 128)]
    targets = [{"boxes": torch.tensor([[20.0, 20.0, 90.0, 100.0]]), "labels": torch.tensor([1])}]
    model.train()
    losses = model(images, targets)
    assert {"loss_classifier", "loss_box_reg"} <= set(losses) and losses["loss_classifier"] > 0
    sum(losses.values()).backward()
    assert 0 < model.roi_heads.last_kept_fraction <= 1
    model.roi_heads.tau_cls = 0.0  # every RoI's classification loss is above 0: all dropped
    dropped = model(images, targets)
    assert dropped["loss_classifier"] == 0 and model.roi_heads.last_kept_fraction == 0
    model.eval()
    with torch.no_grad():
        assert "boxes" in model(images)[0]


# -- OICR / MIST ---------------------------------------------------------------------------------
PROPOSALS = torch.tensor(
    [[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30], [0, 0, 5, 5], [21, 21, 30, 30]], dtype=torch.float
)


def test_oicr_refinement_targets_by_hand() -> None:
    """Class 0's top proposal is 0, class 1's is 2. Proposal 1 overlaps 0 with IoU 0.81 -> class 0
    with weight 0.7; proposal 3 overlaps 0 with IoU 0.25 -> background (label 2), weight 0.7;
    proposal 4 overlaps 2 with IoU 0.81 -> class 1, weight 0.6."""
    scores = torch.tensor([[0.7, 0.0], [0.2, 0.0], [0.0, 0.6], [0.1, 0.1], [0.0, 0.3]])
    labels, weights = refinement_targets(PROPOSALS, scores, tags=[0, 1])
    assert labels.tolist() == [0, 0, 1, 2, 1]
    assert torch.allclose(weights, torch.tensor([0.7, 0.7, 0.6, 0.7, 0.6]))
    only0, _ = refinement_targets(PROPOSALS, scores, tags=[0])  # untagged classes seed nothing
    assert only0.tolist() == [0, 0, 2, 2, 2]


def test_mist_seeds_take_the_top_fraction_without_overlap() -> None:
    scores = torch.tensor([0.9, 0.85, 0.8, 0.1, 0.7])
    assert select_seeds(PROPOSALS, scores, "oicr").tolist() == [0]
    # top 60 % = 0, 1, 2; 1 overlaps 0 (IoU 0.81 >= 0.2) -> skipped
    assert select_seeds(PROPOSALS, scores, "mist", top_fraction=0.6).tolist() == [0, 2]
    labels, _ = refinement_targets(
        PROPOSALS, torch.stack([scores, torch.zeros(5)], 1), [0], rule="mist", top_fraction=0.6
    )
    assert labels.tolist() == [0, 0, 0, 2, 0]


def test_wsod_head_learns_on_one_image() -> None:
    torch.manual_seed(0)
    head = WSODHead("fpn-mobilenetv2", num_classes=2, refinements=2, hidden=32)
    images = torch.randn(1, 3, 64, 64)
    boxes = PROPOSALS * 2
    opt = torch.optim.SGD(head.parameters(), lr=0.05)
    first = None
    for _ in range(3):
        terms = wsod_losses(head(images, [boxes])[0], boxes, tags=[1], num_classes=2)
        first = first if first is not None else float(terms["total"].detach())
        opt.zero_grad()
        terms["total"].backward()
        opt.step()
    assert float(terms["total"].detach()) < first
    scores = detection_scores(head(images, [boxes])[0])
    assert scores.shape == (5, 2) and float(scores.min()) >= 0


# -- proposals -----------------------------------------------------------------------------------
def _objects() -> list[np.ndarray]:
    a = np.zeros((64, 96), bool)
    a[8:30, 10:40] = True
    b = np.zeros((64, 96), bool)
    b[36:60, 50:90] = True
    return [a, b]


def test_grid_points_are_cell_centres() -> None:
    pts = grid_points((20, 40), 2)
    assert pts.tolist() == [[10.0, 5.0], [30.0, 5.0], [10.0, 15.0], [30.0, 15.0]]


def test_proposals_from_the_grid_are_deduplicated() -> None:
    objects = _objects()
    engine = ScriptedSegmenter(objects)
    handle = engine.embed([np.zeros((64, 96, 3), np.uint8)])[0]
    props = weaksam_proposals(engine, handle, options=ProposalOptions(points_per_side=4, peak_stride=1))
    # 16 prompts x 3 candidates collapse to each object's part, whole and grown box: 6
    assert len(props) == 6 and set(props.sources) == {"grid"}
    assert any(np.allclose(b, [10, 8, 40, 30]) for b in props.boxes)  # object a's own box
    assert any(np.allclose(b, [50, 36, 90, 60]) for b in props.boxes)
    best = weaksam_proposals(engine, handle, options=ProposalOptions(points_per_side=4, candidates="best"))
    assert len(best) == 2  # only the top-scored candidate (the part) of each object


def test_proposals_from_cam_peaks() -> None:
    objects = _objects()
    engine = ScriptedSegmenter(objects)
    handle = engine.embed([np.zeros((64, 96, 3), np.uint8)])[0]
    cams = torch.zeros(3, 64, 96)
    cams[2, 40:56, 56:80] = 1.0  # class 2 fires on object b (whole 8 x 8 cells: 1.0 after pooling)
    cams[0, 10:12, 12:14] = 0.3  # class 0 fires weakly (below tau): no peak
    points, owners = cam_peak_points(cams, tags=[0, 2], kernel=3, threshold=0.5, stride=8)
    assert owners and set(owners) == {2} and all(objects[1][int(y), int(x)] for x, y in points)
    props = weaksam_proposals(
        engine, handle, cams, tags=[0, 2], options=ProposalOptions(points_per_side=0, peak_stride=8)
    )
    assert len(props) == 3 and set(props.sources) == {"peak:2"}
    assert any(np.allclose(b, [50, 36, 90, 60]) for b in props.boxes)


def test_weaksam_proposals_refuses_an_output_it_cannot_make_before_any_image(
    tmp_path, monkeypatch, capsys
) -> None:
    """An --out that cannot be a folder (under a file) is one line naming it, exit 2, before the
    first image's proposals are computed (before: after them, at the first write)."""
    import training.weaksam
    from models.io import save_png
    from models.labels.schema import WeakLabels, save_weak_labels
    from sesam.cli import main

    images, weak = tmp_path / "images", tmp_path / "weak"
    save_png(np.zeros((32, 32, 3), np.uint8), images / "im0.png")
    save_weak_labels(WeakLabels(32, 32, tags=[1]), weak, "im0")
    (tmp_path / "taken").write_text("a file")
    calls: list[int] = []
    monkeypatch.setattr(training.weaksam, "weaksam_proposals", lambda *a, **k: calls.append(1))
    out = tmp_path / "taken" / "proposals"
    args = ["weaksam", "proposals", "--images", str(images), "--weak", str(weak), "--out", str(out)]
    assert main([*args, "--cam", "none", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert calls == [] and "\n" not in err and str(tmp_path / "taken") in err


def test_weaksam_outputs_of_another_run_are_refused_and_a_missing_weak_folder_is_one_line(
    tmp_path, capsys
) -> None:
    """`weaksam proposals` into a folder made with other options is refused, naming them (before:
    every image was skipped as done and the summary named options that never ran); `weaksam
    instances` with no --weak folder is one line before any image (before: a failure per image and
    an empty dataset written)."""
    from models.io import save_png
    from models.labels.schema import WeakLabels, save_weak_labels
    from sesam.cli import main

    images, weak, out = tmp_path / "images", tmp_path / "weak", tmp_path / "proposals"
    rng = np.random.default_rng(0)
    save_png(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8), images / "im0.png")
    save_weak_labels(WeakLabels(48, 64, tags=[1]), weak, "im0")
    args = ["weaksam", "proposals", "--images", str(images), "--weak", str(weak), "--out", str(out)]
    args += ["--cam", "none", "--quiet", "--set", "peak_threshold=0.9"]
    assert main([*args, "--set", "points_per_side=2"]) == 0
    assert main([*args, "--set", "points_per_side=2"]) == 0  # the same run resumes
    capsys.readouterr()
    assert main([*args, "--set", "points_per_side=3"]) == 2
    err = capsys.readouterr().err
    assert "holds the outputs of another run" in err and "options" in err and "empty it first" in err
    instances = ["weaksam", "instances", "--images", str(images), "--weak", str(tmp_path / "none")]
    assert main([*instances, "--out", str(tmp_path / "coco"), "--class-names", "a,b", "--quiet"]) == 2
    assert "--weak" in capsys.readouterr().err and not (tmp_path / "coco").exists()


# -- the pipeline: proposals -> WSOD head -> pseudo instances (COCO) ------------------------------
def test_weaksam_pipeline_end_to_end(tmp_path, capsys) -> None:
    """Two tagged images through `sesam weaksam proposals / train-wsod / instances` on the classical
    prior; the COCO file loads as a training dataset; train-wsod resumes."""
    from models.io import save_png
    from models.labels.schema import WeakLabels, save_weak_labels
    from models.students.cam import CamClassifier, save_cam_classifier
    from sesam.cli import main
    from training.datasets import CocoInstances

    images, weak = tmp_path / "images", tmp_path / "weak"
    rng = np.random.default_rng(0)
    for i in range(2):
        img = rng.normal(90, 10, (64, 96, 3)).clip(0, 255).astype(np.uint8)
        img[10 + i * 5 : 40, 10:50] = (220, 40, 40)
        save_png(img, images / f"im{i}.png")
        save_weak_labels(WeakLabels(64, 96, tags=[1, 2]), weak, f"im{i}")
    torch.manual_seed(0)
    cam = tmp_path / "cam.pt"
    save_cam_classifier(cam, CamClassifier("fpn-mobilenetv2", 3, 16), {"class_names": ["a", "b", "c"]})
    common = ["--images", str(images), "--quiet"]
    props = tmp_path / "proposals"
    args = ["weaksam", "proposals", *common, "--weak", str(weak), "--out", str(props), "--cam", str(cam)]
    assert main([*args, "--set", "points_per_side=3", "--set", "peak_threshold=0.9"]) == 0
    record = json.loads((props / "im0.json").read_text())
    assert record["tags"] == [1, 2] and len(record["boxes"]) == len(record["scores"]) > 0
    wsod = tmp_path / "wsod"
    train = [
        "weaksam",
        "train-wsod",
        *common,
        "--proposals",
        str(props),
        "--out",
        str(wsod),
        "--num-classes",
        "3",
    ]
    small = ["--set", "hidden=32", "--set", "refinements=2", "--set", "checkpoint_every=2"]
    assert main([*train, *small, "--set", "iterations=2"]) == 0
    assert main([*train, *small, "--set", "iterations=3"]) == 0  # continues from last.pt
    assert json.loads((wsod / "summary.json").read_text())["resumed_at"] == 2
    assert main([*train, "--set", "hidden=64", "--set", "iterations=4"]) == 2
    assert "other settings (hidden: 32 -> 64; refinements: 2 -> 3)" in capsys.readouterr().err
    pseudo = tmp_path / "pseudo"
    inst = ["weaksam", "instances", *common, "--weak", str(weak), "--out", str(pseudo), "--cam", str(cam)]
    assert main([*inst, "--wsod", str(wsod / "wsod.pt"), "--set", "points_per_side=3"]) == 0
    coco = json.loads((pseudo / "annotations" / "instances_pseudo.json").read_text())
    assert [c["name"] for c in coco["categories"]] == ["a", "b", "c"] and len(coco["images"]) == 2
    assert coco["annotations"] and {a["category_id"] for a in coco["annotations"]} <= {2, 3}  # tags 1, 2
    samples = CocoInstances(pseudo, "pseudo").samples()
    assert len(samples) == 2 and all(s.image.exists() for s in samples)
    assert sum(len(s.masks) for s in samples) == len(coco["annotations"])
    # WeakSAM's retraining: a Faster R-CNN on the pseudo boxes under RoI drop, resumable
    det = ["weaksam", "retrain", "--coco-root", str(pseudo), "--out", str(tmp_path / "det"), "--quiet"]
    size = [
        "--set",
        "min_size=64",
        "--set",
        "max_size=96",
        "--set",
        "batch_size=1",
        "--set",
        "checkpoint_every=1",
    ]
    assert main([*det, *size, "--set", "iterations=1"]) == 0
    assert main([*det, *size, "--set", "iterations=2"]) == 0
    retrained = json.loads((tmp_path / "det" / "summary.json").read_text())
    assert retrained["resumed_at"] == 1 and 0 <= retrained["mean_rois_kept"] <= 1
    assert (tmp_path / "det" / "detector.pt").exists()
    # a supervised-instance student trains on the pseudo instances as on any COCO dataset
    from training.trainer import InstanceTrainConfig, build_trainer

    cfg = InstanceTrainConfig.from_mapping(
        {
            "mode": "supervised-instance",
            "dataset": "coco",
            "data_root": str(pseudo),
            "train_split": "pseudo",
            "val_split": "pseudo",
            "input_side": 64,
            "batch_size": 2,
            "iterations": 1,
            "match_points": 64,
            "loss_points": 32,
            "out_dir": str(tmp_path / "student"),
            "quiet": True,
        }
    )
    summary = build_trainer(cfg).train()
    assert summary["iterations"] == 1 and (tmp_path / "student" / "student.pt").exists()


class _ScriptedCam(torch.nn.Module):
    """A 'CAM classifier' whose maps are given: class c fires on `regions[c]` (for labeler tests)."""

    def __init__(self, regions: list[np.ndarray]) -> None:
        super().__init__()
        self.maps = torch.from_numpy(np.stack(regions).astype(np.float32))
        self.num_classes = len(regions)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = torch.nn.functional.interpolate(self.maps[None], size=x.shape[-2:], mode="nearest")
        return maps.expand(len(x), -1, -1, -1)


def test_weaksam_labeler_turns_tags_into_instances() -> None:
    """Class 1 fires on object a, class 2 on object b: the PGT boxes prompt SAM and every object
    comes out as its class's instance; an untagged class is never painted."""
    from models.labels.schema import WeakLabels
    from models.labels.weaksam.labeler import WeakSAMLabeler, WeakSAMOptions
    from models.students.cam import CamPredictor

    a, b = _objects()
    engine = ScriptedSegmenter([a, b])
    cams = CamPredictor(_ScriptedCam([np.zeros_like(a), a, b]), threshold=0.1)
    labeler = WeakSAMLabeler(engine, WeakSAMOptions(points_per_side=4, peak_stride=8), cams=cams)
    image = np.zeros((64, 96, 3), np.uint8)
    result = labeler.refine(image, WeakLabels(64, 96, tags=[1, 2]))
    assert result.extra["proposals"] >= 6 and result.extra["pseudo_boxes"] == len(result.instances) >= 2
    assert (result.labels[a] == 1).all() and (result.labels[b] == 2).all()
    assert (result.labels[~(a | b)] == 255).all()
    only_b = labeler.refine(image, WeakLabels(64, 96, tags=[2]))
    assert set(np.unique(only_b.labels)) == {2, 255} and (only_b.labels[b] == 2).all()


# -- the retrained detector: evaluation and use ---------------------------------------------------
def _truth_by_hand():
    """Two images: image 1 has a class-1 box A and a class-2 box B, image 2 a class-1 box C."""
    from training.weaksam_eval import BoxTruth

    def ann(n, image_id, cat, box):
        x0, y0, x1, y1 = box
        return {
            "id": n,
            "image_id": image_id,
            "category_id": cat,
            "bbox": [x0, y0, x1 - x0, y1 - y0],
            "area": (x1 - x0) * (y1 - y0),
            "iscrowd": 0,
        }

    coco = {
        "images": [{"id": i, "file_name": f"{i}.png", "height": 100, "width": 100} for i in (1, 2)],
        "annotations": [
            ann(1, 1, 1, (0, 0, 40, 40)),
            ann(2, 1, 2, (50, 50, 90, 90)),
            ann(3, 2, 1, (10, 10, 60, 60)),
        ],
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
    }
    return BoxTruth("hand", "val", coco, {1: None, 2: None})


def test_ap50_and_corloc_by_hand() -> None:
    """Class 1: image 1's top box hits A (0.9), image 2's top box misses C (0.7) and its second hits
    (0.6): CorLoc 1/2; AP50 from TP, FP, TP over 2 boxes = (51 x 1 + 50 x 2/3) / 101 (COCO's 101
    recall points). Class 2: the top box misses B (0.8), a weaker one hits (0.3): CorLoc 0, AP50 1/2."""
    from training.weaksam_eval import evaluate_detections

    far = [95, 95, 99, 99]
    detections = {
        1: (
            np.array([[0, 0, 40, 40], far, [50, 50, 90, 90]], float),
            np.array([0.9, 0.8, 0.3]),
            np.array([1, 2, 2]),
        ),
        2: (np.array([far, [10, 10, 60, 60]], float), np.array([0.7, 0.6]), np.array([1, 1])),
    }
    report = evaluate_detections(_truth_by_hand(), detections)
    cat = (51 + 50 * 2 / 3) / 101
    assert report["per_class"]["cat"]["CorLoc"] == 0.5 and report["per_class"]["dog"]["CorLoc"] == 0.0
    assert report["CorLoc"] == 0.25 and report["per_class"]["cat"]["images"] == 2
    assert report["per_class"]["cat"]["AP50"] == pytest.approx(cat, abs=1e-6)
    assert report["per_class"]["dog"]["AP50"] == pytest.approx(0.5, abs=1e-6)
    assert report["AP50"] == pytest.approx((cat + 0.5) / 2, abs=1e-6)
    assert report["detections"] == 5 and report["ground_truth_boxes"] == 3
    cats_only = evaluate_detections(_truth_by_hand(), detections, categories=[1])  # a detector of cats
    assert set(cats_only["per_class"]) == {"cat"} and cats_only["ground_truth_boxes"] == 2
    assert cats_only["AP50"] == pytest.approx(cat, abs=1e-6) and cats_only["CorLoc"] == 0.5
    nothing = evaluate_detections(_truth_by_hand(), {})
    assert nothing["AP50"] == 0.0 and nothing["CorLoc"] == 0.0


def test_pennfudan_annotation_boxes_and_class_map(tmp_path) -> None:
    from training.weaksam_eval import class_map, pennfudan_annotation

    text = (
        "Image size (X x Y x C) : 559 x 536 x 3\n"
        'Bounding box for object 1 "PASpersonWalking" (Xmin, Ymin) - (Xmax, Ymax) : (160, 182) - (302, 431)\n'
        'Bounding box for object 2 "PASpersonWalking" (Xmin, Ymin) - (Xmax, Ymax) : (420, 171) - (535, 486)\n'
    )
    (tmp_path / "a.txt").write_text(text)
    size, boxes = pennfudan_annotation(tmp_path / "a.txt")
    assert size == (536, 559) and boxes == [[159, 181, 302, 431], [419, 170, 535, 486]]
    # by name: a CamVid-named detector's pedestrian (category 10 = class 9) is Penn-Fudan's category 1
    camvid = [{"id": 9, "name": "car"}, {"id": 10, "name": "pedestrian"}]
    assert class_map(camvid, 11, {1: "pedestrian"}) == {9: 1}
    assert class_map(camvid, 11, {1: "person", 3: "Car"}) == {8: 3}  # names only, case-insensitive
    assert class_map([], 2, {1: "a", 2: "b", 5: "c"}) == {0: 1, 1: 2}  # no names: by id


@pytest.fixture(scope="module")
def tiny_detector(tmp_path_factory):
    """A random 2-class detector checkpoint (categories a, b) and a 2-image COCO split with boxes."""
    from models.io import save_png
    from models.students.detector import faster_rcnn, save_detector

    root = tmp_path_factory.mktemp("tiny_detector")
    torch.manual_seed(0)
    model = faster_rcnn(2, min_size=64, max_size=96)
    settings = {"min_size": 64, "max_size": 96, "iterations": 0}
    save_detector(root / "detector.pt", model, 2, settings, [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}])
    rng = np.random.default_rng(0)
    images, anns = [], []
    for i in (1, 2):
        save_png(rng.integers(0, 255, (64, 96, 3), dtype=np.uint8), root / "coco" / "val" / f"im{i}.png")
        images.append({"id": i, "file_name": f"im{i}.png", "height": 64, "width": 96})
        anns.append(
            {"id": i, "image_id": i, "category_id": 2, "bbox": [10, 10, 40, 30], "area": 1200, "iscrowd": 0}
        )
    coco = {
        "images": images,
        "annotations": anns,
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
    }
    (root / "coco" / "annotations").mkdir(parents=True)
    (root / "coco" / "annotations" / "instances_val.json").write_text(json.dumps(coco))
    return root


def test_weaksam_eval_cli_writes_the_table_and_json(tiny_detector, capsys) -> None:
    from sesam.cli import main

    out = tiny_detector / "eval.json"
    args = [
        "weaksam",
        "eval",
        "--detector",
        str(tiny_detector / "detector.pt"),
        "--data",
        str(tiny_detector / "coco"),
    ]
    assert main([*args, "--split", "val", "--out", str(out), "--device", "cpu", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "| AP50 | CorLoc |" in printed and str(out) in printed
    report = json.loads(out.read_text())
    assert report["images"] == 2 and report["ground_truth_boxes"] == 2 and report["device"] == "cpu"
    assert 0 <= report["AP50"] <= 1 and 0 <= report["CorLoc"] <= 1
    assert report["class_map"] == {"a": "a", "b": "b"} and report["detections"] > 0
    assert main([*args, "--split", "val", "--device", "tpu"]) == 2


def test_weaksam_labeler_takes_the_retrained_detectors_boxes(tiny_detector) -> None:
    """scorer detector: the detector's boxes of the tagged classes -> Algorithm 2 -> SAM box prompts;
    no CAM is read (the labeler has none); tags beyond the detector's classes are refused."""
    from models.labels.schema import WeakLabels
    from models.labels.weaksam.labeler import WeakSAMLabeler, WeakSAMOptions
    from models.students.detector import detect, load_detector

    a, b = _objects()
    engine = ScriptedSegmenter([a, b])
    image = np.random.default_rng(1).integers(0, 255, (64, 96, 3), dtype=np.uint8)
    options = WeakSAMOptions(scorer="detector", detector=str(tiny_detector / "detector.pt"))
    labeler = WeakSAMLabeler(engine, options, cams=None)
    result = labeler.refine(image, WeakLabels(64, 96, tags=[1]))
    model = load_detector(tiny_detector / "detector.pt")[0]
    boxes, scores, labels = detect(model, image, [1])
    assert set(labels.tolist()) == {1} and set(detect(model, image)[2].tolist()) == {0, 1}
    expected = adaptive_pgt(boxes, scores, labels, tags=[1])
    assert result.extra["proposals"] == result.extra["detections"] == len(boxes)
    assert len(result.instances) == len(expected) > 0
    assert {i["class_id"] for i in result.instances} == {1}
    assert [i["box"] for i in result.instances] == [[round(float(v), 1) for v in boxes[k]] for k in expected]
    assert labeler._cams is None  # the CAM was never loaded
    with pytest.raises(ValueError, match="detector's 2 classes"):
        labeler.refine(image, WeakLabels(64, 96, tags=[2]))
    with pytest.raises(ValueError, match="scorer detector needs"):
        WeakSAMOptions(scorer="detector").validate()


# -- the device the WSOD head and the detector train on ------------------------------------------
def _tensors(value):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _tensors(v)


def _weaksam_folders(root, n: int = 2) -> tuple:
    """`n` random 64x96 images with three proposals each (tag 1) and one COCO box each (category
    2 of a, b): (images, proposals, coco root with split `pseudo`)."""
    from models.io import save_png

    rng = np.random.default_rng(0)
    images, props, coco = root / "images", root / "props", root / "coco"
    props.mkdir(parents=True)
    entries, anns = [], []
    for i in range(n):
        img = rng.integers(0, 255, (64, 96, 3), dtype=np.uint8)
        save_png(img, images / f"im{i}.png")
        save_png(img, coco / "pseudo" / f"im{i}.png")
        boxes = [[5, 5, 40, 30], [30, 20, 90, 60], [0, 0, 96, 64]]
        record_ = {"tags": [1], "boxes": boxes, "scores": [1.0] * 3, "sources": ["grid"] * 3}
        (props / f"im{i}.json").write_text(json.dumps(record_))
        entries.append({"id": i + 1, "file_name": f"im{i}.png", "height": 64, "width": 96})
        anns.append(
            {"id": i + 1, "image_id": i + 1, "category_id": 2, "bbox": [10, 10, 30, 40], "area": 1200}
        )
    (coco / "annotations").mkdir(parents=True)
    categories = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
    data = {"images": entries, "annotations": anns, "categories": categories}
    (coco / "annotations" / "instances_pseudo.json").write_text(json.dumps(data))
    return images, props, coco


def _train_on(device: str, root, monkeypatch) -> dict[str, set]:
    """Two steps of the WSOD head and of the detector, then an evaluation, on `device`; returns the
    devices seen on every parameter and every forward output."""
    import models.students.detector as detector_module
    import training.recipes.detector as detector_recipe
    import training.recipes.wsod as wsod_recipe
    import training.weaksam as weaksam
    from models.config import from_mapping
    from training.weaksam_eval import coco_truth, evaluate_detector

    seen: dict[str, set] = {"params": set(), "outputs": set()}

    def record(module, args, output) -> None:
        seen["params"] |= {p.device.type for p in module.parameters()}
        seen["outputs"] |= {t.device.type for t in _tensors(output)}

    def hooked(build):
        def wrapper(*args, **kwargs):
            model = build(*args, **kwargs)
            model.register_forward_hook(record)
            return model

        return wrapper

    monkeypatch.setattr(wsod_recipe, "WSODHead", hooked(wsod_recipe.WSODHead))
    monkeypatch.setattr(detector_recipe, "build_detector", hooked(detector_recipe.build_detector))
    monkeypatch.setattr(detector_module, "faster_rcnn", hooked(detector_module.faster_rcnn))
    images, props, coco = _weaksam_folders(root)
    small = {"hidden": 32, "refinements": 1, "iterations": 2, "device": device}
    summary = weaksam.train_wsod(
        from_mapping(weaksam.WSODConfig, small), images, props, root / "wsod", 2, True
    )
    assert summary["device"].startswith(device)
    sizes = {"min_size": 64, "max_size": 96, "iterations": 2, "device": device}
    cfg = from_mapping(weaksam.DetectorConfig, sizes)
    assert weaksam.retrain_detector(cfg, coco, "pseudo", root / "det", True)["device"].startswith(device)
    report = evaluate_detector(root / "det" / "detector.pt", coco_truth(coco, "pseudo"), device)
    assert report["device"].startswith(device) and report["images"] == 2
    return seen


def test_wsod_head_and_detector_stay_on_the_cpu(tmp_path, monkeypatch) -> None:
    seen = _train_on("cpu", tmp_path, monkeypatch)
    assert seen == {"params": {"cpu"}, "outputs": {"cpu"}}
    from training.weaksam import DetectorConfig, WSODConfig, retrain_detector

    # a rerun with no step left keeps the measured summary (it wrote nulls over it before)
    first = json.loads((tmp_path / "det" / "summary.json").read_text())
    cfg = DetectorConfig(min_size=64, max_size=96, iterations=2, device="cpu")
    again = retrain_detector(cfg, tmp_path / "coco", "pseudo", tmp_path / "det", True)
    assert again["resumed_at"] == 2 and again["final_loss"] == first["final_loss"] is not None

    for cls in (WSODConfig, DetectorConfig):
        assert cls().device == "auto"
        with pytest.raises(ValueError, match="device 'tpu' unknown"):
            cls(device="tpu").validate()


def test_wsod_head_and_detector_resume_equals_uninterrupted(tmp_path) -> None:
    """Stopped after 2 of 4 steps and resumed from last.pt (a "train_state" checkpoint of the shared
    loop), the WSOD head and the detector end with the weights of a straight run."""
    from models.io import load_checkpoint
    from training.weaksam import DetectorConfig, WSODConfig, retrain_detector, train_wsod

    images, props, coco = _weaksam_folders(tmp_path, 3)  # batches of 2 of 3 images, 2 of 3 proposals
    wsod = {"hidden": 32, "refinements": 1, "max_proposals": 2, "checkpoint_every": 2, "device": "cpu"}
    det = {"min_size": 64, "max_size": 96, "checkpoint_every": 2, "device": "cpu"}
    runs = {
        "wsod": lambda out, n: train_wsod(WSODConfig(**wsod, iterations=n), images, props, out, 2, True),
        "detector": lambda out, n: retrain_detector(
            DetectorConfig(**det, iterations=n), coco, "pseudo", out, True
        ),
    }
    for name, run in runs.items():
        straight = run(tmp_path / name / "straight", 4)
        first = run(tmp_path / name / "stopped", 2)
        state = load_checkpoint(tmp_path / name / "stopped" / "last.pt", "train_state")
        assert state.metadata["iteration"] == 1 and set(state.weights) == {"model", "optimizer"}
        assert state.config == first["settings"]
        resumed = run(tmp_path / name / "stopped", 4)
        assert resumed["resumed_at"] == 2 and first["weights_sha256"] != straight["weights_sha256"]
        assert resumed["weights_sha256"] == straight["weights_sha256"], name


@pytest.mark.gpu
def test_wsod_head_and_detector_train_on_cuda(tmp_path, monkeypatch) -> None:
    seen = _train_on("cuda", tmp_path, monkeypatch)
    assert seen == {"params": {"cuda"}, "outputs": {"cuda"}}


def test_instances_with_a_bad_pseudo_box_source_stop_before_any_image(tmp_path, capsys) -> None:
    """`weaksam instances --wsod` naming no checkpoint is one error (exit 2) before any image is
    processed, and leaves no empty dataset behind (it used to fail every image, write a dataset of
    none, and say why only on stdout)."""
    from sesam.cli import main

    (tmp_path / "images").mkdir()
    (tmp_path / "weak").mkdir()
    out = tmp_path / "out"
    argv = ["weaksam", "instances", "--images", str(tmp_path / "images"), "--weak", str(tmp_path / "weak")]
    assert main([*argv, "--out", str(out), "--wsod", str(tmp_path / "nope.pt")]) == 2
    assert "nope.pt: no such WSOD checkpoint" in capsys.readouterr().err
    assert not out.exists()
