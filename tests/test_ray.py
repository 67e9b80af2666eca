"""Batch refinement and segmentation on a real local Ray cluster (2 CPUs): outputs byte-equal to the
local path, a failing image reported and not fatal, a run killed mid-way resumed with nothing lost."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sesam.cli import main
from tests.conftest import REPO

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")


@pytest.fixture(scope="module", autouse=True)
def cluster():
    """One local cluster for the module (2 CPUs, like CI); the CLI's `--ray` joins it."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield
    ray.shutdown()


def _folder(root: Path, scene: np.ndarray, count: int) -> tuple[Path, Path]:
    """`count` variants of the scene with a coarse weak label each, and one broken image."""
    images, weak = root / "images", root / "weak"
    images.mkdir(parents=True)
    weak.mkdir()
    for i in range(count):
        picture = np.roll(scene, 17 * i, axis=1)
        Image.fromarray(picture).save(images / f"img{i:02d}.png")
        coarse = np.full(scene.shape[:2], 255, np.uint8)
        coarse[80:180, 70 + 17 * i : 180 + 17 * i] = 4
        coarse[250:300, 20:60] = 1
        Image.fromarray(coarse).save(weak / f"img{i:02d}.png")
    (images / "zz_broken.jpg").write_bytes(b"not an image")
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(weak / "zz_broken.png")
    return images, weak


def _refine(images: Path, weak: Path, out: Path, *extra: str) -> list[str]:
    return [
        "refine",
        *("--images", str(images), "--weak", str(weak), "--out", str(out)),
        *("--method", "sesam", "--backend", "classical", "--quiet", *extra),
    ]


def _pngs(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.png"))}


def test_segment_on_ray_equals_local(tmp_path, scene, instance_checkpoint) -> None:
    """Equal thread counts (Ray actors get one CPU each): float sums, hence answers, are identical."""
    images, _ = _folder(tmp_path, scene, 1)
    for student in (None, str(instance_checkpoint)):
        chosen = [] if student is None else ["--student", student, "--min-score", "0"]
        base = ["segment", "--images", str(images), "--quiet", "--threads", "1", *chosen]
        assert main([*base, "--out", str(tmp_path / f"local{bool(student)}")]) == 1
        assert main([*base, "--out", str(tmp_path / f"ray{bool(student)}"), "--ray", "auto"]) == 1
        pattern = "*.png" if student is None else "*.json"
        local = {p.name: p.read_bytes() for p in (tmp_path / f"local{bool(student)}").glob(pattern)}
        remote = {p.name: p.read_bytes() for p in (tmp_path / f"ray{bool(student)}").glob(pattern)}
        local.pop("summary.json", None)
        remote.pop("summary.json", None)
        # besides the answer: coco.json, coco_results.json, label_studio.json, .run.json (equal too)
        answers = [name for name in local if not name.startswith(("coco", "label_studio", "."))]  # .run.json
        assert len(answers) == 1 and local == remote


def test_interrupted_ray_run_resumes_with_nothing_lost_and_equals_local(tmp_path, scene) -> None:
    """Start `sesam refine --ray` in another process, kill it once some images are done, run again
    on Ray: the second run skips what was finished, every output is complete, no temporary file is
    left, the broken image is reported (not fatal), and the label maps are byte-equal to a local run."""
    images, weak = _folder(tmp_path, scene, 10)
    out = tmp_path / "ray"
    command = [sys.executable, "-m", "sesam.cli", *_refine(images, weak, out, "--ray", "--ray-workers", "1")]
    env = dict(os.environ, BENTOML_DO_NOT_TRACK="true")
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    try:
        while not list((out / ".meta").glob("*.json")):
            assert proc.poll() is None, "the run ended before it could be interrupted"
            assert time.monotonic() < deadline, "no image finished in 300 s"
            time.sleep(0.2)
    finally:  # killed outright, like a lost machine: no clean-up runs (Ray's own processes share its fate)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    done_before = len(list((out / ".meta").glob("*.json")))
    assert 1 <= done_before < 10, "interrupted too late to test resuming"
    assert main(_refine(images, weak, out, "--ray", "auto", "--ray-workers", "2")) == 1  # the broken image
    summary = json.loads((out / "summary.json").read_text())
    assert (
        summary["skipped_existing"] >= done_before and summary["refined"] + summary["skipped_existing"] == 10
    )
    assert summary["failed"] == 1 and "not a readable image" in summary["failures"]["zz_broken"]
    assert summary["ray"]["workers"] == 2
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]
    assert main(_refine(images, weak, tmp_path / "local")) == 1
    local = _pngs(tmp_path / "local")
    assert len(local) == 10 and _pngs(out) == local
