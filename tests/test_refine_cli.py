"""`sesam weak derive`, `sesam refine` and `sesam eval-labels` on files, including bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sesam.cli import main
from tests.conftest import require_data


def _folder(tmp_path, scene):
    images, weak = tmp_path / "images", tmp_path / "weak"
    images.mkdir()
    weak.mkdir()
    for stem in ("a", "b"):
        Image.fromarray(scene).save(images / f"{stem}.png")
        coarse = np.full(scene.shape[:2], 255, np.uint8)
        coarse[80:180, 70:180] = 4
        Image.fromarray(coarse).save(weak / f"{stem}.png")
    return images, weak


def _refine_args(images, weak, out, *extra: str) -> list[str]:
    """`sesam refine` of a folder on the classical prior, with `extra` flags."""
    return [
        "refine",
        "--images",
        str(images),
        "--weak",
        str(weak),
        "--out",
        str(out),
        "--backend",
        "classical",
        *extra,
    ]


def test_refine_folder_resume_report_and_failures(tmp_path, scene, capsys) -> None:
    images, weak = _folder(tmp_path, scene)
    (images / "broken.jpg").write_bytes(b"not an image")
    Image.fromarray(scene).save(images / "bad_class.png")
    (weak / "bad_class.json").write_text(
        json.dumps({"version": 1, "width": 480, "height": 360, "points": [{"x": 5, "y": 5, "class_id": 40}]})
    )
    Image.fromarray(scene).save(images / "no_labels.png")
    out = tmp_path / "out"
    args = _refine_args(images, weak, out, "--method", "sesam", "--num-classes", "11", "--report", "--quiet")
    assert main(args) == 1
    captured = capsys.readouterr()
    assert "3 image(s) failed" in captured.err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["refined"] == 2 and summary["failed"] == 3
    assert "class_id = 40 is out of range for 11 classes" in summary["failures"]["bad_class"]
    assert "not a readable image" in summary["failures"]["broken"]
    assert "no weak labels" in summary["failures"]["no_labels"]
    assert {p.name for p in out.glob("*.png")} == {"a.png", "b.png"}
    assert (out / "overlays" / "a.png").exists() and "overlays/a.png" in (out / "report.html").read_text()
    refined = np.asarray(Image.open(out / "a.png"))
    assert refined.shape == (360, 480) and (refined[80:180, 70:180] == 4).all()
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]

    for stem in ("broken", "bad_class", "no_labels"):
        for p in images.glob(f"{stem}.*"):
            p.unlink()
    before = (out / "a.png").stat().st_mtime_ns
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["skipped_existing"] == 2 and summary["refined"] == 0
    assert (out / "a.png").stat().st_mtime_ns == before


def test_sepl_through_the_cli_equals_in_process(tmp_path, scene, capsys) -> None:
    """`sesam refine --method sepl` writes what SEPLLabeler computes, with the classical defaults."""
    from models.engine.classical import ClassicalPrior
    from models.labels import backend_defaults, build_labeler
    from models.labels.schema import load_weak_labels

    images, weak = _folder(tmp_path, scene)
    out = tmp_path / "out"
    args = ["refine", "--images", str(images), "--weak", str(weak), "--out", str(out), "--method", "sepl"]
    assert main([*args, "--points-per-side", "8", "--backend", "classical", "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == "sepl" and summary["options"]["points_per_side"] == 8
    assert summary["options"]["pred_iou_thresh"] == 0.0  # the classical prior's scores are not SAM's IoU
    engine = ClassicalPrior()
    options = backend_defaults("sepl", engine.name, {"points_per_side": 8})
    expected = build_labeler("sepl", engine, **options).refine(scene, load_weak_labels(weak, "a")).labels
    assert np.array_equal(np.asarray(Image.open(out / "a.png")), expected)
    assert (expected != 255).sum() > (np.asarray(Image.open(weak / "a.png")) != 255).sum()


def test_sesam_additions_through_the_cli_equal_in_process(tmp_path, scene) -> None:
    """`--negatives 2 --exclude-conflicts` reach SeSAM's options (summary and pixels) and change
    the answer for points of three classes against the paper's rule."""
    from models.engine.classical import ClassicalPrior
    from models.labels import SeSAMLabeler, SeSAMOptions
    from models.labels.schema import load_weak_labels

    images, weak = tmp_path / "images", tmp_path / "weak"
    images.mkdir()
    weak.mkdir()
    Image.fromarray(scene).save(images / "a.png")
    points = [
        {"x": 120, "y": 130, "class_id": 4},
        {"x": 300, "y": 60, "class_id": 1},
        {"x": 400, "y": 300, "class_id": 2},
    ]
    (weak / "a.json").write_text(json.dumps({"version": 1, "width": 480, "height": 360, "points": points}))
    out = tmp_path / "out"
    assert main(_refine_args(images, weak, out, "--negatives", "2", "--exclude-conflicts", "--quiet")) == 0
    options = json.loads((out / "summary.json").read_text())["options"]
    assert options["negatives"] == 2 and options["exclude_conflicts"] is True
    weak_labels = load_weak_labels(weak, "a")
    engine = ClassicalPrior()
    ours = (
        SeSAMLabeler(engine, SeSAMOptions(negatives=2, exclude_conflicts=True))
        .refine(scene, weak_labels)
        .labels
    )
    assert np.array_equal(np.asarray(Image.open(out / "a.png")), ours)
    assert not np.array_equal(ours, SeSAMLabeler(engine).refine(scene, weak_labels).labels)


def test_refine_rejects_bad_folders(tmp_path, capsys) -> None:
    assert (
        main(["refine", "--images", str(tmp_path / "none"), "--weak", str(tmp_path), "--out", str(tmp_path)])
        == 2
    )
    assert f"--images {tmp_path / 'none'}: not a folder" in capsys.readouterr().err


def test_derive_refine_then_eval(tmp_path, capsys) -> None:
    """derive -> refine -> eval-labels: the report scores the refined labels against the ground
    truth, counts the pixels refinement added, and agrees with the metrics computed in-process."""
    import pytest

    from models.io import read_label_png
    from models.labels.schema import load_weak_labels
    from training.metrics import AddedLabelQuality, ConfusionMatrix

    camvid = require_data("camvid")
    weak, refined, gt = tmp_path / "weak", tmp_path / "refined", tmp_path / "gt"
    derive = ["weak", "derive", "--root", str(camvid), "--split", "val", "--kind", "coarse"]
    assert main([*derive, "--out", str(weak), "--limit", "3", "--quiet"]) == 0
    derived = json.loads(capsys.readouterr().out)
    assert derived["images"] == 3 and 0.4 < derived["coverage"] < 0.8
    gt.mkdir()
    images = tmp_path / "images"
    images.mkdir()
    for png in sorted(weak.glob("*.png")):
        shutil.copy(camvid / "labels" / "val" / png.name, gt / png.name)
        shutil.copy(camvid / "images" / "val" / f"{png.stem}.jpg", images / f"{png.stem}.jpg")
    refine = ["refine", "--images", str(images), "--weak", str(weak), "--out", str(refined)]
    assert main([*refine, "--backend", "classical", "--quiet"]) == 0
    capsys.readouterr()
    score = [
        "eval-labels",
        "--gt",
        str(gt),
        "--num-classes",
        "11",
        "--ignore-index",
        "11",
        "--weak",
        str(weak),
    ]
    assert main([*score, "--pred", str(refined)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert main([*score, "--pred", str(weak)]) == 0
    raw = json.loads(capsys.readouterr().out)
    assert report["images"] == 3 and report["added_pixels"] > 0 and raw["added_pixels"] == 0
    assert raw["coverage"] == pytest.approx(derived["coverage"])
    assert report["coverage"] > raw["coverage"]
    conf, added = ConfusionMatrix(11, 11), AddedLabelQuality(11)
    for png in sorted(gt.glob("*.png")):
        truth, pred = read_label_png(png), read_label_png(refined / png.name)
        conf.update(pred, truth)
        added.update(load_weak_labels(weak, png.stem).sparse_map(), pred, truth)
    assert report["miou"] == pytest.approx(conf.miou())
    assert report["added_pixels"] == added.added and report["added_precision"] == pytest.approx(
        added.precision()
    )


def test_set_reaches_sesam_and_an_unknown_option_is_refused(tmp_path, scene, capsys) -> None:
    """`--set key=value` reaches SeSAM's options as it reaches every other method's (it was dropped
    for sesam, the default method); an option SeSAM does not have is one error line, exit 2."""
    images, weak = _folder(tmp_path, scene)
    out = tmp_path / "out"
    assert (
        main(_refine_args(images, weak, out, "--set", "tau2=0.5", "--set", "k=3", "--quiet", "--limit", "1"))
        == 0
    )
    options = json.loads((out / "summary.json").read_text())["options"]
    assert options["tau2"] == 0.5 and options["k"] == 3
    capsys.readouterr()
    assert main(_refine_args(images, weak, tmp_path / "out2", "--set", "nonsense=1", "--quiet")) == 2
    err = capsys.readouterr().err
    assert "nonsense" in err and len(err.strip().splitlines()) == 1


def test_a_run_whose_every_image_fails_says_why_once(tmp_path, scene, capsys) -> None:
    """A problem with the whole run (here: a weak-label folder with nothing in it) fails every image
    with one reason: stderr gives it once beside the stems, not the stems alone."""
    from models.jobs.cli import failure_line

    images, _ = _folder(tmp_path, scene)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(_refine_args(images, empty, tmp_path / "out", "--quiet")) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("sesam refine: 2 image(s) failed: a: ") and "no weak labels for 'a'" in err
    assert len(err.splitlines()) == 1
    same = {f"s{i}": "bad checkpoint" for i in range(5)}
    assert failure_line(same) == "5 image(s) failed: s0, s1, s2 and 2 more: bad checkpoint"
    mixed = {"a": "x", "b": "y", "c": "x", "d": "z", "e": "w"}
    assert failure_line(mixed) == "5 image(s) failed: a, c: x; b: y; d: z; 1 other errors (summary.json)"


def test_an_interrupted_folder_run_starts_no_more_images(tmp_path) -> None:
    """Ctrl-C (or any error that ends the run) reaches the folder loop between images: the images
    in flight finish (their outputs are atomic), the queued ones never start. It used to send and
    write every queued image before the interrupt took effect."""
    import threading
    import time

    from models.jobs.folders import run_local

    started: list[str] = []
    lock = threading.Lock()

    class Slow:
        errors = (ValueError,)

        def setup(self) -> None:
            pass

        def __call__(self, stem: str, path) -> None:
            with lock:
                started.append(stem)
            time.sleep(0.05)

    items = [(f"s{i:02d}", tmp_path / f"s{i:02d}.png") for i in range(40)]
    with pytest.raises(KeyboardInterrupt):
        for done, (_stem, _error) in enumerate(run_local(items, Slow(), concurrency=2), start=1):
            if done == 3:
                raise KeyboardInterrupt
    assert 3 <= len(started) <= 6, started  # the three done, those in flight; never the other ~35


def test_an_overlay_folder_that_cannot_be_made_fails_before_any_image(tmp_path, scene, capsys) -> None:
    """`--overlays` where no folder can be made is one error (exit 2) before any image is refined
    (it used to fail after the first image's label map was written)."""
    images, weak = _folder(tmp_path, scene)
    blocker = tmp_path / "blocker"
    blocker.write_text("a file")
    out = tmp_path / "out"
    assert main(_refine_args(images, weak, out, "--overlays", str(blocker / "sub"), "--quiet")) == 2
    assert str(blocker) in capsys.readouterr().err
    assert not list(out.glob("*.png"))


def test_a_folder_of_another_run_is_refused_not_resumed(tmp_path, scene, capsys) -> None:
    """Resume is for the same run: refining into a folder made with another method or other
    options would skip every image as done and write a summary naming what never ran on them; it
    is one error naming what differs (exit 2), and --overwrite redoes every image."""
    images, weak = _folder(tmp_path, scene)
    out = tmp_path / "out"
    assert main(_refine_args(images, weak, out, "--method", "sesam", "--num-classes", "11", "--quiet")) == 0
    other = _refine_args(images, weak, out, "--method", "naive", "--num-classes", "11", "--quiet")
    assert main(other) == 2
    err = capsys.readouterr().err
    assert "holds the outputs of another run" in err and 'method: "sesam" -> "naive"' in err
    assert json.loads((out / "summary.json").read_text())["method"] == "sesam"  # left as it was
    assert main([*other, "--overwrite"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == "naive" and summary["refined"] == 2 and summary["skipped_existing"] == 0


def test_a_restaged_export_leaves_no_labels_of_the_earlier_one(tmp_path, scene) -> None:
    """A labeling tool's export is staged afresh on every run: an image the new export does not
    cover has no weak labels (before: the earlier export's staged file was read)."""
    from models.jobs.refine import stage_weak_labels

    def export(path: Path, names: list[str]) -> Path:
        images = [
            {"id": i + 1, "file_name": f"{n}.png", "width": 480, "height": 360} for i, n in enumerate(names)
        ]
        boxes = [
            {"id": i + 1, "image_id": i + 1, "category_id": 1, "bbox": [70, 80, 110, 100], "iscrowd": 0}
            for i in range(len(names))
        ]
        coco = {"images": images, "annotations": boxes, "categories": [{"id": 1, "name": "thing"}]}
        path.write_text(json.dumps(coco))
        return path

    out = tmp_path / "out"
    folder, _ = stage_weak_labels(export(tmp_path / "two.json", ["a", "b"]), "coco-boxes", out)
    assert sorted(p.stem for p in folder.iterdir()) == ["a", "b"]
    folder, _ = stage_weak_labels(export(tmp_path / "one.json", ["a"]), "coco-boxes", out)
    assert sorted(p.stem for p in folder.iterdir()) == ["a"]
    # a folder refined from other weak labels is refused before its staging is replaced
    images, weak = _folder(tmp_path, scene)
    done = tmp_path / "done"
    assert main(_refine_args(images, weak, done, "--num-classes", "11", "--quiet")) == 0
    with pytest.raises(ValueError, match="holds the outputs of another run"):
        stage_weak_labels(export(tmp_path / "other.json", ["a"]), "coco-boxes", done)
    assert not (done / ".weak").exists() and not (done / "classes.json").exists()


def test_a_report_asked_on_a_resumed_run_draws_the_missing_overlays(tmp_path, scene) -> None:
    """Images done by a run without overlays are done again when a report is asked for, so the
    report never links a picture that was not drawn (before: all skipped, every picture broken)."""
    images, weak = _folder(tmp_path, scene)
    out = tmp_path / "out"
    assert main(_refine_args(images, weak, out, "--num-classes", "11", "--quiet")) == 0
    assert main(_refine_args(images, weak, out, "--num-classes", "11", "--quiet", "--report")) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["refined"] == 2 and summary["skipped_existing"] == 0
    assert sorted(p.name for p in (out / "overlays").iterdir()) == ["a.png", "b.png"]
    assert main(_refine_args(images, weak, out, "--num-classes", "11", "--quiet", "--report")) == 0
    assert json.loads((out / "summary.json").read_text())["skipped_existing"] == 2


def test_the_run_record_blocks_only_images_made_another_way(tmp_path, scene, monkeypatch) -> None:
    """A run that made no image (every image failed) does not block its corrected rerun; one weak
    folder given relative or absolute is one run; an --overwrite run stopped after one image
    resumes as the new run (it redoes the image the earlier run made, not skips it)."""
    images, weak = _folder(tmp_path, scene)
    out = tmp_path / "out"
    assert main(_refine_args(images, weak, out, "--num-classes", "3", "--quiet")) == 1  # class 4 >= 3
    assert main(_refine_args(images, weak, out, "--num-classes", "11", "--quiet")) == 0
    monkeypatch.chdir(tmp_path)
    assert main(_refine_args(images, "weak", out, "--num-classes", "11", "--quiet")) == 0
    assert json.loads((out / "summary.json").read_text())["skipped_existing"] == 2
    naive = _refine_args(images, weak, out, "--num-classes", "11", "--quiet", "--method", "naive")
    assert main([*naive, "--overwrite", "--limit", "1"]) == 0  # stands for a run stopped after "a"
    assert main(naive) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == "naive" and summary["skipped_existing"] == 1 and summary["refined"] == 1
