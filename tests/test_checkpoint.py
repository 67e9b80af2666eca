"""One checkpoint layout for every network the models package writes (`models.io.save_checkpoint` /
`load_checkpoint`): each kind round-trips through its save/load pair, files of the layouts written
before version 1 (built here by hand, as the old code wrote them) still load, the shipped files are
version 1, and a wrong kind, a newer version, a non-checkpoint and a missing file are ValueErrors
naming the file."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from models.io import CHECKPOINT_VERSION, load_checkpoint, save_checkpoint, weights_state
from models.students.cam import SHIPPED_CAM, CamClassifier, load_cam_classifier, save_cam_classifier
from models.students.detector import faster_rcnn, load_detector, save_detector
from models.students.instance import build_instance_student, load_instance_student, save_instance_student
from models.students.runtime import checkpoint_task
from models.students.semantic import (
    SHIPPED_INSTANCE_STUDENT,
    SHIPPED_SEMANTIC_STUDENT,
    build_student,
    load_student,
    save_student,
)
from models.students.wsod import WSODHead, load_wsod, save_wsod


@dataclass(frozen=True)
class Case:
    """One kind: its network, how its save_* writes it, what the file holds, and the old layout."""

    build: Callable[[], nn.Module]
    save: Callable[[Path, nn.Module], None]
    load: Callable[[Path], tuple[nn.Module, dict[str, Any]]]
    config: dict[str, Any]
    metadata: dict[str, Any]
    legacy: Callable[[nn.Module], dict[str, Any]]  # the unversioned payload the old save_* wrote


NAMES = ["a", "b", "c"]
SEMANTIC_EXTRA = {"val_miou": 0.5, "mode": "sesam", "kind": "scribbles", "class_names": NAMES}
INSTANCE_EXTRA = {"class_names": ["person"], "category_ids": [1], "input_side": 128, "mode": "wish"}
CAM_EXTRA = {"base_scale": 0.5, "cam_threshold": 0.2, "class_names": NAMES}
WSOD_EXTRA = {"base_scale": 0.5, "seed_rule": "mist"}
DETECTOR_SETTINGS = {"min_size": 160, "max_size": 256, "iterations": 3}
DETECTOR_CATEGORIES = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
CAM_CONFIG = {"student": "fpn-mobilenetv2", "num_classes": 3, "output_stride": 16}
WSOD_CONFIG = {"student": "fpn-mobilenetv2", "num_classes": 3, "refinements": 2, "hidden": 16, "roi_size": 2}

CASES = {
    "semantic_student": Case(
        build=lambda: build_student("fpn-mobilenetv2", 3),
        save=lambda path, m: save_student(path, m, "fpn-mobilenetv2", 3, extra=SEMANTIC_EXTRA),
        load=load_student,
        config={"name": "fpn-mobilenetv2", "num_classes": 3},
        metadata=SEMANTIC_EXTRA,
        legacy=lambda m: (
            {"name": "fpn-mobilenetv2", "num_classes": 3, "state_dict": weights_state(m)} | SEMANTIC_EXTRA
        ),
    ),
    "instance_student": Case(
        build=lambda: build_instance_student("m2f-r18", 1),
        save=lambda path, m: save_instance_student(path, m, "m2f-r18", 1, extra=INSTANCE_EXTRA),
        load=load_instance_student,
        config={"name": "m2f-r18", "num_classes": 1},
        metadata=INSTANCE_EXTRA,
        legacy=lambda m: (
            {"name": "m2f-r18", "num_classes": 1, "kind": "instance", "state_dict": m.state_dict()}
            | INSTANCE_EXTRA
        ),
    ),
    "cam": Case(
        build=lambda: CamClassifier("fpn-mobilenetv2", 3, 16),
        save=lambda path, m: save_cam_classifier(path, m, CAM_EXTRA),
        load=load_cam_classifier,
        config=CAM_CONFIG,
        metadata=CAM_EXTRA,
        legacy=lambda m: {"kind": "cam"} | CAM_CONFIG | {"state_dict": weights_state(m)} | CAM_EXTRA,
    ),
    "wsod": Case(
        build=lambda: WSODHead("fpn-mobilenetv2", 3, refinements=2, hidden=16, roi_size=2),
        save=lambda path, m: save_wsod(path, m, WSOD_EXTRA),
        load=load_wsod,
        config=WSOD_CONFIG,
        metadata=WSOD_EXTRA,
        legacy=lambda m: {"kind": "wsod"} | WSOD_CONFIG | {"state_dict": m.state_dict()} | WSOD_EXTRA,
    ),
    "detector": Case(
        build=lambda: faster_rcnn(2, 160, 256),
        save=lambda path, m: save_detector(path, m, 2, DETECTOR_SETTINGS, DETECTOR_CATEGORIES),
        load=load_detector,
        config={"num_classes": 2, "min_size": 160, "max_size": 256},
        metadata={"settings": DETECTOR_SETTINGS, "categories": DETECTOR_CATEGORIES},
        legacy=lambda m: {
            "kind": "detector",
            "num_classes": 2,
            "settings": DETECTOR_SETTINGS,
            "categories": DETECTOR_CATEGORIES,
            "state_dict": {k: v.detach().cpu() for k, v in m.state_dict().items()},
        },
    ),
}

LOADERS = {
    "semantic_student": (load_student, "student checkpoint"),
    "instance_student": (load_instance_student, "instance student checkpoint"),
    "cam": (load_cam_classifier, "CAM classifier checkpoint"),
    "wsod": (load_wsod, "WSOD checkpoint"),
    "detector": (load_detector, "detector checkpoint"),
}


def assert_same_weights(expected: nn.Module, loaded: nn.Module) -> None:
    want, got = expected.state_dict(), loaded.state_dict()
    assert list(got) == list(want)
    for key, value in want.items():
        assert got[key].dtype == value.dtype and torch.equal(got[key], value), key


@pytest.mark.parametrize("kind", sorted(CASES))
def test_round_trip_keeps_weights_kind_config_and_metadata(kind: str, tmp_path: Path) -> None:
    case = CASES[kind]
    torch.manual_seed(0)
    model = case.build()
    path = tmp_path / f"{kind}.pt"
    case.save(path, model)
    checkpoint = load_checkpoint(path, kind)
    assert (checkpoint.kind, checkpoint.version) == (kind, CHECKPOINT_VERSION)
    assert checkpoint.config == case.config and checkpoint.metadata == case.metadata
    loaded, meta = case.load(path)
    assert_same_weights(model, loaded)
    assert meta == case.metadata | case.config
    assert not loaded.training


@pytest.mark.parametrize("kind", sorted(CASES))
def test_a_file_of_the_old_layout_loads(kind: str, tmp_path: Path) -> None:
    case = CASES[kind]
    torch.manual_seed(1)
    model = case.build()
    path = tmp_path / f"old_{kind}.pt"
    torch.save(case.legacy(model), path)
    checkpoint = load_checkpoint(path, kind)
    assert (checkpoint.kind, checkpoint.version) == (kind, 0)
    # the old detector layout kept its input sizes only in its settings: load_detector reads them there
    config = {"num_classes": case.config["num_classes"]} if kind == "detector" else case.config
    assert checkpoint.config == config and checkpoint.metadata == case.metadata
    loaded, meta = case.load(path)
    assert_same_weights(model, loaded)
    assert meta == case.metadata | case.config


def test_the_detector_is_rebuilt_at_its_input_sizes(tmp_path: Path) -> None:
    case = CASES["detector"]
    torch.save(case.legacy(case.build()), tmp_path / "old.pt")
    loaded, _ = load_detector(tmp_path / "old.pt")
    assert (loaded.transform.min_size, loaded.transform.max_size) == ((160,), 256)


def test_shipped_checkpoints_are_version_1() -> None:
    for path, kind in (
        (SHIPPED_SEMANTIC_STUDENT, "semantic_student"),
        (SHIPPED_INSTANCE_STUDENT, "instance_student"),
        (SHIPPED_CAM, "cam"),
    ):
        checkpoint = load_checkpoint(path, kind, mmap=True)
        assert checkpoint.version == 1 and checkpoint.weights, path


def test_checkpoint_task_reads_new_and_old_student_files(tmp_path: Path) -> None:
    weights = {"w": torch.zeros(2)}
    old_semantic = {"name": "fpn-mobilenetv2", "num_classes": 3, "state_dict": weights, "kind": "scribbles"}
    old_instance = {"name": "m2f-r18", "num_classes": 1, "kind": "instance", "state_dict": weights}
    torch.save(old_semantic, tmp_path / "old_semantic.pt")
    torch.save(old_instance, tmp_path / "old_instance.pt")
    save_checkpoint(
        tmp_path / "instance.pt", "instance_student", {"name": "m2f-r18", "num_classes": 1}, weights
    )
    save_checkpoint(tmp_path / "semantic.pt", "semantic_student", {"name": "x", "num_classes": 1}, weights)
    save_checkpoint(tmp_path / "cam.pt", "cam", CAM_CONFIG, weights)
    assert checkpoint_task(tmp_path / "old_semantic.pt") == "semantic"
    assert checkpoint_task(tmp_path / "old_instance.pt") == "instance"
    assert checkpoint_task(tmp_path / "instance.pt") == "instance"
    assert checkpoint_task(tmp_path / "semantic.pt") == "semantic"
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'cam.pt'}: a 'cam' checkpoint")):
        checkpoint_task(tmp_path / "cam.pt")


def named(path: Path, message: str) -> str:
    """A pattern for an error that starts with the file's path."""
    return re.escape(f"{path}: ") + message


@pytest.mark.parametrize("kind", sorted(LOADERS))
def test_a_missing_or_foreign_file_is_an_error_naming_it(kind: str, tmp_path: Path) -> None:
    load, what = LOADERS[kind]
    missing = tmp_path / "missing.pt"
    with pytest.raises(ValueError, match=named(missing, f"no such {what}")):
        load(missing)
    text = tmp_path / "text.pt"
    text.write_text("not a checkpoint")
    with pytest.raises(ValueError, match=named(text, f"cannot read the {what}: not a file torch.save wrote")):
        load(text)
    other = tmp_path / "other.pt"
    torch.save({"x": torch.zeros(1)}, other)
    with pytest.raises(ValueError, match=named(other, f"not a {what}")):
        load(other)
    listed = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], listed)
    with pytest.raises(ValueError, match=named(listed, f"not a {what}")):
        load(listed)


def test_another_kind_is_an_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "cam.pt"
    save_cam_classifier(path, CamClassifier("fpn-mobilenetv2", 3, 16))
    with pytest.raises(ValueError, match=named(path, "a 'cam' checkpoint, expected student checkpoint")):
        load_student(path)
    old = tmp_path / "old_cam.pt"
    torch.save(CASES["cam"].legacy(CamClassifier("fpn-mobilenetv2", 3, 16)), old)
    with pytest.raises(ValueError, match=named(old, "not a WSOD checkpoint")):
        load_wsod(old)
    with pytest.raises(ValueError, match=named(old, "not a student checkpoint")):
        load_student(old)


def test_a_newer_version_is_an_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "s.pt"
    save_student(path, build_student("fpn-mobilenetv2", 2), "fpn-mobilenetv2", 2)
    payload = torch.load(path, weights_only=True)
    torch.save(payload | {"version": CHECKPOINT_VERSION + 1}, path)
    with pytest.raises(ValueError, match=named(path, f"checkpoint layout version {CHECKPOINT_VERSION + 1}")):
        load_student(path)
    torch.save(payload | {"weights": [1, 2]}, path)
    with pytest.raises(ValueError, match=named(path, "a damaged student checkpoint")):
        load_student(path)


def test_export_half_writes_fp16_weights_in_the_new_layout(tmp_path: Path) -> None:
    from sesam.cli import main

    torch.manual_seed(2)
    model = build_student("fpn-mobilenetv2", 3)
    old = tmp_path / "old.pt"
    torch.save(CASES["semantic_student"].legacy(model), old)
    out = tmp_path / "half.pt"
    args = ["export", "half", "--checkpoint", str(old), "--out", str(out), "--note", "by hand"]
    assert main([*args, "--class-names", "x, y, z"]) == 0
    checkpoint = load_checkpoint(out, "semantic_student")
    assert checkpoint.version == CHECKPOINT_VERSION and checkpoint.config == CASES["semantic_student"].config
    assert checkpoint.metadata == SEMANTIC_EXTRA | {"trained_with": "by hand", "class_names": ["x", "y", "z"]}
    for key, value in model.state_dict().items():
        stored = checkpoint.weights[key]
        assert stored.dtype == (torch.float16 if value.is_floating_point() else value.dtype), key
        assert torch.equal(stored, value.half() if value.is_floating_point() else value), key
    assert main([*args, "--class-names", "x,y"]) == 2  # 2 names for 3 classes


def test_a_folder_given_for_a_checkpoint_is_named_as_a_folder(tmp_path) -> None:
    """A folder where a checkpoint file is meant is said to be a folder, not reported missing."""
    import pytest

    from models.engine.modeling.build import CheckpointError, load_state_dict
    from models.io import load_checkpoint
    from models.students.cam import cam_predictor

    with pytest.raises(ValueError, match=r": a folder, not a CAM checkpoint file"):
        load_checkpoint(tmp_path, "cam", what="CAM checkpoint")
    with pytest.raises(
        ValueError, match=r"needs a CAM classifier file and .*: a folder, not a checkpoint file"
    ):
        cam_predictor(tmp_path)
    with pytest.raises(CheckpointError, match=r": a folder, not a checkpoint file"):
        load_state_dict(tmp_path)
    with pytest.raises(CheckpointError, match=r"nope\.pt: no such checkpoint"):
        load_state_dict(tmp_path / "nope.pt")


def test_torch_keeps_its_reason_for_a_file_torch_save_wrote(tmp_path) -> None:
    """A legacy-format torch.save file that weights-only loading refuses keeps torch's reason in
    the message; a file torch.save never wrote says so instead of torch's internals."""
    import argparse

    import pytest
    import torch

    from models.engine.modeling.build import CheckpointError, load_state_dict
    from models.io import load_checkpoint

    legacy = tmp_path / "legacy.pt"
    torch.save(
        {"w": torch.zeros(1), "args": argparse.Namespace()}, legacy, _use_new_zipfile_serialization=False
    )
    with pytest.raises(ValueError, match=r"legacy\.pt: cannot read the checkpoint: Weights only load failed"):
        load_checkpoint(legacy, "student")
    with pytest.raises(
        CheckpointError, match=r"legacy\.pt: cannot read the checkpoint: Weights only load failed"
    ):
        load_state_dict(legacy, verify_hash=False)
    text = tmp_path / "notes.pt"
    text.write_text("hello")
    with pytest.raises(
        ValueError, match=r"notes\.pt: cannot read the checkpoint: not a file torch\.save wrote$"
    ):
        load_checkpoint(text, "student")
