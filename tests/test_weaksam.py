"""WeakSAM's pieces on hand-made inputs: Algorithm 2 (both variants), the RoI-drop rule (both
variants) inside a torchvision Faster R-CNN, OICR / MIST refinement targets, the WSOD head, and
proposal generation on a scripted segmenter."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from models.weaksam.pgt import adaptive_pgt, containment
from models.weaksam.proposals import ProposalOptions, cam_peak_points, grid_points, weaksam_proposals
from models.weaksam.roi_drop import per_roi_losses, roi_keep, with_roi_drop
from models.weaksam.wsod import WSODHead, detection_scores, refinement_targets, select_seeds, wsod_losses
from tests.scripted import ScriptedSegmenter

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
    cams[2, 44:52, 60:80] = 1.0  # class 2 fires on object b
    cams[0, 10:12, 12:14] = 0.3  # class 0 fires weakly (below tau): no peak
    points, owners = cam_peak_points(cams, tags=[0, 2], kernel=3, threshold=0.5, stride=8)
    assert owners and set(owners) == {2} and all(objects[1][int(y), int(x)] for x, y in points)
    props = weaksam_proposals(
        engine, handle, cams, tags=[0, 2], options=ProposalOptions(points_per_side=0, peak_stride=8)
    )
    assert len(props) == 3 and set(props.sources) == {"peak:2"}
    assert any(np.allclose(b, [50, 36, 90, 60]) for b in props.boxes)


# -- the pipeline: proposals -> WSOD head -> pseudo instances (COCO) ------------------------------
def test_weaksam_pipeline_end_to_end(tmp_path, capsys) -> None:
    """Two tagged images through `sesam weaksam proposals / train-wsod / instances` on the classical
    prior; the COCO file loads as a training dataset; train-wsod resumes."""
    from models.cam import CamClassifier, save_cam_classifier
    from models.io import save_png
    from models.weak import WeakLabels, save_weak_labels
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
    assert "other settings (refinements, hidden)" in capsys.readouterr().err
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
    from models.cam import CamPredictor
    from models.refine.weaksam import WeakSAMLabeler, WeakSAMOptions
    from models.weak import WeakLabels

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
