"""A real Label Studio server using the service as its ML backend (`make integration`).

Label Studio (from .venv-ls, its own venv: the SDK pins numpy and opencv below the project's) and the
service (`bentoml serve`, classical prior engine, the shipped CamVid student) run as real processes;
tests/label_studio_driver.py, run with .venv-ls's python, works Label Studio through its SDK as the UI
would: a project with BrushLabels, KeyPointLabels and RectangleLabels on one image, a CamVid val image
uploaded as its task, the ML backend `http://127.0.0.1:<service port>/ls` connected (interactive on),
then "Retrieve predictions", a smart keypoint and a smart rectangle. Checked here:

- the prediction Label Studio stored holds one brush mask per student class present whose name is a
  BrushLabels value, each equal to the service's own /segment label map for that class;
- the keypoint's and the rectangle's brush masks equal the best mask of the service's own /predict for
  the same click and box (converted from Label Studio's percent coordinates), on the brush label named
  like the clicked label, else on the first brush label;
- accepting the keypoint's mask (ANNOTATION_CREATED) and "Start training" (START_TRAINING) reach the
  backend's /ls/webhook and get a 2xx;
- Label Studio's own web UI shows the stored prediction: Debian's chromium (headless, selenium) logs in,
  opens the task, clicks the prediction's tab and waits until the image and every brush mask are drawn;
  the page is kept as a test artifact, runs/test-artifacts/label_studio_prediction.png (runs/ is
  git-ignored; docs/images/labeling_label_studio.png is a crop of one).

Label Studio's first start migrates its database (26-88 s on 2 cores); the migrated database is kept
under runs/cache/label-studio-<version>/ (git-ignored; delete it to migrate afresh) and copied into a
temp dir on later runs. Everything started is stopped and every temp dir deleted at the end.

Time on 2 CPU cores (2026-12, another test session busy on the same machine): 20-31 s with a warm
cache (both servers ready in 12-17 s, side by side; the driver 4.5 s), 43 s with a cold one (Label
Studio ready in 34 s), before the screenshot; it adds 9-12 s (chromium, the login, the labeling view),
55 s in all on a warm run whose servers took 31 s to be ready.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import httpx
import numpy as np
import pycocotools.mask as mask_utils
import pytest
from PIL import Image

from models.students.runtime import load_segmenter
from serving.cli import serve_command
from serving.client import SesamClient
from serving.codec import decode_labels
from serving.config import SHIPPED_STUDENT
from tests.conftest import REPO, free_port, headless_chromium, require_data, running_server

pytestmark = pytest.mark.integration

LS_VENV = REPO / ".venv-ls"
LS_BIN = LS_VENV / "bin" / "label-studio"
LS_PYTHON = LS_VENV / "bin" / "python"
DRIVER = Path(__file__).with_name("label_studio_driver.py")
CACHE_ROOT = REPO / "runs" / "cache"
# the account the cached database was made with (a throw-away local one)
CREDENTIALS = {
    "username": "sesam@example.com",
    "password": "sesam-integration",
    "token": "sesam-ls-token-0001",
}
CACHED_FILES = ("label_studio.sqlite3", ".env")  # the database and the SECRET_KEY it was made with
START_TIMEOUT_S = {"cold": 360, "warm": 120}
DRIVER_TIMEOUT_S = 480
CAR = 8  # CamVid's class id for car
# a request in bentoml's access log: "(scheme=http,method=POST,path=/ls/webhook,...) (status=200,..."
WEBHOOK_LOG = re.compile(r"method=POST,path=/ls/webhook/?,[^)]*\) \(status=(\d+)")


def _ls_version() -> str:
    found = sorted(LS_VENV.glob("lib/python*/site-packages/label_studio-*.dist-info"))
    if not found:
        return "unknown"
    return found[-1].name.removeprefix("label_studio-").removesuffix(".dist-info")


def _ls_env(data_dir: Path, home: Path) -> dict[str, str]:
    env = dict(os.environ)
    for name in list(env):  # nothing of another Label Studio set-up leaks in
        if name.startswith("LABEL_STUDIO_"):
            env.pop(name)
    return env | {
        "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir),
        "ML_BLOCK_LOCAL_IP": "false",  # the backend is on 127.0.0.1: allowed
        "SSRF_PROTECTION_ENABLED": "false",
        "LATEST_VERSION_CHECK": "false",
        "COLLECT_ANALYTICS": "false",
        "SENTRY_DSN": "",
        "XDG_DATA_HOME": str(home / "xdg-data"),
        "XDG_CACHE_HOME": str(home / "xdg-cache"),
        "XDG_CONFIG_HOME": str(home / "xdg-config"),
    }


def _tail(path: Path, chars: int = 4000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.is_file() else f"({path} not written)"


def _store_cache(data_dir: Path, cache: Path) -> None:
    """The freshly migrated database (a consistent sqlite backup, the server may be writing) into the
    cache; a run that got there first wins."""
    cache.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{cache.name}-", dir=cache.parent))
    try:
        source = contextlib.closing(sqlite3.connect(data_dir / "label_studio.sqlite3"))
        target = contextlib.closing(sqlite3.connect(staging / "label_studio.sqlite3"))
        with source as src, target as dst:
            src.backup(dst)
        shutil.copy2(data_dir / ".env", staging / ".env")
        (staging / "credentials.json").write_text(json.dumps(CREDENTIALS))
        if not cache.exists():
            staging.rename(cache)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _cache_usable(cache: Path) -> bool:
    try:
        made_with = json.loads((cache / "credentials.json").read_text())
    except (OSError, ValueError):
        return False
    return made_with == CREDENTIALS and all((cache / name).is_file() for name in CACHED_FILES)


@dataclass
class LabelStudio:
    url: str
    token: str
    log: Path
    home: Path


@contextlib.contextmanager
def _label_studio(home: Path) -> Iterator[tuple[subprocess.Popen, LabelStudio, str, Path]]:
    """Start Label Studio on a free port with its data dir under `home`; stop its process group after.
    Yields (process, handle, 'warm' or 'cold', cache path)."""
    cache = CACHE_ROOT / f"label-studio-{_ls_version()}"
    data_dir = home / "data"
    data_dir.mkdir()
    kind = "cold"
    if _cache_usable(cache):
        for name in CACHED_FILES:
            shutil.copy2(cache / name, data_dir / name)
        kind = "warm"
    port = free_port()
    log = home / "label-studio.log"
    command = [
        str(LS_BIN),
        "start",
        "--no-browser",
        "--internal-host",
        "127.0.0.1",
        "--port",
        str(port),
        "--data-dir",
        str(data_dir),
        "--username",
        CREDENTIALS["username"],
        "--password",
        CREDENTIALS["password"],
        "--user-token",
        CREDENTIALS["token"],
        "--enable-legacy-api-token",
    ]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            command,
            cwd=home,
            env=_ls_env(data_dir, home),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        yield proc, LabelStudio(f"http://127.0.0.1:{port}", CREDENTIALS["token"], log, home), kind, cache
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # anything it left behind
        proc.wait(timeout=10)


def _wait_label_studio(proc: subprocess.Popen, ls: LabelStudio, kind: str, cache: Path) -> float:
    """Seconds until Label Studio answers the token (its user exists, the database is migrated)."""
    hint = f" (it started from the database cached in {cache}: delete that folder to migrate afresh)"
    hint = hint if kind == "warm" else ""
    started = time.monotonic()
    deadline = started + START_TIMEOUT_S[kind]
    headers = {"Authorization": f"Token {ls.token}"}
    last = "no answer yet"
    while True:
        if proc.poll() is not None:
            pytest.fail(f"Label Studio exited with {proc.returncode}{hint}; its log ends:\n{_tail(ls.log)}")
        try:
            answer = httpx.get(f"{ls.url}/api/current-user/whoami", headers=headers, timeout=5)
            if answer.status_code == 200:
                return time.monotonic() - started
            last = f"HTTP {answer.status_code}: {answer.text[:300]}"
        except httpx.HTTPError as exc:
            last = f"{type(exc).__name__}: {exc}"
        if time.monotonic() > deadline:
            pytest.fail(
                f"Label Studio ({kind} start) did not answer {ls.url}/api/current-user/whoami within "
                f"{START_TIMEOUT_S[kind]} s (last: {last}){hint}; its log ends:\n{_tail(ls.log)}"
            )
        time.sleep(1)


@dataclass
class Live:
    ls: LabelStudio
    service_url: str
    service_log: Path
    timings: dict[str, float]


@pytest.fixture(scope="session")
def live() -> Iterator[Live]:
    """Label Studio and the service, both running; started side by side, stopped and deleted after."""
    if not LS_BIN.is_file() or not LS_PYTHON.is_file():
        pytest.fail(f"no Label Studio in {LS_VENV}: run `make install-label-studio`", pytrace=False)
    home = Path(tempfile.mkdtemp(prefix="sesam-label-studio-"))
    try:
        started = time.monotonic()
        with _label_studio(home) as (proc, ls, kind, cache):
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            # the default configuration (no SESAM_* from the caller: the shipped CamVid student, no API
            # key, images from the hostname and token /setup sends) on the classical prior engine, as
            # there are no SAM weights here
            env = {k: v for k, v in os.environ.items() if not k.startswith("SESAM_")} | {
                "BENTOML_DO_NOT_TRACK": "true",
                "SESAM_BACKEND": "classical",
                "XDG_DATA_HOME": str(home / "xdg-data"),
            }
            service_log = home / "bentoml.log"
            with running_server(serve_command("127.0.0.1", port), url, env, service_log, REPO):
                service_ready = time.monotonic() - started
                _wait_label_studio(proc, ls, kind, cache)
                timings = {
                    f"label_studio_{kind}_ready": time.monotonic() - started,
                    "service_ready": service_ready,
                }
                if kind == "cold":
                    _store_cache(home / "data", cache)
                yield Live(ls, url, service_log, timings)
    finally:
        shutil.rmtree(home, ignore_errors=True)


# -- the scene: a CamVid val image and a car on it ---------------------------------------------------
def _exact(value: int, size: int) -> bool:
    """A pixel coordinate that survives percent and back however a backend writes the conversion."""
    pct = value / size * 100
    return pct / 100 * size == value and pct * size / 100 == value


def _nearest_exact(value: int, size: int, inside: tuple[int, int]) -> int:
    for step in range(size):
        for candidate in (value - step, value + step):
            if inside[0] <= candidate <= inside[1] and _exact(candidate, size):
                return candidate
    raise AssertionError(f"no coordinate near {value} round-trips through percent of {size}")


def _exact_span(start: int, end: int, size: int) -> tuple[int, int]:
    """[start, end) widened by the fewest pixels so that start, end - start and end survive percent and
    back (x, width and x + width as a backend may compute them)."""
    for grow in range(2 * size):
        for a in range(max(start - grow, 0), start + 1):
            b = min(end + grow - (start - a), size)
            pa, pw = a / size * 100, (b - a) / size * 100
            ends = (
                pa / 100 * size + pw / 100 * size,
                pa * size / 100 + pw * size / 100,
                (pa + pw) / 100 * size,
            )
            if _exact(a, size) and all(end == b for end in ends):
                return a, b
    raise AssertionError(f"no span near [{start}, {end}) round-trips through percent of {size}")


@dataclass
class Scene:
    image: Path
    width: int
    height: int
    click: tuple[int, int]  # pixels, on the car
    box: list[int]  # pixels [x0, y0, x1, y1] around the car


@pytest.fixture(scope="session")
def car() -> Scene:
    """The first CamVid val image with a car of at least 2000 pixels: a click deep inside its largest
    car and that car's box (pixels that round-trip exactly through Label Studio's percentages)."""
    root = require_data("camvid")
    for stem in (root / "val.txt").read_text().split():
        labels = np.array(Image.open(root / "labels" / "val" / f"{stem}.png"))
        count, components, stats, _ = cv2.connectedComponentsWithStats((labels == CAR).astype(np.uint8))
        if count < 2 or stats[1:, cv2.CC_STAT_AREA].max() < 2000:
            continue
        largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
        inside = (components == largest).astype(np.uint8)
        depth = cv2.distanceTransform(inside, cv2.DIST_L2, 5)
        y, x = np.unravel_index(int(np.argmax(depth)), depth.shape)
        h, w = labels.shape
        x = _nearest_exact(int(x), w, (0, w - 1))
        y = _nearest_exact(int(y), h, (0, h - 1))
        assert inside[y, x], "the click left the car"
        x0, y0, bw, bh = (int(v) for v in stats[largest, :4])
        (x0, x1), (y0, y1) = _exact_span(x0, x0 + bw, w), _exact_span(y0, y0 + bh, h)
        box = [x0, y0, x1, y1]
        return Scene(root / "images" / "val" / f"{stem}.jpg", w, h, (x, y), box)
    pytest.fail(f"no val image in {root} has a car of 2000 pixels", pytrace=False)


@pytest.fixture(scope="session")
def driven(live: Live, car: Scene) -> dict:
    """The driver's run against Label Studio and the service: its result.json (the masks it decoded
    are .npy files in `_dir`)."""
    out = Path(tempfile.mkdtemp(prefix="driver-", dir=live.ls.home))
    command = [
        str(LS_PYTHON),
        str(DRIVER),
        "--ls-url",
        live.ls.url,
        "--token",
        live.ls.token,
        "--backend-url",
        f"{live.service_url}/ls",
        "--image",
        str(car.image),
        "--out",
        str(out),
        "--keypoint",
        str(car.click[0]),
        str(car.click[1]),
        "--keypoint-label",
        "Car",
        "--box",
        *(str(v) for v in car.box),
        "--box-label",
        "Object",
    ]
    env = _ls_env(live.ls.home / "data", live.ls.home)
    started = time.monotonic()
    try:
        proc = subprocess.run(
            command, cwd=live.ls.home, env=env, capture_output=True, text=True, timeout=DRIVER_TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"the driver took over {DRIVER_TIMEOUT_S} s; {_logs(live)}")
    live.timings["driver"] = time.monotonic() - started
    try:
        report = json.loads((out / "result.json").read_text())
    except (OSError, ValueError) as exc:
        pytest.fail(
            f"the driver wrote no result.json ({exc}); exit {proc.returncode}:\n{proc.stderr[-4000:]}"
        )
    report["_dir"] = str(out)
    report["_exit"] = proc.returncode
    report["_stderr"] = proc.stderr
    print(
        "timings (s):", json.dumps({k: round(v, 1) for k, v in live.timings.items()}), report.get("seconds")
    )
    return report


def _logs(live: Live) -> str:
    return (
        f"Label Studio's log ends:\n{_tail(live.ls.log, 3000)}\n"
        f"the service's log ends:\n{_tail(live.service_log, 5000)}"
    )


def _step(driven: dict, name: str, live: Live) -> dict:
    """One driver step's record, or a failure naming its error and both servers' logs."""
    errors = [e for e in driven["errors"] if e["step"] in (name, "setup")]
    if errors:
        error = errors[0]
        pytest.fail(
            f"driver step {error['step']!r} failed: {error['error']}\n{error['traceback']}\n{_logs(live)}"
        )
    return driven[name]


def _mask(driven: dict, item: dict, car: Scene) -> np.ndarray:
    value = item["value"]
    assert "decode_error" not in value, value["decode_error"]
    assert (item["original_width"], item["original_height"]) == (car.width, car.height), item
    mask = np.load(Path(driven["_dir"]) / value["npy"])
    assert mask.shape == (car.height, car.width)
    assert set(np.unique(mask)) <= {0, 255}, np.unique(mask)
    return mask > 0


def _service_mask(live: Live, car: Scene, prompt: dict) -> np.ndarray:
    """The service's own answer for one prompt: /predict's best mask (COCO RLE, pycocotools)."""
    with SesamClient(live.service_url, retries=0) as client:
        answer = client.predict([prompt], image=car.image.read_bytes(), multimask=True, mask_format="rle")
    best = answer["predictions"][0]
    rle = best["masks"][best["best"]]
    return mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode("ascii")}).astype(bool)


def _one_brush(record: dict, driven: dict, car: Scene) -> tuple[dict, np.ndarray]:
    brushes = [r for r in record["result"] if r.get("type") == "brushlabels"]
    assert len(brushes) == 1, f"expected one brushlabels result, got: {json.dumps(record['result'])[:2000]}"
    item = brushes[0]
    assert (item["from_name"], item["to_name"]) == ("brush", "image"), item
    assert item["value"].get("format") == "rle", item
    return item, _mask(driven, item, car)


def test_label_studio_stores_the_students_brush_masks(live: Live, car: Scene, driven: dict) -> None:
    record = _step(driven, "retrieve", live)
    assert record["status"] == 200, record
    assert record["predictions"], (
        f"no prediction stored on the task after Retrieve predictions: {record}\n{_logs(live)}"
    )
    results = [r for p in record["predictions"] for r in p["result"] if r.get("type") == "brushlabels"]
    assert results, f"the stored prediction has no brushlabels result: {json.dumps(record)[:2000]}"

    brush_labels = driven["brush_labels"]
    student = load_segmenter(SHIPPED_STUDENT, "torch")
    by_name = {name.lower(): i for i, name in enumerate(student.class_names)}
    # the config's labels are the student's class names (case aside), plus one it does not know
    assert {v.lower() for v in brush_labels} - set(by_name) == {"unlabelled"}
    with SesamClient(live.service_url, retries=0) as client:
        answer = client.segment(car.image.read_bytes(), output="labels")
    assert answer["class_names"] == student.class_names
    labels = decode_labels(answer["results"][0]["labels"])
    assert labels.shape == (car.height, car.width)
    expected = {v: labels == by_name[v.lower()] for v in brush_labels if v.lower() in by_name}
    expected = {v: m for v, m in expected.items() if m.any()}

    got: dict[str, np.ndarray] = {}
    for item in results:
        assert (item["from_name"], item["to_name"]) == ("brush", "image"), item
        (label,) = item["value"]["brushlabels"]
        assert label in brush_labels, label
        assert label not in got, f"two masks for {label}"
        got[label] = _mask(driven, item, car)
        assert got[label].any(), f"the mask for {label} is empty"
    assert sorted(got) == sorted(expected)
    for label, mask in got.items():
        assert np.array_equal(mask, expected[label]), (
            f"{label}: {int((mask != expected[label]).sum())} pixels differ from /segment"
        )


def test_keypoint_answers_the_services_click_mask(live: Live, car: Scene, driven: dict) -> None:
    record = _step(driven, "keypoint", live)
    assert record["status"] == 200, record
    value, (w, h) = record["sent"]["value"], (car.width, car.height)
    x, y = value["x"] / 100 * w, value["y"] / 100 * h
    assert (x, y) == car.click  # the coordinates were picked to survive percent and back
    item, mask = _one_brush(record, driven, car)
    assert item["value"]["brushlabels"] == ["Car"]  # the brush label named like the keypoint's
    assert mask.any()
    expected = _service_mask(live, car, {"points": [[x, y]], "labels": [1]})
    assert np.array_equal(mask, expected), f"{int((mask != expected).sum())} pixels differ from /predict"


def test_rectangle_answers_the_services_box_mask(live: Live, car: Scene, driven: dict) -> None:
    record = _step(driven, "rectangle", live)
    assert record["status"] == 200, record
    value, (w, h) = record["sent"]["value"], (car.width, car.height)
    x, y = value["x"] / 100 * w, value["y"] / 100 * h
    bw, bh = value["width"] / 100 * w, value["height"] / 100 * h
    assert [x, y, x + bw, y + bh] == car.box
    item, mask = _one_brush(record, driven, car)
    # "Object" names no brush label: the first brush label takes it
    assert item["value"]["brushlabels"] == [driven["brush_labels"][0]]
    assert mask.any()
    expected = _service_mask(live, car, {"box": [x, y, x + bw, y + bh]})
    assert np.array_equal(mask, expected), f"{int((mask != expected).sum())} pixels differ from /predict"


def test_webhook_events_reach_the_backend(live: Live, driven: dict) -> None:
    """Accepting the keypoint's mask (ANNOTATION_CREATED) and "Start training" (START_TRAINING) both
    reach POST /ls/webhook, Label Studio's webhook for the backend, and get a 2xx (the service's access
    log says so: Label Studio only logs a failed webhook)."""
    _step(driven, "annotate", live)
    _step(driven, "train", live)
    hooks = [h["url"] for h in driven["annotate"]["webhooks"]]
    assert f"{live.service_url}/ls/webhook" in hooks, hooks
    deadline = time.monotonic() + 15
    while True:
        statuses = [int(s) for s in WEBHOOK_LOG.findall(_tail(live.service_log, 10**7))]
        if len(statuses) >= 2 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert len(statuses) >= 2 and all(200 <= s < 300 for s in statuses), (
        f"POST /ls/webhook answers: {statuses}\n{_logs(live)}"
    )


def test_driver_ran_clean(live: Live, driven: dict) -> None:
    """Every driver step worked, and Label Studio lists the backend as connected."""
    assert not driven["errors"], [f"{e['step']}: {e['error']}" for e in driven["errors"]]
    backends = driven["ml_backends"]
    assert len(backends) == 1 and backends[0]["state"] == "CO", backends
    assert backends[0]["url"] == f"{live.service_url}/ls"
    assert driven["task"]["data"]["image"].startswith("/data/upload/")


# -- the prediction in Label Studio's own labeling view (chromium headless) ---------------------------
SCREENSHOT = REPO / "runs" / "test-artifacts" / "label_studio_prediction.png"
VIEWPORT = (1400, 900)  # the page (and the screenshot) in CSS pixels
UI_WAIT_S = 180  # per step; a few seconds when the machine is idle
# what the labeling view shows: the task's image loaded at its size, the tab that is selected and how many
# of the stage's (Konva) canvases hold a drawn pixel (each brush region is drawn on its own layer)
UI_STATE_JS = """
const [width, height] = arguments;
const image = [...document.images].some((im) => im.complete && im.naturalWidth === width
  && im.naturalHeight === height && im.getBoundingClientRect().width > 300);
let drawn = 0;
for (const canvas of document.querySelectorAll('.konvajs-content canvas')) {
  if (!canvas.width || !canvas.height) continue;
  const alpha = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
  for (let k = 3; k < alpha.length; k += 4) if (alpha[k]) { drawn++; break; }
}
const selected = document.querySelector('.lsf-annotation-button_selected');
const prediction = selected !== null && selected.querySelector('[title^="Prediction score"]') !== null;
return {image, drawn, prediction, tab: selected ? selected.innerText.replace(/\\s+/g, ' ') : null};
"""


@contextlib.contextmanager
def _chromium() -> Iterator:
    with headless_chromium(*VIEWPORT, "for the Label Studio screenshot", UI_WAIT_S) as driver:
        # --window-size counts the window's frame: grow it so that the page itself gets VIEWPORT
        frame = driver.execute_script(
            "return [window.outerWidth - window.innerWidth, window.outerHeight - window.innerHeight]"
        )
        driver.set_window_size(VIEWPORT[0] + max(frame[0], 0), VIEWPORT[1] + max(frame[1], 0))
        yield driver


def _until(driver, condition, what: str | Callable[[], str], live: Live):
    """condition(driver)'s first truthy value within UI_WAIT_S, else a failure saying `what` (or what it
    returns), with the page as it was kept in SCREENSHOT."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, UI_WAIT_S, poll_frequency=0.5).until(condition)
    except TimeoutException:
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(SCREENSHOT))
        what = what() if callable(what) else what
        body = driver.execute_script("return document.body ? document.body.innerText : ''") or ""
        pytest.fail(
            f"Label Studio's web UI: {what} within {UI_WAIT_S} s (at {driver.current_url}; the page as "
            f"it was: {SCREENSHOT}); its text begins:\n{body[:1500]}\n{_logs(live)}",
            pytrace=False,
        )


def test_label_studio_shows_the_prediction(live: Live, car: Scene, driven: dict) -> None:
    """Label Studio's own labeling view, in chromium (headless, selenium): logged in through /user/login/,
    the task opened in the data manager (`/projects/<id>/data?task=<id>`), the stored prediction's tab
    clicked; once the image is loaded and every brush mask of the prediction is drawn on the stage, the
    page is kept as a test artifact: runs/test-artifacts/label_studio_prediction.png (runs/ is
    git-ignored; docs/images/labeling_label_studio.png is a crop of one). A prediction the UI does not
    show in UI_WAIT_S fails the test."""
    record = _step(driven, "retrieve", live)
    brushes = [r for p in record["predictions"] for r in p["result"] if r.get("type") == "brushlabels"]
    assert brushes, f"no brushlabels in the stored prediction: {json.dumps(record)[:2000]}"
    project, task = driven["project"], driven["task"]["id"]

    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.actions.action_builder import ActionBuilder
    from selenium.webdriver.common.by import By

    started = time.monotonic()
    with _chromium() as driver:
        driver.get(f"{live.ls.url}/user/login/")
        email = _until(driver, lambda d: d.find_element(By.NAME, "email"), "no login form", live)
        email.send_keys(CREDENTIALS["username"])
        driver.find_element(By.NAME, "password").send_keys(CREDENTIALS["password"])
        driver.find_element(By.CSS_SELECTOR, "form [type=submit]").click()
        _until(driver, lambda d: "/user/login" not in d.current_url, "the login did not go through", live)

        driver.get(f"{live.ls.url}/projects/{project}/data?tab=1&task={task}")

        def clicked_tab(d) -> bool:
            """Find the prediction's tab and click it; the view may re-render between the two (the
            element found goes stale), so both happen in one try, retried until UI_WAIT_S."""
            try:
                d.find_element(
                    By.XPATH,
                    "//*[contains(concat(' ', @class, ' '), ' lsf-annotation-button ')]"
                    "[.//*[starts-with(@title, 'Prediction score')]]",
                ).click()
            except StaleElementReferenceException:
                return False
            return True

        _until(
            driver, clicked_tab, f"no tab for the stored prediction in the labeling view of task {task}", live
        )
        pointer = ActionBuilder(driver)  # off the tab, onto the page's header: no tooltip over the image
        pointer.pointer_action.move_to_location(VIEWPORT[0] // 2, 8)
        pointer.perform()

        last: dict = {}

        def shown(d) -> bool:
            last.update(d.execute_script(UI_STATE_JS, car.width, car.height))
            return last["image"] and last["prediction"] and last["drawn"] >= len(brushes)

        _until(
            driver,
            shown,
            lambda: (
                f"the image and the prediction's {len(brushes)} brush masks were not drawn (last: {last})"
            ),
            live,
        )
        time.sleep(1)  # the last layer's fade-in
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(SCREENSHOT))
    live.timings["screenshot"] = time.monotonic() - started
    print("label studio screenshot:", SCREENSHOT, f"{live.timings['screenshot']:.1f} s")
    with Image.open(SCREENSHOT) as shot:
        assert shot.width >= 1000 and shot.height >= 600, shot.size
