"""WISH (paper 002): matching, losses, tags -> points, budget protocol, instance data, and short runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from models.engine.prompt_latents import PromptLatents
from models.labels.wish_tags import TagPointOptions, merge_peaks, tags_to_points
from models.students.instance import (
    InstanceSegmenter,
    build_instance_student,
    instance_student_registry,
    instances_from_outputs,
)
from tests.conftest import require_data
from tests.scripted import ObjectClicks
from training.budget import (
    COSTS,
    assign_label_kinds,
    budget_cost,
    derive_instance_labels,
    homogeneous_counts,
)
from training.coco import coco_dataset, coco_results, load_coco, samples_from_coco, write_coco
from training.datasets import CocoInstances, InstanceFolder, InstanceSample, write_instance_folder
from training.metrics import coco_mask_ap
from training.trainer import InstanceTrainConfig, InstanceTrainer, config_from_yaml
from training.wish import (
    Targets,
    class_masks,
    cost_matrix,
    hungarian,
    match,
    prompt_kld,
    self_loss,
)


# -- matching and losses -----------------------------------------------------------------------
def test_hungarian_on_a_hand_made_cost() -> None:
    """The minimum-cost assignment is not the greedy one: greedy takes (0, 0) = 1 and then pays 9."""
    cost = torch.tensor([[1.0, 2.0, 8.0], [2.0, 9.0, 9.0], [7.0, 3.0, 1.0], [9.0, 9.0, 9.0]])
    rows, cols = hungarian(cost)
    assert dict(zip(rows.tolist(), cols.tolist())) == {0: 1, 1: 0, 2: 2}
    assert float(cost[rows, cols].sum()) == 5.0


def _square(size: int, y0: int, x0: int, side: int) -> torch.Tensor:
    m = torch.zeros(size, size, dtype=torch.bool)
    m[y0 : y0 + side, x0 : x0 + side] = True
    return m


def test_min_over_sam_candidates_picks_the_closest_one() -> None:
    """Eq. 13: each query is matched against its closest SAM candidate, whichever level it is."""
    size = 32
    part, whole, huge = _square(size, 4, 4, 6), _square(size, 4, 4, 12), _square(size, 0, 0, 28)
    targets = Targets(torch.tensor([0]), None, torch.stack([part, whole, huge])[None])
    # query 0 predicts the whole object, query 1 the large mask, query 2 the part
    logits = torch.stack([(m.float() * 2 - 1) * 10 for m in (whole, huge, part)])
    classes = torch.zeros(3, 2)
    points = torch.rand(4096, 2, generator=torch.Generator().manual_seed(0))
    cost, chosen = cost_matrix(classes, logits, None, targets, points)
    assert chosen[:, 0].tolist() == [1, 2, 0]
    fixed, level = cost_matrix(classes, logits, None, targets, points, level=0)
    assert (level == 0).all() and fixed[0, 0] > cost[0, 0]  # the whole-object query pays at level 1
    m = match(classes, logits, None, targets, points)
    # whichever query the one target goes to, it is matched at the level that query predicts
    assert len(m.queries) == 1 and m.candidates.tolist() == [{0: 1, 1: 2, 2: 0}[int(m.queries[0])]]


def test_prompt_kld_on_hand_made_latents() -> None:
    """KL(softmax(Z) || softmax(Z_hat)) per token, summed over the 2 tokens of 256."""
    z = torch.zeros(1, 512)
    z[0, 0] = np.log(3.0)  # token 1: p = (3, 1, 1, ...)/258
    same = prompt_kld(z, z)
    assert same.shape == (1, 1) and abs(float(same)) < 1e-6
    uniform = torch.zeros(1, 512)
    p = torch.full((256,), 1 / 258.0)
    p[0] = 3 / 258.0
    expected = float((p * (p * 256).log()).sum())  # KL(p || uniform) on token 1, token 2 is uniform
    assert float(prompt_kld(uniform, z)) == pytest.approx(expected, rel=1e-3)
    assert float(prompt_kld(z, uniform)) != pytest.approx(expected, rel=1e-3)  # not symmetric
    # the cheapest query for a target is the one predicting it
    costs = prompt_kld(torch.stack([uniform[0], z[0]]), z)
    assert costs.argmin().item() == 1


def test_self_loss_on_a_hand_made_case() -> None:
    """M_hat_c is the OR of the masks of queries whose top class is c; the CAM learns it."""
    size = 8
    left, right = torch.zeros(size, size), torch.zeros(size, size)
    left[:, :3], right[:, 5:] = 1, 1
    masks = torch.stack([left, right, torch.ones(size, size)])[None] * 20 - 10  # 1x3xHxW logits
    classes = torch.tensor([[[5.0, 0.0, 0.0], [5.0, 0.0, 0.0], [0.0, 0.0, 5.0]]])  # q2: no object
    merged = class_masks(classes, masks, 2)
    assert torch.equal(merged[0, 0], ((left + right) > 0).float()) and merged[0, 1].sum() == 0
    agreeing = torch.stack([merged[0, 0] * 40 - 20, torch.full((size, size), -20.0)])[None]
    assert float(self_loss(agreeing, classes, masks)) < 1e-6
    assert float(self_loss(-agreeing, classes, masks)) > 5


# -- tags -> points ----------------------------------------------------------------------------
class PeakSegmenter(ObjectClicks):
    """Two objects; a click inside one answers that object (3 candidates); the stability of an
    answer is the clicked x divided by the width, so the right-most click of an object wins."""

    name = "peaks"

    def scores(self, x: float, width: int) -> tuple[object, object]:
        return [0.9, 0.5, 0.1], x / width


def test_tags_to_points_merges_peaks_on_one_object_and_keeps_the_most_stable() -> None:
    h, w = 40, 60
    a, b = np.zeros((h, w), bool), np.zeros((h, w), bool)
    a[5:35, 2:30], b[10:30, 40:58] = True, True
    engine = PeakSegmenter([a, b])
    handle = engine.embed([np.zeros((h, w, 3), np.uint8)])[0]
    cam = torch.zeros(2, h, w)  # class 0 tagged, class 1 not
    for y, x, v in ((10, 5, 1.0), (25, 20, 0.9), (20, 50, 0.8)):  # two peaks on a, one on b
        cam[0, y, x] = v
    cam[1, 20, 45] = 1.0  # an untagged class: never a point
    found = tags_to_points(
        engine, handle, cam, [0], lambda xy: xy.astype(float), TagPointOptions(3, 0.5, 0.5)
    )
    assert len(found) == 2
    assert sorted(found.points.tolist()) == [[20.0, 25.0], [50.0, 20.0]]  # on a: x = 20 beats x = 5
    assert found.candidates.shape == (2, 3, h, w) and set(found.class_ids.tolist()) == {0}
    # the CAM is read relative to its maximum (normalised): a CAM without positive activation has no peak
    none = tags_to_points(
        engine, handle, -cam, [0], lambda xy: xy.astype(float), TagPointOptions(3, 0.5, 0.5)
    )
    assert len(none) == 0 and none.candidates.shape == (0, 3, h, w)


def test_merge_peaks_groups_transitively_by_class() -> None:
    m = np.zeros((4, 10, 10), bool)
    m[0, :, :5], m[1, :, :6], m[2, :, :5], m[3, :, 5:] = True, True, True, True
    assert merge_peaks(m, np.array([0.1, 0.9, 0.5, 0.2]), [0, 0, 1, 0], 0.5) == [1, 2, 3]


# -- budget protocol ---------------------------------------------------------------------------
def test_budget_sampler() -> None:
    assert budget_cost((10, 2, 1)) == 10 + 12 + 12 and COSTS == {"tags": 1, "points": 6, "boxes": 12}
    assert homogeneous_counts("points", 136) == (0, 22, 0) and homogeneous_counts("boxes", 136) == (0, 0, 11)
    kinds = assign_label_kinds(100, (40, 5, 3), budget=136, seed=3)
    assert kinds == assign_label_kinds(100, (40, 5, 3), budget=136, seed=3)  # deterministic
    assert kinds != assign_label_kinds(100, (40, 5, 3), budget=136, seed=4)
    assert [kinds.count(k) for k in ("tags", "points", "boxes", None)] == [40, 5, 3, 52]
    assert budget_cost([kinds.count(k) for k in ("tags", "points", "boxes")]) <= 136
    with pytest.raises(ValueError, match=r"cost 148 .*over the budget of 136"):
        assign_label_kinds(100, (40, 6, 6), budget=136)
    with pytest.raises(ValueError, match="ask for 120 images; the set has 100"):
        assign_label_kinds(100, (120, 0, 0))


def test_instance_protocols() -> None:
    mask = np.zeros((30, 40), bool)
    mask[5:25, 10:30] = True
    other = np.zeros((30, 40), bool)
    other[0:3, 0:3] = True
    pts = derive_instance_labels("points", [mask, other], [1, 2], (30, 40), seed=0, stem="a")
    assert pts.instances and len(pts.points) == 2 and pts.tags == [1, 2]
    p = pts.points[0]
    assert 10 <= p.x < 30 and 5 <= p.y < 25 and min(p.x - 10, 29 - p.x, p.y - 5, 24 - p.y) >= 4  # interior
    assert pts.points == derive_instance_labels("points", [mask, other], [1, 2], (30, 40), 0, "a").points
    boxes = derive_instance_labels("boxes", [mask], [1], (30, 40))
    assert boxes.boxes[0].box == (10.0, 5.0, 30.0, 25.0)
    tags = derive_instance_labels("tags", [mask, other], [2, 2], (30, 40))
    assert tags.tags == [2] and not tags.points and not tags.boxes


# -- data --------------------------------------------------------------------------------------
def test_coco_round_trip_of_coco_mini_val(tmp_path) -> None:
    """Read (polygons, crowd RLE, category-id gaps), write, read back: same masks, AP = 1."""
    ds = CocoInstances(require_data("coco_mini"), "val2017")
    samples = ds.samples()
    original = json.loads(ds.annotation_file.read_text())
    assert len(ds.category_ids) == 80 and max(ds.category_ids) == 90  # gaps: 80 ids up to 90
    assert sum(len(s.crowd) for s in samples) == sum(a["iscrowd"] for a in original["annotations"])
    assert any(len(a["segmentation"]) > 1 for a in original["annotations"] if not a["iscrowd"])
    written = tmp_path / "instances.json"
    write_coco(coco_dataset(samples, ds.class_names, ds.category_ids), written)
    back = samples_from_coco(load_coco(written), ds.root / ds.split)
    assert [s.stem for s in back] == [s.stem for s in samples]
    for a, b in zip(samples, back):
        assert a.class_ids == b.class_ids and a.image_id == b.image_id
        assert all(np.array_equal(x, y) for x, y in zip(a.masks, b.masks))
        assert all(np.array_equal(x, y) for x, y in zip(a.crowd, b.crowd))
        assert a.crowd_class_ids == b.crowd_class_ids and len(a.crowd_class_ids) == len(a.crowd)
    results = coco_results(
        [s.image_id for s in samples],
        [(s.masks, s.class_ids, np.ones(len(s.masks))) for s in samples],
        ds.category_ids,
    )
    for gt in (original, json.loads(written.read_text())):
        ap = coco_mask_ap(gt, results)
        assert ap["AP"] == pytest.approx(1.0) and ap["AP50"] == pytest.approx(1.0)
    # one class's ids shifted: AP falls
    wrong = [r | {"category_id": 1} for r in results]
    assert coco_mask_ap(original, wrong)["AP"] < 0.2


def _scene(n: int, size=(48, 64), seed: int = 0) -> list[tuple[np.ndarray, list[np.ndarray], list[int]]]:
    """Images with 1-3 coloured rectangles on noise; instances of class 0 (red) and 1 (blue)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        h, w = size
        image = rng.integers(90, 140, (h, w, 3)).astype(np.uint8)
        masks, classes = [], []
        for _ in range(int(rng.integers(1, 4))):
            y0, x0 = int(rng.integers(0, h - 16)), int(rng.integers(0, w - 20))
            m = np.zeros((h, w), bool)
            m[y0 : y0 + 14, x0 : x0 + 18] = True
            m &= ~np.any(masks, axis=0) if masks else m
            if m.sum() < 60:
                continue
            c = int(rng.integers(2))
            image[m] = (220, 30, 30) if c == 0 else (30, 30, 220)
            masks.append(m)
            classes.append(c)
        out.append((image, masks, classes))
    return out


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("instances")
    from PIL import Image

    samples = []
    for i, (image, masks, classes) in enumerate(_scene(10)):
        path = root / "src" / f"im{i:02d}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(image).save(path)
        samples.append(InstanceSample(f"im{i:02d}", path, masks, classes))
    write_instance_folder(samples, root / "data")
    return root / "data"


def test_camvid_things_are_components_of_thing_classes() -> None:
    from scipy import ndimage as ndi

    from models.io import read_label_png
    from training.datasets import CAMVID_CLASSES, CamVid, CamVidThings

    camvid = require_data("camvid")
    whole = CamVidThings(camvid, "val", min_area=50).samples(limit=2)
    label = read_label_png(CamVid(camvid, "val").samples()[0].label)
    car = label == CAMVID_CLASSES.index("car")
    labelled, _ = ndi.label(car, structure=np.ones((3, 3), bool))
    big = int((np.bincount(labelled.ravel())[1:] >= 50).sum())
    assert whole[0].class_ids.count(2) == big  # class 2 = car among the things
    assert all(m.sum() >= 50 for m in whole[0].masks)
    tiles = CamVidThings(camvid, "val", min_area=50, tiles=2).samples(limit=1)
    assert (
        len(tiles) == 4 and tiles[0].crop == (0, 0, 180, 240) and tiles[0].load_image().shape == (180, 240, 3)
    )
    assert all(m.shape == (180, 240) for t in tiles for m in t.masks)


def test_instance_folder_round_trip(folder: Path) -> None:
    samples = InstanceFolder(folder).samples()
    assert len(samples) == 10 and all(s.masks for s in samples)
    original = _scene(10)
    for s, (_, masks, classes) in zip(samples, original):
        assert s.class_ids == classes and all(np.array_equal(a, b) for a, b in zip(s.masks, masks))
    with pytest.raises(ValueError, match="no images/ and instances/"):
        InstanceFolder(folder / "images")


# -- the model ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(instance_student_registry))
def test_every_instance_student_gives_the_documented_shapes(name: str) -> None:
    torch.manual_seed(0)
    model = build_instance_student(name, 3).eval()
    with torch.no_grad():
        classes, masks, prompts, cam = model(torch.randn(1, 3, 64, 96))
    layers, queries = classes.shape[0], classes.shape[2]
    assert classes.shape == (layers, 1, queries, 4)
    assert masks.shape == (layers, 1, queries, 16, 24)
    assert prompts.shape == (layers, 1, queries, 512)
    assert cam.shape == (1, 3, 2, 3)
    logits, cls, scores = instances_from_outputs(classes[-1, 0], masks[-1, 0], top_k=5)
    assert logits.shape == (5, 16, 24) and (scores[:-1] >= scores[1:]).all() and cls.max() < 3


def test_prompt_latents_of_points_and_boxes_share_one_space() -> None:
    latents = PromptLatents.seeded(0)
    assert "seeded random" in latents.source
    z = latents.points(np.array([[10.0, 10.0], [11.0, 10.0], [90.0, 60.0]]), (80, 100))
    b = latents.boxes(np.array([[5.0, 5.0, 20.0, 20.0]]), (80, 100))
    assert z.shape == (3, 512) and b.shape == (1, 512)
    assert (z[0] - z[1]).norm() < (z[0] - z[2]).norm()  # nearby points, nearby latents
    again = PromptLatents.seeded(0).points(np.array([[10.0, 10.0]]), (80, 100))
    assert torch.allclose(again[0], z[0], atol=1e-5)


def test_prompt_latents_use_the_engines_sam_encoder() -> None:
    from models.engine import EngineConfig, build_engine

    engine = build_engine(EngineConfig(backend="torch", sam_type="tiny"))
    latents = PromptLatents.for_engine(engine)
    assert latents.encoder is engine.model.prompt_encoder and "seeded" not in latents.source


# -- training ----------------------------------------------------------------------------------
def _config(folder: Path, out: Path, **changes) -> InstanceTrainConfig:
    values = {
        "mode": "wish",
        "dataset": "folder",
        "data_root": str(folder),
        "val_root": str(folder),
        "input_side": 64,
        "batch_size": 2,
        "iterations": 3,
        "warmup_iterations": 1,
        "sam_every": 1,
        "match_points": 256,
        "loss_points": 128,
        "eval_every": 2,
        "out_dir": str(out),
        "quiet": True,
        "tag_points": {"peak_threshold": 0.2, "peak_kernel": 1},
    } | changes
    return InstanceTrainConfig.from_mapping(values)


def _pycocotools_ap(out: Path) -> float:
    """COCO mask AP straight from pycocotools (not through training.metrics) of a run's
    val_predictions.json against its val_gt.json."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(out / "val_gt.json"))
        predictions = json.loads((out / "val_predictions.json").read_text())
        if not predictions:
            return 0.0
        ev = COCOeval(gt, gt.loadRes(predictions), iouType="segm")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return float(ev.stats[0])


@pytest.mark.parametrize(
    "labels",
    [
        {"labels": "tags"},
        {"labels": "points"},
        {"labels": "boxes"},
        {"labels": "mix", "label_counts": [4, 3, 3]},
    ],
)
def test_wish_runs_for_every_label_kind(folder: Path, tmp_path, labels: dict) -> None:
    trainer = InstanceTrainer(_config(folder, tmp_path, **labels))
    summary = trainer.train()
    kinds = summary["label_images"]
    assert sum(kinds.values()) == 10
    if labels["labels"] == "mix":
        assert kinds == {"tags": 4, "points": 3, "boxes": 3}
    else:
        assert kinds == {labels["labels"]: 10}
    assert summary["encoder_calls"] == 10  # every image embedded once, none re-encoded in the loop
    assert "seeded random" in summary["prompt_encoder"]
    # the AP it reports is pycocotools' own AP of the predictions and ground truth it wrote
    assert summary["val_ap"] == pytest.approx(_pycocotools_ap(tmp_path), abs=1e-12)
    assert (tmp_path / "student.pt").exists() and (tmp_path / "metrics.csv").exists()
    if labels["labels"] in ("tags", "mix"):
        assert trainer.recipe.tag_instances  # tags became points after the warm-up


def test_wish_resume_equals_uninterrupted(folder: Path, tmp_path) -> None:
    mix = {"labels": "mix", "label_counts": [4, 3, 3], "iterations": 4}
    straight = InstanceTrainer(_config(folder, tmp_path / "a", **mix)).train()
    InstanceTrainer(_config(folder, tmp_path / "b", **(mix | {"iterations": 2}))).train()
    resumed = InstanceTrainer(_config(folder, tmp_path / "b", **mix))
    summary = resumed.train()
    assert resumed.iteration == 3 and summary["weights_sha256"] == straight["weights_sha256"]
    with pytest.raises(ValueError, match=r"w_self: 1.0 -> 0.5"):
        InstanceTrainer(_config(folder, tmp_path / "b", **(mix | {"iterations": 5, "w_self": 0.5}))).train()


def test_supervised_instance_learns_the_scene(folder: Path, tmp_path) -> None:
    """The upper bound on a toy scene: AP rises well above a random model's within a few dozen steps;
    the saved student segments images at their own size through `InstanceSegmenter`."""
    cfg = _config(folder, tmp_path, mode="supervised-instance", iterations=60, eval_every=60, lr=5e-4)
    untrained = InstanceTrainer(_config(folder, tmp_path / "u", mode="supervised-instance"))
    before = untrained.recipe.evaluate()["AP50"]
    after = InstanceTrainer(cfg).train()["val"]["AP50"]
    assert after > before + 0.2, (before, after)
    segmenter = InstanceSegmenter.from_checkpoint(tmp_path / "student.pt")
    sample = InstanceFolder(folder).samples()[0]
    masks, _, scores = segmenter.segment([sample.load_image()], top_k=5, min_score=0.0)[0]
    assert masks.shape == (5, 48, 64) and masks.dtype == bool and (np.diff(scores) <= 0).all()
    best = max(float((m & o).sum() / (m | o).sum()) for m in masks for o in sample.masks)
    assert best > 0.35  # the top five hold an object (a 60-step student: rough edges)


def test_instance_config_errors(folder: Path, tmp_path) -> None:
    with pytest.raises(ValueError, match="labels=mix needs label_counts"):
        _config(folder, tmp_path, labels="mix").validate()
    with pytest.raises(ValueError, match="sam_level 'all' must be min, 1, 2 or 3"):
        _config(folder, tmp_path, sam_level="all").validate()
    with pytest.raises(ValueError, match=r"cost 22 .*over the budget of 10"):
        InstanceTrainer(_config(folder, tmp_path, labels="mix", label_counts=[4, 1, 1], budget=10)).train()
    yaml = tmp_path / "c.yaml"
    yaml.write_text(f"mode: wish\ndataset: folder\ndata_root: {folder}\n")
    assert isinstance(config_from_yaml(yaml, ["labels=boxes"]), InstanceTrainConfig)


def test_weak_label_files_feed_wish(folder: Path, tmp_path) -> None:
    """A user's own v2 instance labels (one folder of <stem>.json) replace the protocols; v1 is refused."""
    from models.labels.schema import save_weak_labels

    weak_dir = tmp_path / "weak"
    for s in InstanceFolder(folder).samples():
        kind = "boxes" if s.stem < "im05" else "tags"
        save_weak_labels(derive_instance_labels(kind, s.masks, s.class_ids, s.size), weak_dir, s.stem)
    summary = InstanceTrainer(_config(folder, tmp_path / "run", train_weak=str(weak_dir))).train()
    assert summary["label_images"] == {"boxes": 5, "tags": 5}
    (weak_dir / "im00.json").write_text(json.dumps({"version": 1, "width": 64, "height": 48, "tags": [0]}))
    with pytest.raises(ValueError, match=r"im00\.json: WISH needs instance labels"):
        InstanceTrainer(_config(folder, tmp_path / "run2", train_weak=str(weak_dir))).train()


def test_eval_instances_cli(folder: Path, tmp_path, capsys) -> None:
    from sesam.cli import main

    InstanceTrainer(_config(folder, tmp_path, mode="supervised-instance", iterations=2)).train()
    assert (
        main(
            [
                "eval-instances",
                "--pred",
                str(tmp_path / "val_predictions.json"),
                "--gt",
                str(tmp_path / "val_gt.json"),
            ]
        )
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert {"AP", "AP50", "AP75"} <= set(report) and report["images"] == 10
    assert report["AP"] == pytest.approx(_pycocotools_ap(tmp_path), abs=1e-12)
    (tmp_path / "bad.json").write_text(json.dumps([{"image_id": 1}]))
    assert (
        main(["eval-instances", "--pred", str(tmp_path / "bad.json"), "--gt", str(tmp_path / "val_gt.json")])
        == 2
    )
    assert "result [0] lacks ['category_id', 'score', 'segmentation']" in capsys.readouterr().err


def test_two_process_ddp_wish(folder: Path, tmp_path) -> None:
    """torchrun with 2 processes: a WISH mix (tags refreshed on each rank's share of the batch)."""
    import os
    import subprocess
    import sys

    import yaml

    config = tmp_path / "ddp.yaml"
    values = {k: v for k, v in _config(folder, tmp_path / "out").__dict__.items()}
    values |= {"labels": "mix", "label_counts": [4, 3, 3], "batch_size": 4, "checkpoint_every": 1}
    config.write_text(yaml.safe_dump(values))
    env = dict(os.environ, OMP_NUM_THREADS="1", BENTOML_DO_NOT_TRACK="true")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += ["-m", "sesam.cli", "train", "--config", str(config)]
    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / "out" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["parameters_sha256"] == ranks[1]["parameters_sha256"]  # replicas stayed identical
    assert (tmp_path / "out" / "student.pt").exists()
