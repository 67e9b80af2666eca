"""Regressions for issue 13's user-facing bugs: each test failed on the code before the fix."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from models.engine import EngineConfig, build_engine
from models.io import UNLABELED
from models.labels import SeSAMLabeler, SeSAMOptions, check_weak_kinds
from models.labels.schema import WeakLabels
from models.runtime.deps import MissingDependency
from serving.codec import MIN_RING_AREA, decode_polygons, encode_polygons, ring_area
from sesam.cli import main
from tests.test_training import tiny_config, tiny_dataset
from training.datasets import CamVid
from training.protocols import derive
from training.trainer import TrainConfig, Trainer


def _write_folder(root: Path, n: int = 3, weak: bool = True, gt: bool = True, ext: str = "png") -> None:
    ds = tiny_dataset(n)
    for sub in ("images", "weak", "gt"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for stem, image, labels, dense in zip(ds.stems, ds.images, ds.weak, ds.gt):
        Image.fromarray(image).save(root / "images" / f"{stem}.{ext}")
        if weak:
            (root / "weak" / f"{stem}.json").write_text(json.dumps(labels.to_json()))
        if gt:
            Image.fromarray(dense).save(root / "gt" / f"{stem}.png")


# 1. validation from plain folders needs images and dense labels only
def test_validation_from_folders_reads_no_weak_labels(tmp_path) -> None:
    _write_folder(tmp_path / "train")
    _write_folder(tmp_path / "val", weak=False)
    cfg = tiny_config(
        tmp_path,
        "weak",
        iterations=2,
        train_images=str(tmp_path / "train" / "images"),
        train_weak=str(tmp_path / "train" / "weak"),
        val_images=str(tmp_path / "val" / "images"),
        val_gt=str(tmp_path / "val" / "gt"),
    )
    summary = Trainer(cfg).train()
    assert summary["val_miou"] is not None and len(summary["val_per_class_iou"]) == 3


# 2. confidence sampling: runs in training (teacher probabilities), refused by `sesam refine`
def test_confidence_sampling_trains_end_to_end(tmp_path) -> None:
    cfg = tiny_config(tmp_path, "sesam", iterations=3, sesam={"sampling": "confidence"})
    trainer = Trainer(cfg, train_ds=tiny_dataset(), val_ds=None)
    trainer.train()
    assert trainer.sam_labels and any((m != UNLABELED).any() for m in trainer.sam_labels.values())


def test_confidence_sampling_is_refused_by_refine_at_parsing(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["refine", "--images", "x", "--weak", "y", "--out", "z", "--sampling", "confidence"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "runs in training only" in err and "Traceback" not in err


def test_theta2_has_one_source_of_truth(tmp_path) -> None:
    assert "theta2" not in TrainConfig.__dataclass_fields__
    assert SeSAMOptions().theta2 == 0.98
    with pytest.raises(ValueError, match=r"theta2 is a SeSAM option now; write it as sesam: \{theta2"):
        TrainConfig.from_mapping({"camvid_root": "x", "theta2": 0.9})


# 3. naive-sam labels are reused only when engine, options and weak labels match
def test_naive_sam_labels_are_keyed_by_what_they_depend_on(tmp_path) -> None:
    ds = tiny_dataset()

    def run(out: str, **kw) -> set[Path]:
        Trainer(
            tiny_config(tmp_path / out, "naive-sam", iterations=1, **kw), train_ds=ds, val_ds=None
        ).train()
        return set((tmp_path / out / "naive-sam" / "naive_labels").rglob("*.png"))

    first = run("a")
    assert len(first) == len(ds)
    assert run("a") == first  # the same settings reuse them
    other_scales = run("a", engine={"backend": "classical", "classical": {"scale": 30}}, resume=False)
    assert len(other_scales - first) == len(ds)  # another engine: a new folder, nothing reused
    other_options = run("a", naive={"scribble_points": 3}, resume=False)
    assert len(other_options - other_scales - first) == len(ds)
    # options the engine reads only when it answers, and the working side, are part of the key too
    decoding = {"backend": "classical", "classical": {"thresholds": [0.9, 0.8, 0.6]}}
    other_decoding = run("a", engine=decoding, resume=False)
    assert len(other_decoding - other_options - other_scales - first) == len(ds)
    other_side = run("a", engine={"backend": "classical", "working_side": 64}, resume=False)
    assert len(other_side - other_decoding - other_options - other_scales - first) == len(ds)
    points = tiny_dataset()
    points.weak = [derive("points", gt, None, 0, str(i)) for i, gt in enumerate(points.gt)]
    Trainer(
        tiny_config(tmp_path / "a", "naive-sam", iterations=1, resume=False), train_ds=points, val_ds=None
    ).train()
    all_labels = set((tmp_path / "a" / "naive-sam" / "naive_labels").rglob("*.png"))
    assert len(all_labels) == 6 * len(ds)  # other weak labels for the same stems: redone
    moved = tiny_dataset()
    moved.images = [np.ascontiguousarray(img[:, ::-1]) for img in moved.images]
    Trainer(
        tiny_config(tmp_path / "a", "naive-sam", iterations=1, resume=False), train_ds=moved, val_ds=None
    ).train()
    after = set((tmp_path / "a" / "naive-sam" / "naive_labels").rglob("*.png"))
    assert len(after - all_labels) == len(ds)  # other pixels under the same stems: redone


def test_resume_with_another_student_names_the_field(tmp_path) -> None:
    ds = tiny_dataset()
    Trainer(tiny_config(tmp_path, "weak", iterations=1), train_ds=ds, val_ds=None).train()
    other = Trainer(
        tiny_config(tmp_path, "weak", iterations=2, student="segformer-b0"), train_ds=ds, val_ds=None
    )
    with pytest.raises(ValueError, match=r"student: 'fpn-mobilenetv2' -> 'segformer-b0'"):
        other.train()


# 4. a missing optional dependency: one error type naming the extra; the CLI prints one line
def test_missing_tensorrt_is_one_clear_line(tiny_export, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # missing even where it is installed
    export_dir = tiny_export
    with pytest.raises(MissingDependency, match=r"sesam\[tensorrt\]"):
        build_engine(EngineConfig(backend="tensorrt", export_dir=str(export_dir)))
    _write_folder(tmp_path / "data")
    monkeypatch.setenv("SESAM_BACKEND", "tensorrt")
    monkeypatch.setenv("SESAM_EXPORT_DIR", str(export_dir))
    data = tmp_path / "data"
    code = main(
        [
            "refine",
            "--images",
            str(data / "images"),
            "--weak",
            str(data / "weak"),
            "--out",
            str(tmp_path / "o"),
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "sesam[tensorrt]" in err and "Traceback" not in err


def test_missing_triton_client_raises_the_same_type(monkeypatch) -> None:
    import sys

    from models.runtime.deps import require

    monkeypatch.setitem(sys.modules, "tritonclient", None)  # None in sys.modules: import fails
    monkeypatch.setitem(sys.modules, "tritonclient.http", None)
    with pytest.raises(MissingDependency, match=r"backend triton needs tritonclient, .*sesam\[triton\]"):
        require("tritonclient.http", "triton", "backend triton")


# 5. CamVid with PNG images (the public distribution)
def test_camvid_reader_takes_png_images(tmp_path) -> None:
    root = tmp_path / "camvid"
    (root / "images" / "train").mkdir(parents=True)
    (root / "labels" / "train").mkdir(parents=True)
    for stem in ("a", "b"):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "images" / "train" / f"{stem}.png")
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "labels" / "train" / f"{stem}.png")
    (root / "train.txt").write_text("a\nb\n")
    samples = CamVid(root, "train").samples()
    assert [s.image.name for s in samples] == ["a.png", "b.png"]
    (root / "train.txt").write_text("a\nb\nc\n")
    with pytest.raises(ValueError, match="no image for 'c'"):
        CamVid(root, "train").samples()


# 6. tags alone for a labeler that reads no tags: refused with the field named, in-process and in `sesam refine`
def test_tags_only_weak_labels_are_refused(tmp_path, capsys) -> None:
    engine = build_engine(EngineConfig(backend="classical"))
    labeler = SeSAMLabeler(engine)
    with pytest.raises(
        ValueError,
        match=r"weak: tags given; the sesam labeler reads .* \(image tags: use sepl, weaksam or grounded",
    ):
        check_weak_kinds(labeler, WeakLabels(8, 8, tags=[1]), "weak")
    _write_folder(tmp_path)
    (tmp_path / "weak" / "img0.json").write_text(json.dumps(WeakLabels(64, 96, tags=[1]).to_json()))
    code = main(
        [
            "refine",
            "--images",
            str(tmp_path / "images"),
            "--weak",
            str(tmp_path / "weak"),
            "--out",
            str(tmp_path / "out"),
            "--quiet",
        ]
    )
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert (
        code == 1
        and summary["failed"] == 1
        and "use sepl, weaksam or grounded" in summary["failures"]["img0"]
    )
    assert summary["refined"] == 2 and not (tmp_path / "out" / "img0.png").exists()


# 7. polygons: no zero-area rings; a mask with no ring left answers []
@pytest.mark.parametrize("seed", range(5))
def test_polygons_have_no_degenerate_rings(seed: int) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(200):
        mask = rng.random((8, 8)) < 0.3
        for poly in encode_polygons(mask):
            ring = np.asarray(poly).reshape(-1, 2)
            assert len(np.unique(ring, axis=0)) >= 3
            assert ring_area(ring[:, ::-1]) >= MIN_RING_AREA
    assert encode_polygons(np.zeros((6, 6), bool)) == []
    assert encode_polygons(np.ones((6, 6), bool), min_area=100.0) == []
    lone = np.zeros((8, 8), bool)
    lone[1, 7] = True  # its simplified ring was 3 points on a line
    (ring,) = encode_polygons(lone)
    assert decode_polygons([ring], 8, 8).sum() <= 1
