"""Training: losses, EMA, view geometry, every mode on tiny data, resume equality, students, DDP."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image

from models.labels.schema import save_weak_labels
from models.students.semantic import (
    build_student,
    load_student,
    predict_logits,
    save_student,
    student_registry,
)
from tests.conftest import REPO, require_data
from training.augment import View, random_view
from training.data import WeakDataset
from training.losses import ema_update, sesam_loss, sesam_targets
from training.protocols import derive
from training.trainer import MODES, READ_BY, TrainConfig, Trainer, config_changes

U = 255


# -- losses and EMA ------------------------------------------------------------------------------
def test_loss_precedence_on_a_hand_made_batch() -> None:
    weak = torch.tensor([[[0, U, U, U]]])
    sam = torch.tensor([[[1, 1, U, U]]])
    pseudo = torch.tensor([[[2, 2, 2, U]]])
    w, s, p = sesam_targets(weak, sam, pseudo)
    assert w.tolist() == [[[0, U, U, U]]]
    assert s.tolist() == [[[U, 1, U, U]]]  # weak wins over SAM at pixel 0
    assert p.tolist() == [[[U, U, 2, U]]]  # SAM and weak win over pseudo
    logits = torch.randn(1, 3, 1, 4)
    terms = sesam_loss(logits, weak, sam, pseudo, w_sam=1.0, w_pseudo=0.01)
    ce = F.cross_entropy(logits, torch.tensor([[[0, 1, 2, 0]]]), reduction="none")[0, 0]
    assert terms["weak"].item() == pytest.approx(ce[0].item(), rel=1e-6)
    assert terms["sam"].item() == pytest.approx(ce[1].item(), rel=1e-6)
    assert terms["pseudo"].item() == pytest.approx(ce[2].item(), rel=1e-6)
    assert terms["total"].item() == pytest.approx((ce[0] + ce[1] + 0.01 * ce[2]).item(), rel=1e-6)


def test_class_balanced_sam_loss_averages_per_class() -> None:
    """Three road pixels and one pole pixel: balanced, each class's mean counts half."""
    weak = torch.full((1, 1, 5), U)
    sam = torch.tensor([[[3, 3, 3, 2, U]]])
    logits = torch.randn(1, 4, 1, 5)
    ce = F.cross_entropy(logits, torch.tensor([[[3, 3, 3, 2, 0]]]), reduction="none")[0, 0]
    plain = sesam_loss(logits, weak, sam, None)["sam"].item()
    balanced = sesam_loss(logits, weak, sam, None, sam_class_balanced=True)["sam"].item()
    assert plain == pytest.approx(ce[:4].mean().item(), rel=1e-6)
    assert balanced == pytest.approx(((ce[:3].mean() + ce[3]) / 2).item(), rel=1e-6)
    # the weak term is never re-weighted
    weak_only = sesam_loss(logits, sam, None, None, sam_class_balanced=True)
    assert weak_only["weak"].item() == pytest.approx(plain, rel=1e-6)


def test_empty_terms_are_zero() -> None:
    terms = sesam_loss(torch.randn(1, 3, 2, 2), torch.full((1, 2, 2), U), None, None)
    assert terms["total"].item() == 0.0


def test_ema_update() -> None:
    torch.manual_seed(0)
    student, teacher = torch.nn.BatchNorm1d(3), torch.nn.BatchNorm1d(3)
    with torch.no_grad():
        student.weight.fill_(1.0)
        teacher.weight.fill_(0.0)
        student.running_mean.fill_(5.0)
    ema_update(teacher, student, alpha=0.999)
    assert torch.allclose(teacher.weight, torch.full((3,), 0.001))
    assert torch.equal(teacher.running_mean, student.running_mean)


# -- geometry ------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(12))
def test_points_round_trip(seed: int) -> None:
    rng = np.random.default_rng(seed)
    view = random_view((360, 480), (160, 224), rng, base_scale=0.5)
    pts = np.column_stack([rng.uniform(0, 480, 50), rng.uniform(0, 360, 50)])
    back = view.points_to_original(view.points_to_view(pts))
    assert np.abs(back - pts).max() < 1e-6


@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize("scale", [0.5, 0.8, 1.3])
def test_masks_and_points_agree_through_views(flip: bool, scale: float) -> None:
    h, w = 120, 160
    labels = np.full((h, w), 0, np.uint8)
    labels[30:70, 20:90] = 1
    labels[80:110, 100:150] = 2
    view = View((h, w), flip, scale, 7, 11, (64, 96))
    in_view = view.labels_to_view(labels)
    back = view.labels_to_original(in_view)
    covered = back != U
    assert covered.mean() > 0.15  # a 64x96 view at scale 1.3 covers ~19% of 120x160
    # Round trip: equal wherever the view reached, except within 1 px (after scaling) of a class edge.
    edge = np.zeros_like(covered)
    edge[1:] |= labels[1:] != labels[:-1]
    edge[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    from scipy.ndimage import binary_dilation

    near_edge = binary_dilation(edge, iterations=int(np.ceil(1 / scale)) + 1)
    assert (back[covered & ~near_edge] == labels[covered & ~near_edge]).all()
    # A point and the mask it lies in stay together in the view (within 1 px).
    for x, y in [(50.5, 45.5), (120.5, 95.5)]:
        vx, vy = view.points_to_view(np.array([[x, y]]))[0]
        if 1 <= vx < 95 and 1 <= vy < 63:
            window = in_view[int(vy) - 1 : int(vy) + 2, int(vx) - 1 : int(vx) + 2]
            assert labels[int(y), int(x)] in window


def test_image_view_matches_label_view() -> None:
    image = np.zeros((120, 160, 3), np.uint8)
    image[30:70, 20:90] = 255
    labels = (image[..., 0] > 0).astype(np.uint8)
    view = View((120, 160), True, 0.75, 5, 3, (64, 96))
    bright = view.image_to_view(image)[..., 0] > 127
    assert (bright == (view.labels_to_view(labels) == 1)).mean() > 0.97


# -- students ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(student_registry))
def test_every_student_builds_and_predicts_any_size(name: str) -> None:
    torch.manual_seed(0)
    model = build_student(name, 5).eval()
    images = torch.randint(0, 255, (1, 3, 50, 70), dtype=torch.uint8)
    assert predict_logits(model, images).shape == (1, 5, 50, 70)


def test_student_checkpoint_round_trip(tmp_path) -> None:
    model = build_student("fpn-mobilenetv2", 4)
    save_student(tmp_path / "s.pt", model, "fpn-mobilenetv2", 4, extra={"val_miou": 0.5})
    loaded, meta = load_student(tmp_path / "s.pt")
    assert meta["val_miou"] == 0.5 and meta["name"] == "fpn-mobilenetv2"
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)
    (tmp_path / "bad.pt").write_text("no")
    with pytest.raises(ValueError, match=r"bad\.pt: cannot read the student checkpoint"):
        load_student(tmp_path / "bad.pt")
    torch.save({"x": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a student checkpoint"):
        load_student(tmp_path / "other.pt")
    with pytest.raises(ValueError, match="unknown student"):
        build_student("resnet9000", 3)


# -- training runs on tiny data ------------------------------------------------------------------
def tiny_dataset(n: int = 6, seed: int = 0) -> WeakDataset:
    rng = np.random.default_rng(seed)
    images, weak, gts, stems = [], [], [], []
    for i in range(n):
        gt = np.zeros((64, 96), np.uint8)
        r, c = rng.integers(5, 30), rng.integers(5, 50)
        gt[r : r + 25, c : c + 35] = 1
        gt[50:, :] = 2
        image = np.stack([gt * 90 + 20, 200 - gt * 60, np.full_like(gt, 80)], -1).astype(np.uint8)
        image = np.clip(image + rng.normal(0, 4, image.shape), 0, 255).astype(np.uint8)
        images.append(image)
        gts.append(gt)
        weak.append(derive("scribbles", gt, None, seed, str(i)))
        stems.append(f"img{i}")
    return WeakDataset(stems, images, weak, gts, ignore_index=None)


def write_tiny_folders(root: Path, n: int) -> tuple[Path, Path]:
    """`tiny_dataset(n)` written as training folders: root/images/<stem>.png, root/weak/<stem>.json."""
    ds = tiny_dataset(n)
    images, weak = root / "images", root / "weak"
    images.mkdir()
    for stem, image, labels in zip(ds.stems, ds.images, ds.weak, strict=True):
        Image.fromarray(image).save(images / f"{stem}.png")
        save_weak_labels(labels, weak, stem)
    return images, weak


def tiny_config(tmp_path: Path, mode: str, **kw) -> TrainConfig:
    values = dict(
        mode=mode,
        train_images="unused",
        train_weak="unused",
        num_classes=3,
        iterations=3,
        batch_size=2,
        crop=(64, 96),
        base_scale=1.0,
        out_dir=str(tmp_path / mode),
        quiet=True,
        eval_every=2,
        checkpoint_every=1,
        log_every=1,
        lr=1e-3,
        sam_every=2,
    )
    values.update(kw)
    return TrainConfig.from_mapping(values)


@pytest.mark.parametrize("mode", MODES)
def test_three_iterations_of_every_mode(tmp_path, mode: str) -> None:
    ds = tiny_dataset()
    trainer = Trainer(tiny_config(tmp_path, mode), train_ds=ds, val_ds=tiny_dataset(3, seed=1))
    summary = trainer.train()
    out = tmp_path / mode
    assert summary["iterations"] == 3 and summary["val_miou"] is not None
    assert len(summary["val_per_class_iou"]) == 3
    rows = (out / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("iteration") and len(rows) == 4
    if mode == "cam":  # a CAM classifier, not a student (tests/test_cam.py covers it from tags)
        from models.students.cam import load_cam_classifier

        _model, meta = load_cam_classifier(out / "cam.pt")
        assert meta["iterations"] == 3
    else:
        _model, meta = load_student(out / "student.pt")
        assert meta["mode"] == mode
    if mode in ("sesam", "naive-sam"):
        # every image embedded once up front (in batches of 4), never again
        assert trainer.engine.stats.images_encoded == len(ds)
        assert trainer.engine.stats.encoder_calls == -(-len(ds) // 4)
    if mode == "sesam":
        assert trainer.sam_labels  # SAM labels were produced in the loop


@pytest.mark.parametrize(
    ("view", "passes"), [("weak", ["weak"]), ("strong", ["strong"]), ("both", ["weak", "strong"])]
)
def test_student_views(tmp_path, monkeypatch, view: str, passes: list[str]) -> None:
    """Which view each student pass sees, and which losses each pass carries."""
    import training.recipes.semantic as semantic

    batches, seen = [], []
    real_make_batch, real_loss = semantic.make_batch, semantic.sesam_loss
    monkeypatch.setattr(
        semantic, "make_batch", lambda *a, **k: batches.append(real_make_batch(*a, **k)) or batches[-1]
    )

    def spy_loss(logits, weak, sam, pseudo, w_sam, w_pseudo, balanced):
        seen.append(("loss", pseudo is not None and w_pseudo > 0))
        return real_loss(logits, weak, sam, pseudo, w_sam, w_pseudo, balanced)

    monkeypatch.setattr(semantic, "sesam_loss", spy_loss)
    trainer = Trainer(
        tiny_config(tmp_path, "sesam", student_view=view, iterations=1), train_ds=tiny_dataset(), val_ds=None
    )
    real_forward = trainer.recipe._forward

    def spy_forward(images):
        batch = batches[-1]
        seen.append(
            ("weak" if images is batch.weak_images else "strong" if images is batch.strong_images else "?",)
        )
        return real_forward(images)

    trainer.recipe._forward = spy_forward
    trainer.train()
    terms = trainer.history[-1]
    assert [s[0] for s in seen if len(s) == 1] == passes
    losses = [s[1] for s in seen if len(s) == 2]
    # both: the labelled losses (weak + SAM) on the weak view, no pseudo term there; the pseudo term
    # is taken on the strong pass. weak / strong: one pass carrying every term.
    assert losses == ([False] if view == "both" else [True])
    assert {"weak", "sam", "pseudo", "total"} <= set(terms)
    with pytest.raises(ValueError, match="student_view 'side' unknown"):
        tiny_config(tmp_path, "sesam", student_view="side")


def test_class_balanced_sam_loss_trains_differently(tmp_path, monkeypatch) -> None:
    import training.recipes.semantic as semantic

    flags = []
    real_loss = semantic.sesam_loss
    monkeypatch.setattr(semantic, "sesam_loss", lambda *a: flags.append(a[-1]) or real_loss(*a))
    ds = tiny_dataset()
    runs = {
        balanced: Trainer(
            tiny_config(tmp_path / str(balanced), "sesam", sam_class_balanced=balanced),
            train_ds=ds,
            val_ds=None,
        ).train()
        for balanced in (False, True)
    }
    assert runs[True]["sam_class_balanced"] and not runs[False]["sam_class_balanced"]
    assert flags == [False] * 3 + [True] * 3  # the setting reaches the loss of every step
    assert runs[True]["weights_sha256"] != runs[False]["weights_sha256"]


@pytest.mark.parametrize("mode", ["fixmatch", "sesam"])
def test_resume_equals_uninterrupted(tmp_path, mode: str) -> None:
    ds, val = tiny_dataset(), tiny_dataset(3, seed=1)  # with evaluations: their state is checkpointed too
    straight = Trainer(tiny_config(tmp_path / "a", mode, iterations=4), train_ds=ds, val_ds=val).train()
    first = Trainer(tiny_config(tmp_path / "b", mode, iterations=2), train_ds=ds, val_ds=val)
    first.train()
    resumed = Trainer(tiny_config(tmp_path / "b", mode, iterations=4), train_ds=ds, val_ds=val)
    summary = resumed.train()
    assert resumed.iteration == 3
    assert resumed.best_miou >= first.best_miou
    assert summary["weights_sha256"] == straight["weights_sha256"]


class _GlobalDrawsRecipe:
    """A recipe whose steps draw from torch's, numpy's and Python's global generators, seeded at
    construction: a resumed run matches a straight one only if last.pt gives their states back."""

    loss_terms = ("total",)
    score_name = ""

    def __init__(self) -> None:
        self.read_by: dict[str, frozenset[str]] = {}
        torch.manual_seed(0)
        np.random.seed(0)
        random.seed(0)
        self.model = torch.nn.Linear(3, 1)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1, momentum=0.9)

    def prepare(self) -> None:
        pass

    def step(self, iteration: int) -> dict[str, float]:
        x = torch.randn(4, 3) + float(np.random.rand()) + random.random()
        loss = self.model(x).pow(2).mean()
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return {"total": float(loss.detach())}

    def has_validation(self) -> bool:
        return False

    def evaluate(self) -> dict:
        return {}

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])

    def after_training(self) -> None:
        pass

    def summary(self, final: dict) -> dict:
        return {}

    def save_outputs(self, out: Path, final: dict) -> None:
        pass


def test_resume_checkpoint_is_a_train_state_with_the_generators(tmp_path) -> None:
    """last.pt is the project's checkpoint (kind train_state, weights_only): the settings, the
    recipe's state, the iteration and the global generators' states, which a resume restores; the
    layouts from before version 1 resume too; anything else is refused, naming the file."""
    from models.io import load_checkpoint
    from training.loop import LoopSettings, TrainLoop

    def run(out: Path, iterations: int) -> dict:
        settings = LoopSettings("toy", str(out), iterations, 0.1, 0, checkpoint_every=2, quiet=True)
        return TrainLoop(settings, _GlobalDrawsRecipe()).train()

    straight = run(tmp_path / "a", 4)
    first = run(tmp_path / "b", 2)
    state = load_checkpoint(tmp_path / "b" / "last.pt", "train_state")
    assert state.config["iterations"] == 2 and state.config["mode"] == "toy"
    assert set(state.weights) == {"model", "optimizer"} and state.metadata["iteration"] == 1
    assert set(state.metadata["rng"]) == {"torch", "cuda", "numpy", "python"}
    resumed = run(tmp_path / "b", 4)
    assert resumed["resumed_at"] == 2 and first["weights_sha256"] != straight["weights_sha256"]
    assert resumed["weights_sha256"] == straight["weights_sha256"]
    # the layouts from before version 1 still resume: the loop's {**state, iteration, config,
    # best_miou} and WeakSAM's {model, optimizer, iteration, settings}
    layouts = {
        "loop": state.weights
        | {"iteration": 1, "config": state.config | {"iterations": 4}, "best_miou": 0.5},
        "weaksam": state.weights | {"iteration": 1, "settings": state.config | {"iterations": 4}},
    }
    for name, payload in layouts.items():
        old = tmp_path / name / "last.pt"
        old.parent.mkdir()
        torch.save(payload, old)
        assert run(old.parent, 4)["resumed_at"] == 2, name
    (tmp_path / "old").mkdir()
    torch.save({"student": {}, "iteration": 1}, tmp_path / "old" / "last.pt")  # neither layout
    with pytest.raises(ValueError, match=r"old/last.pt: not a training resume state .*start over"):
        run(tmp_path / "old", 4)


def test_metrics_log_lists_each_iteration_once_after_a_resume_or_a_fresh_start(tmp_path) -> None:
    """A run killed after logging past its last checkpoint logs those iterations again when it
    resumes: metrics.csv keeps only the rows before the resumed iteration, so it equals a straight
    run's iterations; `resume: false` into the same folder starts the log over (before: rows were
    appended, duplicated and mixed across runs)."""
    from training.loop import LoopSettings, TrainLoop

    def run(out: Path, iterations: int, resume: bool = True) -> None:
        settings = LoopSettings(
            "toy", str(out), iterations, 0.1, 0, checkpoint_every=2, quiet=True, resume=resume, log_every=1
        )
        TrainLoop(settings, _GlobalDrawsRecipe()).train()

    def iterations(out: Path) -> list[int]:
        return [int(line.split(",")[0]) for line in (out / "metrics.csv").read_text().splitlines()[1:]]

    run(tmp_path / "a", 4)
    run(tmp_path / "b", 2)
    with (tmp_path / "b" / "metrics.csv").open("a") as f:
        f.write("2,0.01,0.5,0.1\r\n")  # logged by a run killed before its next checkpoint
    run(tmp_path / "b", 4)
    assert iterations(tmp_path / "b") == iterations(tmp_path / "a") == [0, 1, 2, 3]
    run(tmp_path / "b", 2, resume=False)
    assert iterations(tmp_path / "b") == [0, 1]


def test_resume_refuses_other_settings(tmp_path) -> None:
    ds = tiny_dataset()
    Trainer(tiny_config(tmp_path, "fixmatch", iterations=2), train_ds=ds, val_ds=None).train()
    other = Trainer(
        tiny_config(tmp_path, "fixmatch", iterations=4, seed=1, theta1=0.9), train_ds=ds, val_ds=None
    )
    with pytest.raises(ValueError, match=r"seed: 0 -> 1; theta1: 0.96 -> 0.9"):
        other.train()
    # the budget and bookkeeping may change on resume
    more = Trainer(tiny_config(tmp_path, "fixmatch", iterations=3, eval_every=3), train_ds=ds, val_ds=None)
    assert more.train()["iterations"] == 3


def test_config_changes_ignores_free_and_unknown_keys() -> None:
    saved = {
        "seed": 0,
        "crop": (160, 224),
        "engine": {"backend": "classical", "cache_bytes": 1},
        "iterations": 4,
    }
    current = saved | {
        "crop": [160, 224],
        "engine": {"backend": "classical", "cache_bytes": 2},
        "iterations": 9,
    }
    assert config_changes(saved, current | {"sam_class_balanced": True}, READ_BY) == []
    assert config_changes(saved, current | {"engine": {"backend": "torch", "cache_bytes": 1}}) == [
        "engine: {'backend': 'classical', 'cache_bytes': 1} -> {'backend': 'torch', 'cache_bytes': 1}"
    ]
    assert set(READ_BY) <= set(asdict(TrainConfig(camvid_root="x")))  # no misspelt setting
    # a setting the mode never reads: weak supervision has no SAM loss to balance
    weak = {"mode": "weak", "sam_class_balanced": False}
    assert config_changes(weak, weak | {"sam_class_balanced": True}, READ_BY) == []
    assert config_changes(
        weak | {"mode": "sesam"}, weak | {"mode": "sesam", "sam_class_balanced": True}, READ_BY
    ) == ["sam_class_balanced: False -> True"]


def test_config_errors(tmp_path) -> None:
    with pytest.raises(ValueError, match="mode 'semi' unknown"):
        tiny_config(tmp_path, "semi")
    with pytest.raises(ValueError, match="must be multiples of 32"):
        tiny_config(tmp_path, "weak", crop=(60, 96))
    with pytest.raises(ValueError, match=r"unknown settings \['colour'\]"):
        TrainConfig.from_mapping({"colour": 1})
    path = tmp_path / "c.yaml"
    path.write_text("mode: weak\ncamvid_root: x\n")
    with pytest.raises(ValueError, match="expected key=value"):
        TrainConfig.from_yaml(path, ["iterations"])
    assert TrainConfig.from_yaml(path, ["iterations=7"]).iterations == 7
    # numbers torch would only refuse once the data is read (or never: 0 classes)
    for bad in ("lr=-1", "lr=0", "weight_decay=-0.1", "weight_decay=nan", "num_classes=0"):
        with pytest.raises(ValueError, match=r"lr must be > 0, weight_decay >= 0 and num_classes >= 1"):
            TrainConfig.from_yaml(path, [bad])


def torchrun_sesam(tmp_path: Path, ranks: int, **settings: Any) -> list[dict[str, Any]]:
    """SeSAM for 3 iterations on 8 tiny images under torchrun with `ranks` processes (`settings` on
    top of the tiny config); each rank's summary (rank<r>.json). Fails with the run's output."""
    images, weak = write_tiny_folders(tmp_path, 8)
    values = {
        "mode": "sesam",
        "train_images": str(images),
        "train_weak": str(weak),
        "num_classes": 3,
        "iterations": 3,
        "batch_size": 4,
        "crop": [64, 96],
        "base_scale": 1.0,
        "sam_every": 1,
        "out_dir": str(tmp_path / "out"),
        "quiet": True,
        "ignore_index": None,
    } | settings
    (tmp_path / "ddp.yaml").write_text(yaml.safe_dump(values))
    env = dict(os.environ, OMP_NUM_THREADS="1", BENTOML_DO_NOT_TRACK="true")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks)]
    cmd += ["-m", "sesam.cli", "train", "--config", str(tmp_path / "ddp.yaml")]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return [json.loads((tmp_path / "out" / f"rank{r}.json").read_text()) for r in range(ranks)]


def test_two_process_ddp(tmp_path) -> None:
    ranks = torchrun_sesam(tmp_path, 2, checkpoint_every=1)
    assert ranks[0]["parameters_sha256"] == ranks[1]["parameters_sha256"]  # DDP kept the replicas identical
    assert (tmp_path / "out" / "student.pt").exists()


def test_tensorboard_scalars_when_available(tmp_path, monkeypatch) -> None:
    import types

    written: list[tuple[str, float, int]] = []

    class RecordingWriter:
        def __init__(self, logdir: str) -> None:
            self.logdir = logdir

        def add_scalar(self, tag: str, value: float, step: int) -> None:
            written.append((tag, value, step))

    module = types.ModuleType("torch.utils.tensorboard")
    module.SummaryWriter = RecordingWriter
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", module)
    Trainer(tiny_config(tmp_path, "weak", iterations=2), train_ds=tiny_dataset(), val_ds=None).train()
    totals = [(step, value) for tag, value, step in written if tag == "total"]
    assert [step for step, _ in totals] == [0, 1] and all(value > 0 for _, value in totals)
    assert {tag for tag, _, _ in written} >= {"total", "seconds_per_iter", "lr"}


def test_shipped_student_loads_and_segments_camvid(camvid_image) -> None:
    camvid = require_data("camvid")
    model, meta = load_student(REPO / "models" / "students" / "weights" / "camvid_student.pt")
    assert meta["num_classes"] == 11 and meta["mode"] == "sesam" and len(meta["class_names"]) == 11
    stem = (camvid / "val.txt").read_text().split()[0]
    gt = np.asarray(Image.open(camvid / "labels" / "val" / f"{stem}.png"))
    small = torch.from_numpy(camvid_image[::2, ::2].copy()).permute(2, 0, 1)[None]
    logits = F.interpolate(predict_logits(model, small), size=gt.shape, mode="bilinear", align_corners=False)
    pred = logits.argmax(1)[0].numpy()
    valid = gt != 11
    assert (pred[valid] == gt[valid]).mean() > 0.5  # chance is ~0.09 for 11 classes
