"""Shared fixtures: a seeded tiny SAM, synthetic and real images, GPU marker handling, and
`require_data`, the one way a test reaches the shared data sets (missing data fails, never skips)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
CAMVID = DATA / "camvid"


# where each shared data set comes from (its README.md under ../shared/data/<name> has the layout)
DATA_SOURCES = {
    "camvid": "CamVid 480x360 as in the SegNet tutorial (train 367 / val 101, images/ labels/ train.txt val.txt)",
    "pennfudan": "the Penn-Fudan pedestrian database as distributed (PNGImages/ PedMasks/ Annotation/)",
    "coco_mini": "a COCO 2017 subset (train2017/ val2017/ annotations/instances_{train,val}2017.json)",
}


def require_data(name: str) -> Path:
    """The shared data set `name` (camvid, pennfudan, coco_mini) at ../shared/data/<name>, or a test
    failure naming the missing folder and how to get it: tests that read it never skip."""
    root = DATA / name
    if not root.is_dir() or not any(root.iterdir()):
        pytest.fail(
            f"data set {name!r} missing: {root} is not a folder or is empty. This test needs the project's "
            f"shared data next to the repository: put the shared folder at {DATA.parent} (it holds "
            f"data/{name}: {DATA_SOURCES.get(name, 'see its README.md')}); the tests never download it.",
            pytrace=False,
        )
    return root


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for servers the tests start)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(command: list[str], url: str, env: dict, log_path: Path, cwd: Path) -> Iterator[None]:
    """Start a server (output to a file: a full pipe would block it), wait for /readyz, stop it after."""
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    deadline = time.monotonic() + 240
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError("the server exited:\n" + log_path.read_text(errors="replace")[-5000:])
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the server did not become ready in 240 s")
            time.sleep(0.5)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # workers the supervisor left behind, if any


@pytest.fixture(scope="session")
def tiny_sam():
    from models.engine.modeling import build_sam

    return build_sam("tiny")


@pytest.fixture(scope="session")
def scene() -> np.ndarray:
    """A 360x480 RGB image with flat shapes on a textured background (deterministic)."""
    rng = np.random.default_rng(0)
    img = (rng.normal(90, 12, (360, 480, 3))).clip(0, 255).astype(np.uint8)
    img[60:200, 50:200] = (200, 40, 40)  # red rectangle
    yy, xx = np.mgrid[:360, :480]
    img[(yy - 250) ** 2 + (xx - 330) ** 2 < 70**2] = (40, 200, 60)  # green disc
    img[20:120, 300:460] = (30, 30, 220)  # blue rectangle
    return img


@pytest.fixture(scope="session")
def camvid_image() -> np.ndarray:
    from models.engine import read_image

    root = require_data("camvid")
    stems = (root / "val.txt").read_text().split() if (root / "val.txt").is_file() else []
    if not stems:
        pytest.fail(
            f"{root / 'val.txt'} is missing or empty: the shared CamVid copy is incomplete", pytrace=False
        )
    return read_image(root / "images" / "val" / f"{stems[0]}.jpg")


def built_once(tmp_path_factory, name: str, build) -> Path:
    """`build(directory)` run once per test run, even with several xdist workers: the directory lies
    under the run's common temp root, a file lock lets one worker build while the others wait, and
    a marker written last says it is complete. Tests read these directories, never write them."""
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # shared by the workers of this run
    out, done = root / name, root / f"{name}.complete"
    with FileLock(str(root / f"{name}.lock")):
        if not done.is_file():
            out.mkdir(parents=True, exist_ok=True)
            build(out)
            done.touch()
    return out


def _sam_export(tmp_path_factory, sam_type: str, seed: int | None) -> Path:
    from export.onnx_export import export_sam_checkpoint

    name = f"export_{sam_type.replace('.', '_')}"
    return built_once(
        tmp_path_factory, name, lambda out: export_sam_checkpoint(sam_type, None, out, random_seed=seed)
    )


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory) -> Path:
    """The seeded tiny SAM exported to ONNX once per run (encoder + all decoders)."""
    return _sam_export(tmp_path_factory, "tiny", None)


@pytest.fixture(scope="session")
def sam2_export(tmp_path_factory) -> Path:
    """SAM 2.1 hiera tiny, seeded random weights, exported once per run (kind sam2)."""
    return _sam_export(tmp_path_factory, "sam2.1_hiera_t", 0)


@pytest.fixture(scope="session")
def light_export(tmp_path_factory) -> Path:
    """EfficientViT-SAM L0 (the light SAM), seeded random weights, exported once per run."""
    return _sam_export(tmp_path_factory, "efficientvit-sam-l0", 0)


@pytest.fixture(scope="session")
def student_export(tmp_path_factory) -> Path:
    """The shipped CamVid student exported to ONNX once per run."""
    from sesam.cli import main

    shipped = Path(__file__).resolve().parents[1] / "models" / "students" / "weights" / "camvid_student.pt"

    def build(out: Path) -> None:
        assert main(["export", "student", "--checkpoint", str(shipped), "--out", str(out)]) == 0

    return built_once(tmp_path_factory, "student_export", build)


@pytest.fixture(scope="session")
def instance_checkpoint(tmp_path_factory) -> Path:
    """A seeded m2f-r18 instance student (random weights, canvas 128, one class) as a checkpoint."""
    from models.students.instance import build_instance_student, save_instance_student

    torch.manual_seed(0)
    model = build_instance_student("m2f-r18", 1)
    path = tmp_path_factory.mktemp("instance_student") / "student.pt"
    extra = {"class_names": ["person"], "category_ids": [1], "input_side": 128, "mode": "wish"}
    save_instance_student(path, model, "m2f-r18", 1, extra=extra)
    return path


@pytest.fixture(scope="session")
def instance_export(tmp_path_factory, instance_checkpoint) -> Path:
    """`instance_checkpoint` exported to ONNX once per session (`sesam export student`)."""
    from sesam.cli import main

    out = tmp_path_factory.mktemp("instance_export")
    assert main(["export", "student", "--checkpoint", str(instance_checkpoint), "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="session")
def pennfudan_export(tmp_path_factory) -> Path:
    """The shipped Penn-Fudan instance student exported to ONNX once per run."""
    from export.onnx_export import export_student_checkpoint
    from models.students.semantic import SHIPPED_INSTANCE_STUDENT

    return built_once(
        tmp_path_factory,
        "pennfudan_export",
        lambda out: export_student_checkpoint(SHIPPED_INSTANCE_STUDENT, out),
    )


CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")


@contextlib.contextmanager
def headless_chromium(width: int, height: int, purpose: str, timeout_s: float) -> Iterator:
    """Debian's chromium, headless, through chromedriver (selenium); a test failure naming
    `make install-browser` when either is missing (never a skip). Quit on exit."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        pytest.fail(
            f"{' and '.join(missing)} not found: run `make install-browser` (Debian's chromium and "
            f"chromium-driver) {purpose}",
            pytrace=False,
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        f"--window-size={width},{height}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(timeout_s)
    driver.set_script_timeout(timeout_s)
    try:
        yield driver
    finally:
        driver.quit()


# The prompts every SAM backend's parity test puts to its engine and to the reference predictor
# (on a 480x360 image): two points (one negative), a box, both; as (reference kwargs, Prompt kwargs).
PARITY_POINTS = np.array([[150.0, 120.0], [330.0, 260.0]])
PARITY_LABELS = np.array([1, 0])
PARITY_BOX = np.array([90.0, 40.0, 310.0, 230.0])
PARITY_CASES = {
    "points": (
        dict(point_coords=PARITY_POINTS, point_labels=PARITY_LABELS),
        dict(points=PARITY_POINTS, labels=PARITY_LABELS),
    ),
    "box": (dict(box=PARITY_BOX), dict(box=PARITY_BOX)),
    "points+box": (
        dict(point_coords=PARITY_POINTS, point_labels=PARITY_LABELS, box=PARITY_BOX),
        dict(points=PARITY_POINTS, labels=PARITY_LABELS, box=PARITY_BOX),
    ),
}


def assert_same_prediction(out, i: int, masks, iou, low) -> None:
    """Row i of an engine's Predictions against a reference predictor's (masks, iou, low-res logits):
    masks >= 99.9 % equal, logits and IoU within 1e-4 (the parity bar of every SAM backend)."""
    masks, iou, low = (np.asarray(a) for a in (masks, iou, low))
    assert (out.masks[i] == masks.astype(bool)).mean() >= 0.999
    assert np.abs(out.low_res_logits[i] - low).max() < 1e-4
    assert np.abs(out.iou[i] - iou).max() < 1e-4
