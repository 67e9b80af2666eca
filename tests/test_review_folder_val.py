"""Issue 25: the folder instance dataset validates on `val_root`, and without one it has no
validation at all: training never scores a student on its own training images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from training.datasets import InstanceSample, write_instance_folder
from training.recipes.instance import load_split
from training.trainer import InstanceTrainConfig, InstanceTrainer


def _folder(root: Path, stems: list[str], seed: int) -> Path:
    """An instance folder of 40x48 noise images, each with one 12x14 rectangle of class 0."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    samples = []
    for stem in stems:
        image = rng.integers(0, 255, (40, 48, 3)).astype(np.uint8)
        mask = np.zeros((40, 48), bool)
        y, x = (int(v) for v in rng.integers(0, 20, 2))
        mask[y : y + 12, x : x + 14] = True
        image[mask] = (220, 30, 30)
        path = root / "src" / f"{stem}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(path)
        samples.append(InstanceSample(stem, path, [mask], [0]))
    write_instance_folder(samples, root / "data")
    return root / "data"


TRAIN_STEMS, VAL_STEMS = ["t0", "t1", "t2"], ["v0", "v1"]


def _config(train: Path, out: Path, val: Path | None) -> InstanceTrainConfig:
    values = {
        "mode": "supervised-instance",
        "dataset": "folder",
        "data_root": str(train),
        "input_side": 64,
        "batch_size": 2,
        "iterations": 1,
        "warmup_iterations": 0,
        "eval_every": 1,
        "match_points": 64,
        "loss_points": 64,
        "out_dir": str(out),
        "quiet": True,
    }
    if val is not None:
        values["val_root"] = str(val)
    return InstanceTrainConfig.from_mapping(values)


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("folder_val")
    return _folder(root / "train", TRAIN_STEMS, 0), _folder(root / "val", VAL_STEMS, 1)


def test_folder_without_val_root_has_no_validation_split(folders, tmp_path) -> None:
    train, _ = folders
    cfg = _config(train, tmp_path, None)
    assert [s.stem for s in load_split(cfg, train=True).samples] == TRAIN_STEMS
    assert load_split(cfg, train=False).samples == []  # not the training images


def test_folder_validation_reads_val_root(folders, tmp_path) -> None:
    train, val = folders
    split = load_split(_config(train, tmp_path, val), train=False)
    assert [s.stem for s in split.samples] == VAL_STEMS
    assert all(s.image.parent == val / "images" for s in split.samples)


def test_training_without_val_root_never_scores_its_train_images(folders, tmp_path) -> None:
    train, _ = folders
    trainer = InstanceTrainer(_config(train, tmp_path / "run", None))
    summary = trainer.train()
    assert not trainer.recipe.has_validation()
    assert summary["val_ap"] is None and summary["val"] == {}
    assert not (tmp_path / "run" / "val_gt.json").exists()


def test_training_with_val_root_scores_the_val_images(folders, tmp_path) -> None:
    train, val = folders
    InstanceTrainer(_config(train, tmp_path / "run", val)).train()
    gt = json.loads((tmp_path / "run" / "val_gt.json").read_text())
    assert sorted(i["file_name"] for i in gt["images"]) == [f"{s}.png" for s in VAL_STEMS]
