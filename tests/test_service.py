"""The BentoML service over real HTTP: `bentoml serve` on 127.0.0.1, every route, every error.

Two servers: the classical prior with adaptive batching for /segment, and the tiny seeded SAM
(torch) without; both with an API key and small limits so every refusal can be provoked.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from models.engine import EngineConfig, Prompt, build_engine
from models.engine.sam_torch import SamEngine
from models.labels import backend_defaults, build_labeler
from models.labels.schema import WeakLabels
from models.students.semantic import StudentSegmenter
from serving.cli import serve_command
from serving.client import ServiceError, SesamClient
from serving.codec import decode_labels, decode_png, decode_polygons, decode_rle, encode_polygons
from serving.config import SHIPPED_STUDENT, ServiceConfig
from tests.conftest import REPO, free_port
from tests.conftest import running_server as _running

MAX_PROMPTS = 5
MAX_PIXELS = 1_000_000
MAX_BODY = 3 * 1024**2
API_KEY = "test-key-0123456789"
AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def tags_models(tmp_path_factory) -> dict[str, Path]:
    """A seeded random CAM classifier (11 classes) and a tiny random Grounding DINO, by path."""
    import torch

    from models.students.cam import CamClassifier, save_cam_classifier
    from tests.tiny_detectors import tiny_grounding_dino

    root = tmp_path_factory.mktemp("tags_models")
    torch.manual_seed(0)
    save_cam_classifier(root / "cam.pt", CamClassifier("fpn-mobilenetv2", 11, 16), {"base_scale": 0.5})
    return {"cam": root / "cam.pt", "detector": tiny_grounding_dino(root / "gdino")}


@pytest.fixture(scope="module", params=["classical", "torch-tiny"])
def server(request, tmp_path_factory, tags_models) -> Iterator[tuple[str, str]]:
    port = free_port()
    log_path = tmp_path_factory.mktemp("serve") / "bentoml.log"  # a file: a full pipe would block the server
    env = dict(
        os.environ,
        BENTOML_DO_NOT_TRACK="true",
        SESAM_MAX_PROMPTS=str(MAX_PROMPTS),
        SESAM_MAX_IMAGE_PIXELS=str(MAX_PIXELS),
        SESAM_MAX_BODY_BYTES=str(MAX_BODY),
        SESAM_API_KEY=API_KEY,
        SESAM_SAM_TYPE="tiny",
        SESAM_CAM_CHECKPOINT=str(tags_models["cam"]),
        SESAM_DETECTOR=str(tags_models["detector"]),
    )
    env.pop("SESAM_SAM_CHECKPOINT", None)
    env.pop("SESAM_CONFIG", None)
    env["SESAM_BACKEND"] = "classical" if request.param == "classical" else "torch"
    env["SESAM_BATCHING"] = "1" if request.param == "classical" else "0"
    url = f"http://127.0.0.1:{port}"
    with _running(serve_command("127.0.0.1", port), url, env, log_path, REPO):
        yield url, request.param


@pytest.fixture(scope="module")
def client(server) -> Iterator[SesamClient]:
    with SesamClient(server[0], api_key=API_KEY, retries=0) as c:
        yield c


def _png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def _post(url: str, route: str, image: bytes | None = None, headers=AUTH, **fields) -> httpx.Response:
    data = {k: v if isinstance(v, str) else json.dumps(v) for k, v in fields.items()}
    field = "images" if route == "/segment" else "image"
    files = {field: ("x.png", image, "image/png")} if image is not None else None
    return httpx.post(f"{url}{route}", files=files, data=data, headers=headers, timeout=120)


PROMPTS = [
    {"points": [[120, 130]], "labels": [1]},
    {"box": [250, 170, 410, 330]},
    {"points": [[330, 250], [120, 130]], "labels": [1, 0], "box": [250, 170, 410, 330]},
]


def _engine(kind: str, tiny_sam):
    if kind == "classical":
        return build_engine(
            EngineConfig(backend="classical")
        )  # the per-request cap is the service's, not the engine's
    return SamEngine(tiny_sam, name="sam-tiny")


def _alive(url: str, scene: np.ndarray) -> None:
    assert _post(url, "/predict", _png_bytes(scene), prompts=PROMPTS[:1]).status_code == 200


# -- health and auth ---------------------------------------------------------------------------
def test_health_routes_stay_open(server) -> None:
    url, _ = server
    assert httpx.get(f"{url}/livez").status_code == 200
    assert httpx.get(f"{url}/readyz").status_code == 200
    assert "bentoml" in httpx.get(f"{url}/metrics").text


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer wrong-key-000000"}, {"Authorization": API_KEY}]
)
def test_api_key_is_required(server, scene, headers) -> None:
    url, _ = server
    for route in ("/predict", "/embed", "/info", "/segment"):
        response = _post(url, route, _png_bytes(scene), headers=headers, prompts=PROMPTS[:1])
        assert response.status_code == 401, (route, response.text)
        assert response.json()["error"]["field"] == "Authorization"
        assert response.headers["www-authenticate"].startswith("Bearer")
    _alive(url, scene)


# -- /predict and /embed -------------------------------------------------------------------------
def test_predict_equals_in_process_engine(server, scene, tiny_sam) -> None:
    url, kind = server
    response = _post(url, "/predict", _png_bytes(scene), prompts=PROMPTS)
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["width"], body["height"]) == (480, 360)
    expected = _engine(kind, tiny_sam).predict(scene, [Prompt(**p) for p in PROMPTS])
    assert len(body["predictions"]) == 3
    for i, pred in enumerate(body["predictions"]):
        masks = np.stack([decode_rle(m) for m in pred["masks"]])
        assert np.array_equal(masks, expected.masks[i])
        np.testing.assert_allclose(pred["iou"], expected.iou[i], atol=1e-5)
        np.testing.assert_allclose(pred["stability"], expected.stability[i], atol=1e-5)
        assert pred["best"] == int(np.argmax(expected.iou[i]))


def test_embed_then_predict_by_id_and_next_click(client, server, scene, tiny_sam) -> None:
    _, kind = server
    image = scene[:, ::-1].copy()
    first = client.embed(image)
    again = client.embed(image)
    assert first["image_id"] == again["image_id"] and (first["width"], first["height"]) == (480, 360)
    assert first["cached"] is False and again["cached"] is True
    before = client.info()["stats"]["encoder_calls"]
    by_id = client.predict(PROMPTS[:1], image_id=first["image_id"])
    by_pixels = client.predict(PROMPTS[:1], image=image)
    assert client.info()["stats"]["encoder_calls"] == before  # neither call re-encoded
    assert by_id["predictions"][0]["masks"] == by_pixels["predictions"][0]["masks"]
    # the next click: send back the best candidate's low-res logits as the mask input
    click = {
        "points": [[120, 130], [200, 60]],
        "labels": [1, 0],
        "mask_input_id": by_id["predictions"][0]["logits_id"],
    }
    second = client.predict([click], image_id=first["image_id"], multimask=False)
    engine = _engine(kind, tiny_sam)
    handle = engine.embed([image])[0]
    earlier = engine.predict(handle, [Prompt(**PROMPTS[0])])
    best = int(np.argmax(earlier.iou[0]))
    expected = engine.predict(
        handle,
        [
            Prompt(
                points=click["points"],
                labels=click["labels"],
                mask_logits=earlier.low_res_logits[0, best : best + 1],
            )
        ],
        multimask=False,
    )
    assert np.array_equal(client.decode_masks(second)[0], expected.masks[0])


def test_mask_formats(client, scene) -> None:
    rle = client.predict(PROMPTS[:1], image=scene, multimask=False)
    png = client.predict(PROMPTS[:1], image=scene, multimask=False, mask_format="png")
    poly = client.predict(PROMPTS[:1], image=scene, multimask=False, mask_format="polygons")
    reference = decode_rle(rle["predictions"][0]["masks"][0])
    assert np.array_equal(decode_png(png["predictions"][0]["masks"][0]), reference)
    assert poly["predictions"][0]["masks"][0] == encode_polygons(reference)


def test_polygons_outline_the_mask() -> None:
    """Polygons are a simplified outline: close to the mask for a real shape, holes included."""
    mask = np.zeros((120, 160), bool)
    mask[20:100, 30:140] = True
    mask[40:60, 50:80] = False  # a hole
    mask[0:10, 150:160] = True  # touching the border
    yy, xx = np.mgrid[:120, :160]
    mask |= (yy - 90) ** 2 + (xx - 12) ** 2 < 10**2
    polygons = encode_polygons(mask)
    assert len(polygons) == 4
    decoded = decode_polygons(polygons, 120, 160)
    assert (decoded & mask).sum() / (decoded | mask).sum() > 0.97


# -- /refine -------------------------------------------------------------------------------------
def _weak(scene: np.ndarray) -> WeakLabels:
    weak = WeakLabels.from_json(
        {
            "version": 1,
            "width": 480,
            "height": 360,
            "points": [{"x": 120, "y": 130, "class_id": 2}],
            "scribbles": [{"class_id": 5, "width": 3, "points": [[300, 240], [340, 260], [380, 250]]}],
            "boxes": [{"class_id": 8, "box": [250, 170, 410, 330]}],
        }
    )
    coarse = np.full(scene.shape[:2], 255, np.uint8)
    coarse[20:80, 20:200] = 1
    weak.coarse = coarse
    return weak


@pytest.mark.parametrize("method", ["sesam", "naive", "sepl"])
def test_refine_equals_in_process_refiner(client, server, scene, tiny_sam, method) -> None:
    _, kind = server
    weak = _weak(scene)
    options = {"points_per_side": 6} if method == "sepl" else {}  # 36 automatic-mask prompts, not 256
    answer = client.refine(scene, weak, method=method, num_classes=11, options=options or None)
    engine = _engine(kind, tiny_sam)
    labeler = build_labeler(method, engine, **backend_defaults(method, engine.name, options))
    expected = labeler.refine(scene, weak)
    assert np.array_equal(decode_labels(answer["labels"]), expected.labels)
    assert answer["stats"]["labelled_fraction"] == pytest.approx(expected.stats()["labelled_fraction"])
    assert sorted(answer["stats"]["weak_kinds"]) == sorted(weak.kinds())
    rle = client.refine(scene, weak, method=method, label_format="rle", options=options or None)
    assert np.array_equal(decode_labels(rle["labels"]), expected.labels)


TAGS_REQUESTS = {
    "sepl": ("sepl", {"tags": [0, 3, 8]}, {"points_per_side": 6}),
    "sepl-authors": ("sepl", {"tags": [0, 3]}, {"points_per_side": 6, "rule": "authors"}),
    "weaksam": ("weaksam", {"tags": [3, 8]}, {"points_per_side": 4, "peak_threshold": 0.9}),
    "grounded-dino": ("grounded", {"tags": [0, 8]}, {"box_threshold": 0.0, "text_threshold": 0.0}),
    "grounded-user": (
        "grounded",
        {"tags": [8], "boxes": [{"class_id": 8, "box": [250, 170, 410, 330]}]},
        {"box_source": "user"},
    ),
}


@pytest.mark.parametrize("case", sorted(TAGS_REQUESTS))
def test_refine_from_tags_equals_in_process(client, server, scene, tiny_sam, tags_models, case) -> None:
    """Every tags method over HTTP answers what the labeler computes in-process with the server's
    model files."""
    _, kind = server
    method, weak_json, options = TAGS_REQUESTS[case]
    weak = WeakLabels.from_json({"version": 2, "width": 480, "height": 360} | weak_json)
    answer = client.refine(scene, weak, method=method, options=options, num_classes=11)
    paths = {"sepl": {"cam": str(tags_models["cam"])}, "weaksam": {"cam": str(tags_models["cam"])}}
    paths["grounded"] = {"detector": str(tags_models["detector"])}
    engine = _engine(kind, tiny_sam)
    opts = backend_defaults(method, engine.name, options | paths[method])
    expected = build_labeler(method, engine, **opts).refine(scene, weak)
    assert np.array_equal(decode_labels(answer["labels"]), expected.labels)
    assert answer["stats"]["instances"] == expected.stats()["instances"]
    assert answer["stats"]["weak_kinds"] == weak.kinds()


# -- /segment ------------------------------------------------------------------------------------
def test_segment_equals_in_process_student(client, camvid_image) -> None:
    student = StudentSegmenter.from_checkpoint(SHIPPED_STUDENT)
    expected = student.segment([camvid_image])[0]
    answer = client.segment(camvid_image, label_format="rle")
    assert answer["class_names"] == student.class_names and answer["task"] == "semantic"
    labels = decode_labels(answer["results"][0]["labels"])
    assert labels.shape == camvid_image.shape[:2]
    assert np.mean(labels == expected) > 0.999  # float summation order may differ across batch sizes
    names = {c["name"] for c in answer["results"][0]["labels"]["classes"]}
    assert names <= set(student.class_names)
    assert np.array_equal(client.segment_labels(camvid_image), labels)


# -- errors --------------------------------------------------------------------------------------
BIG = np.zeros((1100, 1000, 3), np.uint8)  # 1.1 MP > MAX_PIXELS, small as PNG


@pytest.mark.parametrize(
    ("route", "image", "fields", "status", "message"),
    [
        ("/predict", b"definitely not an image", {"prompts": PROMPTS[:1]}, 400, "not a readable image"),
        ("/predict", "big", {"prompts": PROMPTS[:1]}, 413, "exceeds the limit of 1000000"),
        ("/embed", "big", {}, 413, "exceeds the limit"),
        ("/segment", b"\x89PNG\r\n\x1a\n broken", {}, 400, "images[0]: not a readable image"),
        ("/segment", "big", {}, 413, "exceeds the limit"),
        ("/segment", None, {"output": "instances"}, 400, "not meaningful for the semantic student"),
        (
            "/predict",
            None,
            {"prompts": [{"points": [[900, 10]], "labels": [1]}]},
            400,
            "lies outside the 480x360 image",
        ),
        ("/predict", None, {"prompts": "[{not json"}, 400, ""),
        ("/predict", None, {"prompts": [{}]}, 400, "empty prompt"),
        (
            "/predict",
            None,
            {"prompts": [{"points": [[1, 1]], "labels": [7]}]},
            400,
            "prompts[0].labels[0]",
        ),
        (
            "/predict",
            None,
            {"prompts": [PROMPTS[0]] * (MAX_PROMPTS + 1)},
            400,
            f"at most {MAX_PROMPTS} items",
        ),
        ("/predict", None, {"prompts": PROMPTS[:1], "mask_format": "jpeg"}, 400, "mask_format"),
        ("/predict", "none", {"prompts": PROMPTS[:1], "image_id": "f" * 64}, 404, "unknown or was evicted"),
        ("/predict", "none", {"prompts": PROMPTS[:1]}, 400, "exactly one of image"),
        ("/predict", None, {"prompts": PROMPTS[:1], "image_id": "x"}, 400, "exactly one of image"),
        (
            "/predict",
            None,
            {"prompts": [{"points": [[5, 5]], "labels": [1], "mask_input_id": "gone"}]},
            404,
            "mask_input_id",
        ),
        (
            "/refine",
            None,
            {"weak": {"points": [{"x": 5, "y": 5, "class_id": 300}]}},
            400,
            "weak.points[0].class_id",
        ),
        (
            "/refine",
            None,
            {"weak": {"width": 10, "height": 10, "points": []}},
            400,
            "labels are for a 10x10 image",
        ),
        ("/refine", None, {"weak": {"boxes": [{"class_id": 1, "box": [1, 2]}]}}, 400, "box"),
        ("/refine", None, {}, 400, "no labels"),
        ("/refine", None, {"weak": {"tags": [1, 3]}}, 400, "tags given; the sesam labeler reads"),
        ("/refine", None, {"weak": {"tags": [1, 3]}}, 400, "use sepl, weaksam or grounded"),
        ("/refine", None, {"weak": {"tags": [40]}, "method": "sepl"}, 400, "out of range for the CAM"),
        (
            "/refine",
            None,
            {"weak": {"tags": [3]}, "method": "sepl", "num_classes": 2},
            400,
            "out of range for 2",
        ),
        (
            "/refine",
            None,
            {"weak": {"points": [{"x": 5, "y": 5, "class_id": 1}]}, "method": "weaksam"},
            400,
            "the weaksam labeler reads tags",
        ),
        (
            "/refine",
            None,
            {"weak": {"tags": [1]}, "method": "sepl", "options": {"cam": "/etc/passwd"}},
            400,
            "set on the server",
        ),
        (
            "/refine",
            None,
            {"weak": {"tags": [1]}, "method": "grounded", "options": {"detector": "/tmp"}},
            400,
            "SESAM_DETECTOR",
        ),
        (
            "/refine",
            None,
            {"weak": {"tags": [1]}, "method": "grounded", "options": {"box_source": "user"}},
            400,
            "no",
        ),
        (
            "/refine",
            None,
            {"weak": {"tags": [1]}, "method": "weaksam", "options": {"scorer": "wsod"}},
            400,
            "wsod",
        ),
        (
            "/refine",
            None,
            {"weak": {"tags": [1]}, "method": "sepl", "options": {"rule": "vote"}},
            400,
            "rule",
        ),
        (
            "/refine",
            None,
            {"weak": {"tags": [1], "points": [{"x": 1, "y": 1, "class_id": 1}] * 5000}},
            400,
            "at most 4096 items",
        ),
        ("/refine", None, {"weak": {"tags": [1]}, "method": "magic"}, 400, ""),
        ("/refine", None, {"weak": {"tags": [1]}, "options": {"k": "many"}}, 400, ""),
        ("/refine", None, {"weak": {"tags": [1]}, "options": {"unknown_option": 1}}, 400, "unknown_option"),
    ],
)
def test_bad_requests_get_4xx_and_server_survives(
    server, scene, route, image, fields, status, message
) -> None:
    url, _ = server
    if image is None:
        image = _png_bytes(scene)
    elif image == "big":
        image = _png_bytes(BIG)
    elif image == "none":
        image = None
    response = _post(url, route, image, **fields)
    assert response.status_code == status, response.text
    assert message in response.text
    _alive(url, scene)


def test_coarse_mask_and_scribble_bombs_are_refused(server, scene) -> None:
    """A tiny PNG declaring a huge map, and a scribble wider than the image, cost nothing."""
    url, _ = server
    buf = io.BytesIO()
    Image.new("L", (20000, 20000), 255).save(buf, format="PNG")  # ~400 kB file, 400 MP map
    files = {
        "image": ("x.png", _png_bytes(scene), "image/png"),
        "coarse_mask": ("m.png", buf.getvalue(), "image/png"),
    }
    response = httpx.post(f"{url}/refine", files=files, headers=AUTH, timeout=60)
    assert (
        response.status_code == 400 and "coarse_mask: not a readable PNG" in response.text
    )  # PIL's bomb guard
    buf = io.BytesIO()
    Image.new("L", (4000, 3000), 255).save(buf, format="PNG")  # under PIL's guard: our size check
    files["coarse_mask"] = ("m.png", buf.getvalue(), "image/png")
    response = httpx.post(f"{url}/refine", files=files, headers=AUTH, timeout=60)
    assert response.status_code == 400 and "4000x3000 class map, the image is 480x360" in response.text
    wide = {"scribbles": [{"class_id": 1, "width": 10**9, "points": [[10, 10], [200, 100]]}]}
    response = _post(url, "/refine", _png_bytes(scene), weak=wide)
    assert response.status_code == 400 and response.json()["error"]["field"] == "weak.scribbles[0].width"
    _alive(url, scene)


def test_oversized_body_and_missing_fields(server, scene) -> None:
    url, _ = server
    noise = np.random.default_rng(0).integers(0, 255, (1100, 1000, 3), dtype=np.uint8)  # 3.3 MB PNG
    response = _post(url, "/predict", _png_bytes(noise), prompts=PROMPTS[:1])
    assert response.status_code == 413 and response.json()["error"]["field"] == "body"

    def chunks():  # no Content-Length: the guard counts while reading
        for _ in range(5):
            yield b"x" * (1024**2)

    response = httpx.post(
        f"{url}/embed", content=chunks(), headers=AUTH | {"content-type": "application/octet-stream"}
    )
    assert response.status_code == 413
    response = httpx.post(f"{url}/predict", data={"prompts": json.dumps(PROMPTS)}, headers=AUTH, timeout=30)
    assert 400 <= response.status_code < 500
    response = httpx.post(f"{url}/refine", content=b"{]", headers=AUTH | {"content-type": "application/json"})
    assert 400 <= response.status_code < 500
    _alive(url, scene)


def test_client_errors_and_retries(server, tmp_path) -> None:
    url, _ = server
    with SesamClient(url, api_key=None, retries=0) as anonymous, pytest.raises(ServiceError) as err:
        anonymous.info()
    assert err.value.status == 401
    with SesamClient(f"http://127.0.0.1:{free_port()}", retries=2, backoff_s=0.01) as dead:
        assert dead.ready() is False
        with pytest.raises(ServiceError, match="failed after 3 attempts"):
            dead.info()


# -- sesam refine --endpoint ----------------------------------------------------------------------
@pytest.mark.parametrize("server", ["classical"], indirect=True)  # one backend is enough here
def test_refine_through_endpoint_equals_in_process(server, scene, tmp_path, capsys) -> None:
    from sesam.cli import main

    url, _ = server
    images, weak_dir = tmp_path / "images", tmp_path / "weak"
    images.mkdir()
    weak_dir.mkdir()
    weak = _weak(scene)
    for i, stem in enumerate(("a", "b", "c")):
        Image.fromarray(np.roll(scene, 40 * i, axis=1)).save(images / f"{stem}.png")
        (weak_dir / f"{stem}.json").write_text(json.dumps(weak.to_json()))
        Image.fromarray(weak.coarse).save(weak_dir / f"{stem}.png")
    common = ["refine", "--images", str(images), "--weak", str(weak_dir), "--quiet", "--num-classes", "11"]
    assert main([*common, "--out", str(tmp_path / "local"), "--backend", "classical"]) == 0
    remote = [*common, "--out", str(tmp_path / "remote"), "--endpoint", url, "--api-key", API_KEY]
    assert main([*remote, "--limit", "2"]) == 0
    summary = json.loads((tmp_path / "remote" / "summary.json").read_text())
    assert summary["refined"] == 2
    assert main([*remote, "--concurrency", "2"]) == 0  # resumes: only c is refined
    summary = json.loads((tmp_path / "remote" / "summary.json").read_text())
    assert summary["refined"] == 1 and summary["skipped_existing"] == 2
    for stem in ("a", "b", "c"):
        local = np.array(Image.open(tmp_path / "local" / f"{stem}.png"))
        served = np.array(Image.open(tmp_path / "remote" / f"{stem}.png"))
        assert np.array_equal(local, served), stem
    capsys.readouterr()
    # a wrong key is found once, before any image (it used to fail every image with a 401: exit 1)
    assert main([*remote[:-2], "--api-key", "wrong-key-000000", "--overwrite", "--retries", "0"]) == 2
    assert "the API key is missing or wrong" in capsys.readouterr().err
    # a labeling tool's export through the endpoint: staged on the client, refined as in-process
    xml = (
        "<annotations><meta><task><labels><label><name>red</name></label><label><name>blue</name></label>"
        '</labels></task></meta><image id="7" name="a.png" width="480" height="360">'
        '<box label="red" xtl="50" ytl="60" xbr="200" ybr="200"/><box label="blue" xtl="300" ytl="20" xbr="460" ybr="120"/>'
        "</image></annotations>"
    )
    (tmp_path / "export.xml").write_text(xml)
    only_a = tmp_path / "only_a"
    only_a.mkdir()
    (only_a / "a.png").write_bytes((images / "a.png").read_bytes())
    export = ["refine", "--images", str(only_a), "--weak", str(tmp_path / "export.xml"), "--quiet"]
    assert main([*export, "--out", str(tmp_path / "xl"), "--backend", "classical"]) == 0
    assert main([*export, "--out", str(tmp_path / "xr"), "--endpoint", url, "--api-key", API_KEY]) == 0
    local = np.array(Image.open(tmp_path / "xl" / "a.png"))
    served = np.array(Image.open(tmp_path / "xr" / "a.png"))
    assert np.array_equal(local, served) and set(np.unique(served)) >= {0, 1}
    coco = json.loads((tmp_path / "xr" / "coco.json").read_text())
    assert coco["images"][0]["id"] == 7 and [c["name"] for c in coco["categories"]] == ["red", "blue"]


def test_service_config_from_yaml_and_env(tmp_path) -> None:
    path = tmp_path / "service.yaml"
    path.write_text("engine:\n  backend: classical\nservice:\n  max_prompts: 7\n  batching: false\n")
    config = ServiceConfig.load({"SESAM_CONFIG": str(path), "SESAM_MAX_IMAGE_PIXELS": "1234"})
    assert config.engine.backend == "classical" and config.max_prompts == 7
    assert config.engine.max_prompts is None  # refinement batches are not capped by the per-request limit
    assert config.batching is False and config.max_image_pixels == 1234
    path.write_text("service:\n  max_promts: 7\n")
    with pytest.raises(ValueError, match="unknown settings"):
        ServiceConfig.load({"SESAM_CONFIG": str(path)})
    with pytest.raises(ValueError, match="batching"):
        ServiceConfig.load({"SESAM_BATCHING": "maybe"})
    with pytest.raises(ValueError, match="api_key must be at least 8"):
        ServiceConfig.load({"SESAM_API_KEY": "short"})
    with pytest.raises(ValueError, match="cannot read"):
        ServiceConfig.load({"SESAM_CONFIG": str(tmp_path / "missing.yaml")})
    assert ServiceConfig.load({"SESAM_STUDENT_CHECKPOINT": "none"}).student_checkpoint is None
    # providers with the shipped .pt student: refused at load (start-up exit 2), not in the worker
    with pytest.raises(
        ValueError, match=r"student_providers: .*camvid_student\.pt: providers are read by the onnx"
    ):
        ServiceConfig.load({"SESAM_STUDENT_PROVIDERS": "CPUExecutionProvider"})
    none = {"SESAM_STUDENT_CHECKPOINT": "none", "SESAM_STUDENT_PROVIDERS": "CPUExecutionProvider"}
    assert ServiceConfig.load(none).student_checkpoint is None  # no student reads them
    assert (
        ServiceConfig.load({}).batching is False
    )  # auto: batching does not pay on CPU (benchmarks/serve_load.py)
    assert ServiceConfig.load({"SESAM_DEVICE": "cuda"}).batching is True
    assert ServiceConfig.load({"SESAM_DEVICE": "cuda", "SESAM_BATCHING": "off"}).batching is False


# -- fuzzing the OpenAPI schema -------------------------------------------------------------------
def test_openapi_fuzz_finds_no_5xx(server) -> None:
    """schemathesis generates requests from the service's own OpenAPI; no answer may be a 5xx."""
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings

    url, _ = server
    schema = schemathesis.openapi.from_url(f"{url}/docs.json", headers=AUTH)
    failures = []
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.method.upper() != "POST":
            continue

        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(case=operation.as_strategy())
        def check(case) -> None:
            response = case.call(base_url=url, headers=AUTH, timeout=60)
            if response.status_code >= 500 or (
                response.status_code >= 400 and set(response.json()) != {"error"}
            ):
                failures.append((case.operation.path, response.status_code, response.text[:300]))

        check()
    assert not failures, failures


# -- bentoml build ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_bentoml_build_offline_and_serve_the_bento(tmp_path, scene) -> None:
    """`bentoml build` (offline: lock_packages false) and `bentoml serve` of the built bento answer."""
    env = dict(os.environ, BENTOML_DO_NOT_TRACK="true", BENTOML_HOME=str(tmp_path / "bentoml"))
    for name in (
        "SESAM_API_KEY",
        "SESAM_CONFIG",
        "SESAM_SAM_CHECKPOINT",
        "SESAM_BACKEND",
        "SESAM_MAX_PROMPTS",
    ):
        env.pop(name, None)
    bentoml = [str(Path(sys.executable).parent / "bentoml")]
    built = subprocess.run(
        [*bentoml, "build", "-o", "tag"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert built.returncode == 0, built.stdout + built.stderr
    tag = built.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    assert tag.startswith("sesam:")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [*bentoml, "serve", tag, "--host", "127.0.0.1", "--port", str(port)]
    with _running(command, url, env, tmp_path / "serve.log", tmp_path), SesamClient(url, retries=0) as client:
        assert client.info()["backend"] == "classical"
        assert client.segment_labels(scene).shape == scene.shape[:2]
        assert len(client.predict(PROMPTS[:1], image=scene)["predictions"]) == 1
