"""The service on the SAM 2.1 backend (hiera tiny), on the light SAM (EfficientViT-SAM L0) and on the
SAM 2.1 ONNX export (backend onnx), seeded random weights (plumbing, not quality): /embed, /predict with a click and with the last answer's
logits fed back, and /refine with mask prompts, each equal to the same engine in this process; /info
names the backend."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from PIL import Image

from models.engine import EngineConfig, Prompt, build_engine
from models.io import decode_rle
from serving.cli import serve_command
from serving.codec import decode_labels
from tests.conftest import REPO, free_port, running_server

# (backend, SAM type) for the torch engines; (onnx, the export fixture) for an export
BACKENDS = [("sam2", "sam2.1_hiera_t"), ("light", "efficientvit-sam-l0"), ("onnx", "sam2_export")]


@pytest.fixture(scope="module", params=BACKENDS, ids=["sam2", "light", "onnx-sam2"])
def backend(request) -> dict[str, str | int]:
    """The engine settings of one backend, as EngineConfig fields."""
    name, what = request.param
    if name == "onnx":
        return {"backend": name, "export_dir": str(request.getfixturevalue(what))}
    return {"backend": name, "sam_type": what, "random_weights": 0}


@pytest.fixture(scope="module")
def served(tmp_path_factory, backend) -> Iterator[str]:
    port = free_port()
    env = dict(os.environ, BENTOML_DO_NOT_TRACK="true", SESAM_STUDENT_CHECKPOINT="none")
    for name in ("SESAM_CONFIG", "SESAM_API_KEY", "SESAM_SAM_CHECKPOINT", "SESAM_EXPORT_DIR"):
        env.pop(name, None)
    env |= {f"SESAM_{k.upper()}": str(v) for k, v in backend.items()}
    url = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("sam2_serve") / "bentoml.log"
    with running_server(serve_command("127.0.0.1", port), url, env, log, REPO):
        yield url


@pytest.fixture(scope="module")
def engine(backend):
    return build_engine(EngineConfig(**backend))


def png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def test_embed_predict_and_refine_equal_the_engine(served: str, engine, scene) -> None:
    info = httpx.post(f"{served}/info", json={}, timeout=30).json()
    assert info["backend"] == engine.name
    embed = httpx.post(f"{served}/embed", files={"image": ("s.png", png(scene), "image/png")}, timeout=120)
    assert embed.status_code == 200, embed.text
    image_id = embed.json()["image_id"]
    handle = engine.embed([scene])[0]
    click = {"points": [[120.0, 130.0]], "labels": [1]}
    answer = httpx.post(
        f"{served}/predict", json={"image_id": image_id, "prompts": [click]}, timeout=60
    ).json()
    local = engine.predict(handle, [Prompt(points=click["points"], labels=click["labels"])])
    (p,) = answer["predictions"]
    assert answer["backend"] == engine.name and p["best"] == int(np.argmax(local.iou[0]))
    for k in range(3):
        assert np.array_equal(decode_rle(p["masks"][k]), local.masks[0, k])
    assert np.allclose(p["iou"], local.iou[0], atol=1e-5)
    # the next click with the last answer's logits, as the page and Label Studio send it
    best = p["best"]
    second = {"points": [[120.0, 130.0], [330.0, 250.0]], "labels": [1, 0], "mask_input_id": p["logits_id"]}
    answer = httpx.post(
        f"{served}/predict", json={"image_id": image_id, "prompts": [second], "multimask": False}, timeout=60
    ).json()
    fed = engine.predict(
        handle,
        [
            Prompt(
                points=second["points"],
                labels=second["labels"],
                mask_logits=local.low_res_logits[0, best : best + 1],
            )
        ],
        multimask=False,
    )
    assert np.array_equal(decode_rle(answer["predictions"][0]["masks"][0]), fed.masks[0, 0])
    # /refine with SeSAM's mask prompts, made in the engine's own low-res frame
    weak = {"points": [{"x": 120, "y": 130, "class_id": 0}, {"x": 330, "y": 250, "class_id": 1}]}
    refined = httpx.post(
        f"{served}/refine",
        files={"image": ("s.png", png(scene), "image/png")},
        data={"weak": json.dumps(weak), "options": json.dumps({"prompt": "mask"})},
        timeout=300,
    )
    assert refined.status_code == 200, refined.text
    from models.labels import build_labeler
    from models.labels.schema import WeakLabels

    labels = WeakLabels.from_json({"version": 2, "width": 480, "height": 360} | weak)
    expected = build_labeler("sesam", engine, prompt="mask").refine(scene, labels).labels
    assert np.array_equal(decode_labels(refined.json()["labels"]), expected)
