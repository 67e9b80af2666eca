"""The BentoML service over real HTTP: `bentoml serve` on 127.0.0.1, every route, every error."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from PIL import Image

from models.engine import Prompt
from models.engine.classical import ClassicalPrior
from models.engine.sam_torch import SamEngine
from serving.cli import serve_command
from serving.codec import decode_png, decode_rle
from tests.conftest import REPO

MAX_PROMPTS = 5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module", params=["classical", "torch-tiny"])
def server(request) -> Iterator[tuple[str, str]]:
    port = _free_port()
    env = dict(os.environ, BENTOML_DO_NOT_TRACK="true", SESAM_MAX_PROMPTS=str(MAX_PROMPTS))
    env.pop("SESAM_SAM_CHECKPOINT", None)
    env["SESAM_BACKEND"] = "classical" if request.param == "classical" else "torch"
    env["SESAM_SAM_TYPE"] = "tiny"
    proc = subprocess.Popen(
        serve_command("127.0.0.1", port),
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError("bentoml serve exited:\n" + proc.stdout.read().decode(errors="replace"))
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("bentoml serve did not become ready in 180 s")
            time.sleep(0.5)
        yield url, request.param
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def _png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def _post(url: str, image: bytes, prompts, **fields) -> httpx.Response:
    data = {"prompts": prompts if isinstance(prompts, str) else json.dumps(prompts)}
    data.update({k: json.dumps(v) if not isinstance(v, str) else v for k, v in fields.items()})
    return httpx.post(
        f"{url}/predict", files={"image": ("x.png", image, "image/png")}, data=data, timeout=120
    )


PROMPTS = [
    {"points": [[120, 130]], "labels": [1]},
    {"box": [250, 170, 410, 330]},
    {"points": [[330, 250], [120, 130]], "labels": [1, 0], "box": [250, 170, 410, 330]},
]


def _in_process(kind: str, tiny_sam):
    return ClassicalPrior() if kind == "classical" else SamEngine(tiny_sam, name="sam-tiny")


def test_health_routes(server) -> None:
    url, _ = server
    assert httpx.get(f"{url}/livez").status_code == 200
    assert httpx.get(f"{url}/readyz").status_code == 200
    assert "bentoml" in httpx.get(f"{url}/metrics").text


def test_predict_equals_in_process_engine(server, scene, tiny_sam) -> None:
    url, kind = server
    response = _post(url, _png_bytes(scene), PROMPTS)
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["width"], body["height"]) == (480, 360)
    expected = _in_process(kind, tiny_sam).predict(scene, [Prompt(**p) for p in PROMPTS])
    assert len(body["predictions"]) == 3
    for i, pred in enumerate(body["predictions"]):
        masks = np.stack([decode_rle(m) for m in pred["masks"]])
        assert np.array_equal(masks, expected.masks[i])
        np.testing.assert_allclose(pred["iou"], expected.iou[i], atol=1e-5)
        np.testing.assert_allclose(pred["stability"], expected.stability[i], atol=1e-5)


def test_png_masks_and_single_mask(server, scene) -> None:
    url, _ = server
    response = _post(url, _png_bytes(scene), PROMPTS[:1], multimask=False, mask_format="png")
    assert response.status_code == 200, response.text
    pred = response.json()["predictions"][0]
    assert len(pred["masks"]) == 1 and decode_png(pred["masks"][0]).shape == (360, 480)


def test_cached_image_is_not_re_encoded(server, scene) -> None:
    url, _ = server
    image = _png_bytes(scene[::-1].copy())
    _post(url, image, PROMPTS[:1])
    before = httpx.post(f"{url}/info", json={}).json()["stats"]
    assert _post(url, image, PROMPTS[1:2]).status_code == 200
    after = httpx.post(f"{url}/info", json={}).json()["stats"]
    assert after["encoder_calls"] == before["encoder_calls"]
    assert after["cache_hits"] == before["cache_hits"] + 1


@pytest.mark.parametrize(
    ("image", "prompts", "status", "message"),
    [
        (b"definitely not an image", PROMPTS[:1], 400, "not a readable image"),
        (None, [{"points": [[900, 10]], "labels": [1]}], 400, "lies outside the 480x360 image"),
        (None, "[{not json", 400, ""),
        (None, [{}], 400, "prompt 0 is empty"),
        (None, [{"points": [[1, 1]], "labels": [7]}], 400, "must be 1 (positive) or 0 (negative)"),
        (None, [PROMPTS[0]] * (MAX_PROMPTS + 1), 400, f"exceed the limit of {MAX_PROMPTS}"),
        (None, PROMPTS[:1], 400, "mask_format"),
    ],
)
def test_bad_requests_get_4xx_and_server_survives(server, scene, image, prompts, status, message) -> None:
    url, _ = server
    fields = {"mask_format": "jpeg"} if message == "mask_format" else {}
    response = _post(url, image if image is not None else _png_bytes(scene), prompts, **fields)
    assert response.status_code == status, response.text
    assert message in response.text
    assert _post(url, _png_bytes(scene), PROMPTS[:1]).status_code == 200


def test_missing_image_field(server) -> None:
    url, _ = server
    response = httpx.post(f"{url}/predict", data={"prompts": json.dumps(PROMPTS)}, timeout=30)
    assert 400 <= response.status_code < 500
