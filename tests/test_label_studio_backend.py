"""The Label Studio ML backend (`/ls`) over real HTTP, with the requests Label Studio 1.2x sends:
health, setup, interactive keypoint / rectangle requests answered as brush masks equal to
`/predict`'s, batch predictions refined from a task's annotations, image reads from Label Studio's
host with the project's token (a small token-checking file server here; the real Label Studio is in
the integration tier, tests/test_label_studio_live.py), the API key over basic auth, and every bad
request a 4xx naming the field."""

from __future__ import annotations

import base64
import io
import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from models.io import decode_rle
from models.labels.brush import brush_result, decode_brush
from serving.cli import serve_command
from serving.label_studio import parse_label_config
from tests.conftest import REPO, free_port, require_data, running_server

TOKEN = "ls-token-123"
KEY = "sesam-key"
CONFIG = """<View>
  <Image name="img" value="$picture"/>
  <BrushLabels name="mask" toName="img"><Label value="Person"/><Label value="Background"/></BrushLabels>
  <KeyPointLabels name="kp" toName="img" smart="true"><Label value="person"/></KeyPointLabels>
  <RectangleLabels name="rect" toName="img" smart="true"><Label value="Person"/></RectangleLabels>
</View>"""


@pytest.fixture(scope="module")
def pedestrian() -> tuple[bytes, np.ndarray, list[np.ndarray]]:
    """One Penn-Fudan val image: its file's bytes, pixels and pedestrian masks."""
    from training.datasets import PennFudan

    sample = PennFudan(require_data("pennfudan"), "val").samples()[0]
    data = sample.image.read_bytes()
    return data, np.asarray(Image.open(io.BytesIO(data)).convert("RGB")), list(sample.masks)


GETS: dict[str, int] = {}  # path -> downloads the image host served


@pytest.fixture(scope="module")
def image_host(pedestrian) -> Iterator[str]:
    """Serves the image at /data/upload/<n>/ped.png to `Authorization: Token TOKEN` only (401
    else), counting downloads per path in GETS."""
    data = pedestrian[0]

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.headers.get("Authorization") != f"Token {TOKEN}":
                self.send_response(401)
                self.end_headers()
                return
            parts = self.path.split("/")
            if len(parts) != 5 or parts[:3] != ["", "data", "upload"] or parts[4] != "ped.png":
                self.send_response(404)
                self.end_headers()
                return
            GETS[self.path] = GETS.get(self.path, 0) + 1
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[str]:
    """The service with the classical prior, no student (batch predictions refine annotations), and
    an API key."""
    port = free_port()
    files = tmp_path_factory.mktemp("ls_files")
    env = dict(
        os.environ,
        BENTOML_DO_NOT_TRACK="true",
        SESAM_BACKEND="classical",
        SESAM_STUDENT_CHECKPOINT="none",
        SESAM_API_KEY=KEY,
        SESAM_LABEL_STUDIO_FILES=str(files),
    )
    for name in (
        "SESAM_CONFIG",
        "SESAM_SAM_CHECKPOINT",
        "SESAM_LABEL_STUDIO_URL",
        "SESAM_LABEL_STUDIO_TOKEN",
    ):
        env.pop(name, None)
    url = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("ls_serve") / "bentoml.log"
    with running_server(serve_command("127.0.0.1", port), url, env, log, REPO):
        yield url


def basic() -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"labelstudio:{KEY}".encode()).decode()}


def task(url: str = "/data/upload/1/ped.png", annotations: list | None = None) -> dict:
    return {"id": 1, "data": {"picture": url}, "annotations": annotations or []}


def predict(served: str, body: dict, status: int = 200) -> dict:
    answer = httpx.post(f"{served}/ls/predict", json=body, headers=basic(), timeout=120)
    assert answer.status_code == status, answer.text
    return answer.json()


def keypoint(x: float, y: float, w: int, h: int, positive: bool = True, label: str = "person") -> dict:
    return {
        "type": "keypointlabels",
        "from_name": "kp",
        "to_name": "img",
        "original_width": w,
        "original_height": h,
        "is_positive": positive,
        "value": {"x": 100 * x / w, "y": 100 * y / h, "width": 0.5, "keypointlabels": [label]},
    }


def rectangle(box: tuple[float, float, float, float], w: int, h: int) -> dict:
    x0, y0, x1, y1 = box
    value = {
        "x": 100 * x0 / w,
        "y": 100 * y0 / h,
        "width": 100 * (x1 - x0) / w,
        "height": 100 * (y1 - y0) / h,
    }
    return {
        "type": "rectanglelabels",
        "from_name": "rect",
        "to_name": "img",
        "original_width": w,
        "original_height": h,
        "value": value | {"rotation": 0, "rectanglelabels": ["Person"]},
    }


def served_mask(served: str, data: bytes, prompt: dict) -> tuple[np.ndarray, float]:
    """`/predict`'s best mask and its IoU score for one prompt on the image file."""
    import json

    answer = httpx.post(
        f"{served}/predict",
        files={"image": ("ped.png", data, "image/png")},
        data={"prompts": json.dumps([prompt]), "multimask": "true"},
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=120,
    )
    assert answer.status_code == 200, answer.text
    p = answer.json()["predictions"][0]
    return decode_rle(p["masks"][p["best"]]), p["iou"][p["best"]]


def test_health_setup_and_webhook_answer_fast_without_model_work(served: str, image_host: str) -> None:
    health = httpx.get(f"{served}/ls/health", headers=basic(), timeout=5)
    assert health.status_code == 200 and health.json()["status"] == "UP"
    assert health.json()["model_version"] == "sesam-classical"
    setup = httpx.post(
        f"{served}/ls/setup",
        json={"project": "1.1733300000", "schema": CONFIG, "hostname": image_host, "access_token": TOKEN},
        headers=basic(),
        timeout=5,
    )
    assert setup.status_code == 200 and setup.json() == {"model_version": "sesam-classical"}
    hook = httpx.post(f"{served}/ls/webhook", json={"action": "START_TRAINING"}, headers=basic(), timeout=5)
    assert hook.status_code == 200 and hook.json()["action"] == "START_TRAINING"


def test_interactive_clicks_and_boxes_are_predicts_best_mask(
    served: str, image_host: str, pedestrian
) -> None:
    data, pixels, masks = pedestrian
    h, w = pixels.shape[:2]
    httpx.post(
        f"{served}/ls/setup",
        json={"project": "1.5", "schema": CONFIG, "hostname": image_host, "access_token": TOKEN},
        headers=basic(),
    )
    ys, xs = np.nonzero(masks[0])
    x, y = float(np.median(xs)) + 0.25, float(np.median(ys)) + 0.5
    box = (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))
    requests = [
        ([keypoint(x, y, w, h)], {"points": [[x, y]], "labels": [1]}),
        (
            [keypoint(x, y, w, h), keypoint(x + 40, y, w, h, positive=False)],
            {"points": [[x, y], [x + 40, y]], "labels": [1, 0]},
        ),
        ([rectangle(box, w, h)], {"box": list(box)}),
    ]
    url = "/data/upload/77/ped.png"  # a task no other test reads
    for regions, prompt in requests:
        body = {
            "tasks": [task(url)],
            "project": "1.5",
            "label_config": CONFIG,
            "params": {"context": {"result": regions}},
        }
        (answer,) = predict(served, body)["results"]
        (result,) = answer["result"]
        assert (result["type"], result["from_name"], result["to_name"]) == ("brushlabels", "mask", "img")
        assert result["value"]["brushlabels"] == ["Person"]  # the clicked label, matched case-insensitively
        assert (result["original_width"], result["original_height"]) == (w, h)
        expected, iou = served_mask(served, data, prompt)
        assert np.array_equal(decode_brush(result["value"]["rle"], h, w), expected)
        assert (
            answer["score"] == pytest.approx(iou, abs=1e-6) and answer["model_version"] == "sesam-classical"
        )
    assert GETS[url] == 1  # three requests on one task: its image read and embedded once


def test_batch_predictions_refine_the_tasks_annotations(served: str, image_host: str, pedestrian) -> None:
    """No student: a task's keypoint and brush stroke, refined by SeSAM, come back as one brush per
    class; the stroke's pixels keep their class."""
    from scipy import ndimage as ndi

    _, pixels, masks = pedestrian
    h, w = pixels.shape[:2]
    stroke = ndi.binary_erosion(masks[0], iterations=8)
    ys, xs = np.nonzero(masks[-1])
    regions = [
        brush_result(stroke, "Person", "mask", "img"),
        keypoint(float(np.median(xs)), float(np.median(ys)), w, h),
    ]
    body = {
        "tasks": [task(annotations=[{"result": regions}])],
        "project": "1.5",
        "label_config": CONFIG,
        "params": {},
    }
    httpx.post(
        f"{served}/ls/setup",
        json={"project": "1.5", "schema": CONFIG, "hostname": image_host, "access_token": TOKEN},
        headers=basic(),
    )
    (answer,) = predict(served, body)["results"]
    (result,) = answer["result"]
    assert result["value"]["brushlabels"] == ["Person"] and answer["score"] == 1.0
    mask = decode_brush(result["value"]["rle"], h, w)
    assert mask[stroke].all() and stroke.sum() < mask.sum() < h * w
    # a task without annotations: an empty prediction, not an error
    (empty,) = predict(served, body | {"tasks": [task()]})["results"]
    assert empty["result"] == [] and empty["score"] == 0.0


def test_local_files_and_data_uris_are_read(served: str, pedestrian, tmp_path: Path) -> None:
    data, pixels, masks = pedestrian
    h, w = pixels.shape[:2]
    ys, xs = np.nonzero(masks[0])
    x, y = float(np.median(xs)), float(np.median(ys))
    context = {"context": {"result": [keypoint(x, y, w, h)]}}
    uri = "data:image/png;base64," + base64.b64encode(data).decode()
    expected, _ = served_mask(served, data, {"points": [[x, y]], "labels": [1]})
    body = {"tasks": [task(uri)], "project": "9", "label_config": CONFIG, "params": context}
    (answer,) = predict(served, body)["results"]
    assert np.array_equal(decode_brush(answer["result"][0]["value"]["rle"], h, w), expected)


BAD = [
    ({"tasks": [], "label_config": CONFIG}, 400, "tasks"),
    ({"tasks": [task()], "label_config": "<View"}, 400, "label_config"),
    ({"tasks": [task()], "label_config": "<View><Text name='t' value='$x'/></View>"}, 400, "label_config"),
    ({"tasks": [{"id": 1, "data": {}}], "label_config": CONFIG}, 400, "tasks[0]"),
    # an absolute URL on another host: never fetched (no server-side request forgery)
    (
        {"tasks": [task("http://169.254.169.254/latest/meta-data")], "label_config": CONFIG},
        400,
        "tasks[0].data",
    ),
    # a local-files path outside the configured folder
    (
        {"tasks": [task("/data/local-files/?d=../../etc/passwd")], "label_config": CONFIG},
        404,
        "tasks[0].data",
    ),
    (
        {
            "tasks": [task()],
            "label_config": CONFIG,
            "params": {"context": {"result": [{"type": "keypointlabels", "value": {"x": "left"}}]}},
        },
        400,
        "params.context.result[0].value",
    ),
    (
        {
            "tasks": [task()],
            "label_config": CONFIG,
            "params": {"context": {"result": [keypoint(5000, 10, 100, 100)]}},
        },
        400,
        "params.context.result[0].value",
    ),
    ({"tasks": [task("/data/local-files/?d=%00")], "label_config": CONFIG}, 404, "tasks[0].data"),
    # Label Studio's API is not an image source, even on its own host with the token
    ({"tasks": [task("/api/projects/")], "label_config": CONFIG}, 400, "tasks[0].data"),
    ({"tasks": [task("http://[::1/data/upload/1/a.png")], "label_config": CONFIG}, 400, "tasks[0].data"),
    ({"tasks": [task("/data/upload/1/\x00.png")], "label_config": CONFIG}, 400, "tasks[0].data"),
    ({"tasks": [task("data:image/png;base64,***")], "label_config": CONFIG}, 400, "tasks[0].data"),
    ({"tasks": [task("data:image/png,rawbytes")], "label_config": CONFIG}, 400, "tasks[0].data"),
    (
        {
            "tasks": [task()],
            "label_config": "<View><Image name='i' value='$picture'/><BrushLabels name='b' toName='i'/></View>",
        },
        400,
        "label_config",
    ),
    (
        {
            "tasks": [task()],
            "label_config": CONFIG,
            "params": {"context": {"result": [{"type": "keypointlabels", "value": {"keypointlabels": []}}]}},
        },
        400,
        "params.context.result[0].value",
    ),
    (
        {
            "tasks": [task()],
            "label_config": CONFIG,
            "params": {"context": {"result": [{"type": "rectanglelabels", "value": 5}]}},
        },
        400,
        "params.context.result[0].value",
    ),
    (
        {"tasks": [task()], "label_config": CONFIG, "params": {"context": {"result": ["a region?"]}}},
        400,
        "params.context.result[0]",
    ),
]


@pytest.mark.parametrize(("body", "status", "field"), BAD, ids=[b[2] + str(i) for i, b in enumerate(BAD)])
def test_bad_requests_get_a_4xx_naming_the_field(
    served: str, image_host: str, body: dict, status: int, field: str
) -> None:
    httpx.post(
        f"{served}/ls/setup",
        json={"project": "3", "schema": CONFIG, "hostname": image_host, "access_token": TOKEN},
        headers=basic(),
    )
    error = predict(served, body | {"project": "3"}, status)["error"]
    assert error["field"] == field and "ls_files" not in error["message"]  # no server folder in it


def test_a_wrong_token_or_key_is_refused(served: str, image_host: str) -> None:
    httpx.post(
        f"{served}/ls/setup",
        json={"project": "4", "schema": CONFIG, "hostname": image_host, "access_token": "wrong"},
        headers=basic(),
    )
    body = {"tasks": [task()], "project": "4", "label_config": CONFIG, "params": {}}
    error = predict(served, body, 400)["error"]
    assert (
        error["field"] == "tasks[0].data"
        and "answered 401" in error["message"]
        and "token" in error["message"]
    )
    refused = httpx.get(
        f"{served}/ls/health", headers={"Authorization": "Basic " + base64.b64encode(b"u:nope").decode()}
    )
    assert refused.status_code == 401 and refused.json()["error"]["field"] == "Authorization"
    # basic auth opens /ls only, never the service's own routes
    assert httpx.post(f"{served}/embed", headers=basic()).status_code == 401


def test_hostile_bodies_and_paths_get_4xx(served: str, pedestrian) -> None:
    """Deep JSON, a non-URL hostname, dot segments around the open /ui and the basic-auth /ls, a
    brush bomb in a task's annotation: each a 4xx in the one error shape, never a 500."""
    deep = "[" * 100000 + "]" * 100000
    answer = httpx.post(
        f"{served}/ls/predict", content=deep, headers=basic() | {"Content-Type": "application/json"}
    )
    assert answer.status_code == 400 and answer.json()["error"]["field"] == "body"
    answer = httpx.post(f"{served}/ls/setup", json={"project": "5", "hostname": 7}, headers=basic())
    assert answer.status_code == 400 and answer.json()["error"]["field"] == "hostname"
    for path in ("/ui/../embed", "/ui/%2e%2e/embed", "/ui/../../etc/passwd"):
        assert httpx.post(f"{served}{path}").status_code in (401, 404, 405), path
    assert httpx.post(f"{served}/ls/../embed", headers=basic()).status_code in (401, 404)
    data, pixels, _ = pedestrian
    h, w = pixels.shape[:2]
    bits = f"{2**32 - 1:032b}" + "00111" + "0010" + "0011" + "0111" + "1111" + "1" + "11" + "1" * 16 + "0" * 8
    bomb = [int(bits[i : i + 8], 2) for i in range(0, 64, 8)]
    brush = {
        "type": "brushlabels",
        "original_width": w,
        "original_height": h,
        "value": {"format": "rle", "rle": bomb, "brushlabels": ["Person"]},
    }
    uri = "data:image/png;base64," + base64.b64encode(data).decode()
    body = {"tasks": [task(uri, [{"result": [brush]}])], "project": "5", "label_config": CONFIG}
    error = predict(served, body, 400)["error"]
    assert error["field"] == "tasks[0].annotations" and "4294967295" in error["message"]


def test_many_tasks_and_edge_boxes(served: str, pedestrian) -> None:
    """Label Studio sends every selected task in one request: 20 are answered (more than
    max_images); a box drawn to the image's edge (its percentages sum past 100 by rounding) and a
    keypoint claiming a 100000-pixel canvas use the decoded image's own size."""
    tiny = io.BytesIO()
    Image.fromarray(np.full((16, 16, 3), 90, np.uint8)).save(tiny, format="PNG")
    uri = "data:image/png;base64," + base64.b64encode(tiny.getvalue()).decode()
    answer = predict(served, {"tasks": [task(uri)] * 20, "project": "6", "label_config": CONFIG})
    assert [r["result"] for r in answer["results"]] == [[]] * 20
    data, pixels, masks = pedestrian
    h, w = pixels.shape[:2]
    ys, xs = np.nonzero(masks[-1])
    edge = rectangle((float(xs.min()), float(ys.min()), float(w), float(h)), w, h)
    edge["value"]["width"] += 1e-4
    uri = "data:image/png;base64," + base64.b64encode(data).decode()
    body = {
        "tasks": [task(uri)],
        "project": "6",
        "label_config": CONFIG,
        "params": {"context": {"result": [edge]}},
    }
    (result,) = predict(served, body)["results"][0]["result"]
    assert decode_brush(result["value"]["rle"], h, w).any()
    liar = keypoint(float(np.median(xs)), float(np.median(ys)), w, h) | {
        "original_width": 100000,
        "original_height": 100000,
    }
    body = {"tasks": [task(uri, [{"result": [liar]}])], "project": "6", "label_config": CONFIG}
    (answer,) = predict(served, body)["results"]
    assert answer["result"][0]["original_width"] == w


def test_parse_label_config_finds_the_image_and_brush() -> None:
    config = parse_label_config(CONFIG)
    assert (config.image, config.image_value, config.brush) == ("img", "picture", "mask")
    assert config.brush_labels == ["Person", "Background"] and config.brush_label("PERSON") == "Person"
    assert config.brush_label("car") is None
