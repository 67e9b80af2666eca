"""/segment over real HTTP for every kind of student the service runs: semantic and instance, from a
PyTorch checkpoint and from an ONNX export; answers equal the in-process PyTorch student, bad
requests get a 4xx naming the field, and the server keeps answering."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from PIL import Image

from models.students.runtime import load_segmenter
from models.students.semantic import SHIPPED_INSTANCE_STUDENT
from serving.cli import serve_command
from serving.client import ServiceError, SesamClient
from serving.codec import decode_instances, decode_labels
from serving.config import SHIPPED_STUDENT
from tests.conftest import REPO, free_port, require_data, running_server

MAX_IMAGES = 3
MAX_PIXELS = 1_000_000

# (task, runtime, adaptive batching): the batcher path and the in-process path both get served
STUDENTS = [
    ("semantic", "torch", True),
    ("semantic", "onnx", False),
    ("instance", "torch", True),
    ("instance", "onnx", False),
]


@pytest.fixture(scope="module", params=STUDENTS, ids=lambda p: f"{p[0]}-{p[1]}")
def served(request, tmp_path_factory, student_export, pennfudan_export):
    """The shipped students: CamVid (semantic) and Penn-Fudan (instance), from PyTorch and ONNX."""
    task, runtime, batching = request.param
    source = {
        ("semantic", "torch"): SHIPPED_STUDENT,
        ("semantic", "onnx"): student_export,
        ("instance", "torch"): SHIPPED_INSTANCE_STUDENT,
        ("instance", "onnx"): pennfudan_export,
    }[(task, runtime)]
    port = free_port()
    env = dict(
        os.environ,
        BENTOML_DO_NOT_TRACK="true",
        SESAM_BACKEND="classical",
        SESAM_STUDENT_CHECKPOINT=str(source),
        SESAM_STUDENT_RUNTIME=runtime,
        SESAM_BATCHING="1" if batching else "0",
        SESAM_MAX_IMAGES=str(MAX_IMAGES),
        SESAM_MAX_IMAGE_PIXELS=str(MAX_PIXELS),
    )
    for name in ("SESAM_CONFIG", "SESAM_API_KEY", "SESAM_SAM_CHECKPOINT"):
        env.pop(name, None)
    url = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("segment_serve") / "bentoml.log"
    with running_server(serve_command("127.0.0.1", port), url, env, log, REPO):
        yield url, task, runtime, source


@pytest.fixture(scope="module")
def client(served) -> Iterator[SesamClient]:
    with SesamClient(served[0], retries=0) as c:
        yield c


def _png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def _images(scene: np.ndarray, camvid_image: np.ndarray) -> list[np.ndarray]:
    return [camvid_image, scene[:200, :300]]


def test_answers_equal_the_in_process_torch_student(served, client, scene, camvid_image) -> None:
    _, task, runtime, _ = served
    images = _images(scene, camvid_image)
    reference_source = {
        "semantic": SHIPPED_STUDENT,
        "instance": served[3] if runtime == "torch" else None,
    }[task]
    if reference_source is None:  # the ONNX server is compared with the checkpoint it came from
        from models.runtime.onnx_runtime import read_metadata

        reference_source = read_metadata(served[3])["source"]["checkpoint"]
    reference = load_segmenter(reference_source, "torch")
    answer = client.segment(images, min_score=0.0)
    assert answer["task"] == task and answer["runtime"] == runtime
    assert answer["class_names"] == reference.class_names
    assert len(answer["results"]) == len(images)
    if task == "semantic":
        for image, expected, result in zip(images, reference.segment(images), answer["results"], strict=True):
            labels = decode_labels(result["labels"])
            assert labels.shape == image.shape[:2] and np.mean(labels == expected) > 0.999
        return
    expected = reference.segment(images, top_k=100, min_score=0.0)
    for image, (masks, classes, scores), result in zip(images, expected, answer["results"], strict=True):
        found = result["instances"]
        assert (result["height"], result["width"]) == image.shape[:2]
        np.testing.assert_allclose([i["score"] for i in found], scores, atol=1e-4)
        assert [i["class_id"] for i in found] == classes.tolist()
        assert {i["class_name"] for i in found} <= set(reference.class_names)
        decoded = decode_instances(found, *image.shape[:2])
        assert decoded.shape == masks.shape and np.mean(decoded == masks) > 0.999
        for item, mask in zip(found, masks, strict=True):
            if mask.any():
                ys, xs = np.nonzero(mask)
                assert item["box"] == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


def test_instance_options(served, client, scene) -> None:
    _, task, _, _ = served
    if task != "instance":
        pytest.skip("instance students only")
    every = client.segment(scene, min_score=0.0)["results"][0]["instances"]
    cut = float(np.median([i["score"] for i in every]))
    kept = client.segment(scene, min_score=cut)["results"][0]["instances"]
    assert kept == [i for i in every if i["score"] >= cut]
    polygons = client.segment(scene, min_score=cut, mask_format="polygons")
    assert polygons["format"] == "polygons"
    decoded = decode_instances(polygons["results"][0]["instances"], *scene.shape[:2], fmt="polygons")
    rle = decode_instances(kept, *scene.shape[:2])
    for a, b in zip(decoded, rle, strict=True):  # polygons are simplified outlines of the same masks
        assert (a & b).sum() >= 0.9 * max(b.sum(), 1) - 50
    masks, found = client.segment_instances(scene, min_score=cut)
    assert masks.shape[0] == len(found) == len(kept)
    assert all("mask" not in item for item in found)


def _bomb() -> bytes:
    """A small PNG that declares a 30000 x 30000 image (900 MP)."""
    buf = io.BytesIO()
    Image.new("L", (30000, 30000), 0).save(buf, format="PNG")
    return buf.getvalue()


def test_bad_requests_get_4xx_naming_the_field_and_the_server_survives(served, scene) -> None:
    url, task, _, _ = served
    good = ("a.png", _png(scene), "image/png")
    wrong_output = "instances" if task == "semantic" else "labels"
    cases = [
        (
            [("images", good), ("images", ("b.txt", b"not an image at all", "text/plain"))],
            {},
            400,
            "images[1]",
        ),
        ([("images", ("bomb.png", _bomb(), "image/png"))], {}, 413, "images[0]"),
        ([("images", good)] * (MAX_IMAGES + 1), {}, 400, f"exceed the limit of {MAX_IMAGES}"),
        ([("images", good)], {"output": wrong_output}, 400, "output"),
        ([("images", good)], {"min_score": "2"}, 400, "min_score"),
        ([("images", good)], {"mask_format": "jpeg"}, 400, "mask_format"),
        (None, {"output": "auto"}, 400, "images: at least one"),
    ]
    for files, data, status, message in cases:
        response = httpx.post(f"{url}/segment", files=files, data=data, timeout=120)
        assert response.status_code == status, (message, response.text)
        assert message in response.text, response.text
        assert httpx.get(f"{url}/readyz").status_code == 200
    ok = httpx.post(f"{url}/segment", files=[("images", good)], timeout=120)
    assert ok.status_code == 200 and len(ok.json()["results"]) == 1


def test_client_errors_are_service_errors(client, served, scene) -> None:
    _, task, _, _ = served
    with pytest.raises(ServiceError, match="not meaningful"):
        client.segment(scene, output="instances" if task == "semantic" else "labels")


def test_openapi_fuzz_of_segment_finds_no_5xx(served) -> None:
    """schemathesis generates /segment requests from the served OpenAPI; no answer may be a 5xx."""
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings

    url = served[0]
    schema = schemathesis.openapi.from_url(f"{url}/docs.json")
    operation = next(r.ok() for r in schema.get_all_operations() if r.ok().path == "/segment")
    failures = []

    @settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(case=operation.as_strategy())
    def check(case) -> None:
        response = case.call(base_url=url, timeout=60)
        if response.status_code >= 500 or (response.status_code >= 400 and set(response.json()) != {"error"}):
            failures.append((response.status_code, response.text[:300]))

    check()
    assert not failures, failures


def test_instance_students_answer_blank_and_real_images(served) -> None:
    """Zero instances is a normal answer (a blank image used to crash the warm-up); a Penn-Fudan
    photo gives pedestrians at the default min_score."""
    url, task, runtime, _ = served
    if task != "instance":
        pytest.skip("instance students only")

    def segment(image: bytes, **fields: str) -> httpx.Response:
        return httpx.post(
            f"{url}/segment", files={"images": ("x.png", image, "image/png")}, data=fields, timeout=120
        )

    blank = segment(_png(np.zeros((64, 64, 3), np.uint8)))
    assert blank.status_code == 200 and blank.json()["runtime"] == runtime
    assert blank.json()["results"][0]["instances"] == []
    photo = sorted((require_data("pennfudan") / "PNGImages").glob("*.png"))[0].read_bytes()
    found = segment(photo).json()["results"][0]["instances"]
    assert found and all(i["class_name"] == "pedestrian" and i["score"] >= 0.5 for i in found)
    none = segment(photo, min_score="1.0")
    assert none.status_code == 200 and none.json()["results"][0]["instances"] == []
