"""The click-to-mask page (`/ui`, serving/ui/static) in a real browser against the real service.

`bentoml serve` with the weight-free classical prior (no student) and an API key, Debian's
chromium headless through chromedriver (selenium). The page loads without the key and says it
needs one; the key typed into its field goes with every call and survives a reload
(sessionStorage). A Penn-Fudan image is uploaded through the page's file input, then two
positive clicks on a pedestrian (the middle, then the legs) are sent the way a person would:
each must change the overlay (the second also the mask), the page's requests must follow its
rules (multimask on the lone first click only, the previous answer's logits_id as
mask_input_id), and the PNG the page exports must be pixel-equal to the mask `/predict` answers
for the same request. Undo re-asks for what is left; a right click is a background point and an
API error lands in the status line (no alert).

A screenshot of the page after the clicks is kept as a test artifact:
runs/test-artifacts/ui_browser.png (runs/ is git-ignored).

Without chromium or chromedriver the test fails and says to run `make install-browser`.
"""

from __future__ import annotations

import base64
import io
import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pycocotools.mask as mask_utils
import pytest
from PIL import Image
from scipy import ndimage

from models.io import mask_box
from serving.cli import serve_command
from tests.conftest import REPO, free_port, headless_chromium, require_data, running_server

ARTIFACTS = REPO / "runs" / "test-artifacts"
STEM = "FudanPed00001"  # two pedestrians; the left one (instance 1) is clicked
WAIT_S = 30
API_KEY = "ui-browser-test-key"


def _env() -> dict[str, str]:
    env = dict(
        os.environ,
        BENTOML_DO_NOT_TRACK="true",
        SESAM_BACKEND="classical",
        SESAM_BATCHING="0",
        SESAM_STUDENT_CHECKPOINT="none",
        SESAM_API_KEY=API_KEY,
    )
    env.setdefault("OMP_NUM_THREADS", "1")
    for name in ("SESAM_CONFIG", "SESAM_SAM_CHECKPOINT"):
        env.pop(name, None)
    return env


@pytest.fixture(scope="module")
def browser():
    with headless_chromium(1280, 900, "to run the /ui browser test", WAIT_S) as driver:
        yield driver


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("ui_server") / "serve.log"
    with running_server(serve_command("127.0.0.1", port), url, _env(), log, REPO):
        yield url


@pytest.fixture(scope="module")
def pedestrian() -> tuple[Path, np.ndarray]:
    """The image's path and the clicked pedestrian's ground-truth mask (HxW bool)."""
    root = require_data("pennfudan")
    with Image.open(root / "PedMasks" / f"{STEM}_mask.png") as img:
        instances = np.array(img)
    return root / "PNGImages" / f"{STEM}.png", instances == 1


def _js(driver, script: str, *args):
    return driver.execute_script(script, *args)


def _wait(driver, script: str, what: str):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT_S, poll_frequency=0.05).until(
        lambda d: d.execute_script(script), message=f"page: {what} within {WAIT_S} s"
    )


def _open(driver, url: str, image: Path, key: str | None = None) -> None:
    """Load the page, type `key` into its API key field (when given), upload `image`."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    driver.get(f"{url}/ui/")
    _wait(driver, "return window.sesam !== undefined", "the page's test hook")
    if key is not None:
        field = driver.find_element(By.ID, "api-key")
        field.clear()
        field.send_keys(key, Keys.TAB)
    _upload(driver, image)


def _upload(driver, image: Path) -> None:
    from selenium.webdriver.common.by import By

    driver.execute_script("sesam.state.imageId = null")
    driver.find_element(By.ID, "file").send_keys(str(image))
    _wait(driver, "return window.sesam.state.imageId", "the /embed answer")


def _click(driver, x: int, y: int, right: bool = False) -> None:
    """Click the overlay at image pixel (x, y) and wait until the answer is drawn."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    overlay = driver.find_element(By.ID, "overlay")
    rect, (w, h) = overlay.rect, _js(driver, "return [sesam.state.width, sesam.state.height]")
    drawn = _js(driver, "return sesam.state.drawn")
    dx = round((x + 0.5) * rect["width"] / w - rect["width"] / 2)  # selenium: offset from the centre
    dy = round((y + 0.5) * rect["height"] / h - rect["height"] / 2)
    chain = ActionChains(driver).move_to_element_with_offset(overlay, dx, dy)
    (chain.context_click() if right else chain.click()).perform()
    _wait(driver, f"return sesam.state.drawn > {drawn} && !sesam.state.syncing", "a drawn /predict answer")


def _overlay(driver) -> str:
    return _js(driver, "return document.getElementById('overlay').toDataURL()")


def _interior(mask: np.ndarray) -> tuple[int, int]:
    """The pixel (x, y) of `mask` farthest from its boundary."""
    y, x = np.unravel_index(np.argmax(ndimage.distance_transform_edt(mask)), mask.shape)
    return int(x), int(y)


def _best(answer: dict) -> dict:
    """The best mask's RLE of a /predict answer's one prediction."""
    prediction = answer["predictions"][0]
    return prediction["masks"][prediction["best"]]


def _decode(rle: dict) -> np.ndarray:
    return mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode("ascii")}).astype(bool)


def test_two_clicks_draw_and_export_the_served_mask(browser, server, pedestrian) -> None:
    image, truth = pedestrian
    browser.get(f"{server}/ui/")  # the page itself needs no key; its /info call does
    _wait(browser, "return /needs an API key/.test(document.getElementById('status').textContent)", "a 401")
    _open(browser, server, image, key=API_KEY)
    assert _js(browser, "return sessionStorage.getItem('sesam.apiKey')") == API_KEY
    assert "classical prior (not SAM)" in _js(browser, "return document.getElementById('engine').textContent")
    h, w = truth.shape
    assert _js(browser, "return [sesam.state.width, sesam.state.height]") == [w, h]
    empty = _overlay(browser)

    # click 1: the pedestrian's most interior pixel; click 2: the same in the lowest third (legs)
    x0, y0, x1, y1 = mask_box(truth)
    fg = _interior(truth)
    legs = _interior(truth & (np.arange(h) >= y1 - (y1 - y0) // 3)[:, None])
    started = time.monotonic()
    _click(browser, *fg)
    first_request, first = _js(browser, "return [sesam.lastRequest, sesam.lastResponse]")
    after_one = _overlay(browser)
    _js(browser, "window.bitsOne = sesam.state.mask.bits")
    _click(browser, *legs)
    second_request, second = _js(browser, "return [sesam.lastRequest, sesam.lastResponse]")
    after_two = _overlay(browser)
    clicks_s = time.monotonic() - started
    assert not _js(browser, "return document.getElementById('status').classList.contains('error')")

    # the overlay changed with each answer, the first answer's mask is on the clicked pedestrian
    assert len({empty, after_one, after_two}) == 3
    assert _js(browser, "return bitsOne.some((v) => v)"), "the first answer's mask is empty"
    assert _js(browser, "return sesam.state.mask.bits.some((v, i) => v !== bitsOne[i])"), "mask unchanged"
    ys, xs = np.nonzero(_decode(_best(first)))
    inside = (xs >= x0 - 10) & (xs < x1 + 10) & (ys >= y0 - 10) & (ys < y1 + 10)
    assert inside.mean() > 0.9, "the first mask is not on the clicked pedestrian"

    # the requests: original pixels, multimask on the lone first click only, the logits fed back
    (p1,), (p2,) = first_request["prompts"], second_request["prompts"]
    assert np.abs(np.array(p1["points"]) - [fg]).max() <= 1 and p1["labels"] == [1]
    assert "mask_input_id" not in p1 and first_request["multimask"] is True
    assert np.abs(np.array(p2["points"]) - [fg, legs]).max() <= 1 and p2["labels"] == [1, 1]
    assert p2["mask_input_id"] == first["predictions"][0]["logits_id"]
    assert second_request["multimask"] is False and second_request["mask_format"] == "rle"
    assert len(first["predictions"][0]["masks"]) == 3 and len(second["predictions"][0]["masks"]) == 1

    # the exported PNG (0/255 at the image's size) is the mask /predict answers for that request
    data_url = browser.execute_script("return sesam.exportPng()")
    assert data_url.startswith("data:image/png;base64,")
    with Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))) as img:
        assert img.mode == "L" and img.size == (w, h)
        exported = np.array(img)
    assert set(np.unique(exported)) <= {0, 255}
    auth = {"Authorization": f"Bearer {API_KEY}"}
    replay = httpx.post(f"{server}/predict", json=second_request, headers=auth, timeout=WAIT_S)
    assert replay.status_code == 200, replay.text
    served = _best(replay.json())
    assert np.array_equal(exported == 255, _decode(served))
    rle = _js(browser, "return sesam.exportRle()")
    answered = second["predictions"][0]
    assert rle["rle"] == _best(second) == served
    assert rle["class_name"] == "person" and (rle["width"], rle["height"]) == (w, h)
    assert rle["iou"] == answered["iou"][answered["best"]]

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "ui_browser.png"))

    # undo: the first click's request again (its answer is the first answer's mask)
    drawn = _js(browser, "return sesam.state.drawn")
    browser.find_element("id", "undo").click()
    _wait(browser, f"return sesam.state.drawn > {drawn} && !sesam.state.syncing", "the answer after undo")
    assert _js(browser, "return sesam.lastRequest") == first_request
    assert _js(browser, "return sesam.exportRle().rle") == _best(first)
    assert clicks_s < 20, f"two clicks took {clicks_s:.1f} s"


def test_right_click_and_an_api_error_in_the_status_line(browser, server, pedestrian) -> None:
    """The key survives a reload; a right click is a background point; the API's error message
    lands in the status line."""
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    _open(browser, server, pedestrian[0], key=API_KEY)
    browser.refresh()  # the key stays in the field (sessionStorage), the upload works again
    _wait(browser, "return window.sesam !== undefined", "the page's test hook")
    assert browser.find_element(By.ID, "api-key").get_attribute("value") == API_KEY
    _upload(browser, pedestrian[0])
    _js(browser, "sesam.state.imageId = '0'.repeat(64)")  # as if the server had evicted the embedding
    ActionChains(browser).move_to_element(browser.find_element(By.ID, "overlay")).context_click().perform()
    _wait(browser, "return document.getElementById('status').classList.contains('error')", "an error")
    request = _js(browser, "return sesam.lastRequest")
    assert request["prompts"][0]["labels"] == [0] and request["multimask"] is True
    status = _js(browser, "return document.getElementById('status').textContent")
    assert "unknown or was evicted" in status and "HTTP 404" in status, status
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text  # noqa: B018 (reading it is the check)
    assert _js(browser, "return [sesam.state.actions.length, sesam.state.answers.length]") == [0, 0]
    assert _js(browser, "return document.getElementById('download-png').disabled")
