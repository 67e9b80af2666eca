"""The PromptableSegmenter contract, run against every backend that can run here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.engine import ENGINE_BACKENDS, EngineConfig, Prompt, PromptableSegmenter, build_engine
from models.engine.classical import ClassicalPrior
from models.engine.regions import RegionPrior
from models.engine.sam_torch import SamEngine

BACKENDS = ["classical", "classical-regions", "torch-tiny", "onnx-tiny"]


def make_engine(name: str, request: pytest.FixtureRequest) -> PromptableSegmenter:
    if name == "classical":
        return ClassicalPrior()
    if name == "classical-regions":
        return RegionPrior()
    if name == "onnx-tiny":
        from models.engine.sam_onnx import OnnxSamEngine

        return OnnxSamEngine(request.getfixturevalue("tiny_export"))
    return SamEngine(request.getfixturevalue("tiny_sam"), name="sam-tiny")


@pytest.fixture(params=BACKENDS)
def engine(request):
    return make_engine(request.param, request)


# backends this contract cannot run here, and the test file that runs them where they can run
TESTED_ELSEWHERE = {
    "tensorrt": ("test_export.py", "TensorRTSamEngine"),  # gpu-marked
    "triton": ("test_triton_live.py", 'backend="triton"'),  # against a live tritonserver
    # parity with SAM2ImagePredictor (hiera t and b+), caching, factory; its encoder is too slow to
    # run every contract case here
    "sam2": ("test_sam2_parity.py", "Sam2Engine"),
    "light": ("test_light_sam.py", "LightSamEngine"),  # parity with EfficientViTSamPredictor
}


def test_every_registered_backend_is_covered() -> None:
    here = {name.removesuffix("-tiny") for name in BACKENDS}
    assert set(ENGINE_BACKENDS) <= here | set(TESTED_ELSEWHERE), "a registered backend has no test"
    for backend, (test_file, engine_class) in TESTED_ELSEWHERE.items():
        assert engine_class in (Path(__file__).parent / test_file).read_text(), (
            f"{test_file} runs no {backend}"
        )


def test_handles_and_images_give_the_same_answer(engine, scene) -> None:
    assert isinstance(engine, PromptableSegmenter)
    handle = engine.embed([scene])[0]
    assert handle.original_size == scene.shape[:2] and handle.backend == engine.name
    prompt = [Prompt(points=[[120, 130]], labels=[1])]
    by_handle, by_image = engine.predict(handle, prompt), engine.predict(scene, prompt)
    assert np.array_equal(by_handle.masks, by_image.masks)
    assert np.allclose(by_handle.iou, by_image.iou) and np.allclose(
        by_handle.low_res_logits, by_image.low_res_logits
    )
    assert engine.lookup(handle.key).original_size == handle.original_size


@pytest.mark.parametrize("multimask", [True, False])
def test_output_shapes_and_types(engine, scene, multimask: bool) -> None:
    prompts = [
        Prompt(points=[[120, 130]], labels=[1]),
        Prompt(box=[40, 50, 210, 210]),
        Prompt(points=[[330, 250], [120, 130]], labels=[1, 0], box=[250, 170, 410, 330]),
    ]
    out = engine.predict(scene, prompts, multimask=multimask)
    c = 3 if multimask else 1
    assert out.masks.shape == (3, c, 360, 480) and out.masks.dtype == bool
    assert out.iou.shape == (3, c) and out.stability.shape == (3, c)
    assert out.low_res_logits.shape == (3, c, 256, 256) and out.low_res_logits.dtype == np.float32
    assert np.isfinite(out.iou).all() and np.isfinite(out.stability).all()
    assert ((out.stability >= 0) & (out.stability <= 1)).all()


def test_low_res_logits_feed_back_and_change_the_answer(engine, scene) -> None:
    """The mask input is read: two different earlier answers fed back give two different answers,
    and a click with an earlier answer fed back differs from the click alone."""
    left = engine.predict(scene, [Prompt(box=[40, 50, 210, 210])])
    right = engine.predict(scene, [Prompt(box=[250, 170, 410, 330])])
    from_left = engine.predict(scene, [Prompt(mask_logits=left.low_res_logits[0, :1])])
    from_right = engine.predict(scene, [Prompt(mask_logits=right.low_res_logits[0, :1])])
    assert from_left.masks.shape == left.masks.shape
    assert not np.array_equal(from_left.low_res_logits, from_right.low_res_logits)
    assert not np.array_equal(from_left.masks, from_right.masks)
    click = [Prompt(points=[[120, 130]], labels=[1])]
    alone = engine.predict(scene, click)
    fed = engine.predict(
        scene, [Prompt(points=[[120, 130]], labels=[1], mask_logits=right.low_res_logits[0, :1])]
    )
    assert not np.array_equal(alone.low_res_logits, fed.low_res_logits)


def test_cached_image_makes_no_encoder_call(engine, scene) -> None:
    handle = engine.embed([scene])[0]
    calls = engine.stats.encoder_calls
    again = engine.embed([scene.copy()])[0]
    engine.predict(scene, [Prompt(points=[[10, 10]], labels=[1])])
    assert engine.stats.encoder_calls == calls
    assert again.key == handle.key and engine.stats.cache_hits >= 2
    assert engine.lookup(handle.key).original_size == (360, 480)
    assert engine.lookup("0" * 64) is None


def test_duplicate_images_in_one_call_are_encoded_once(engine, scene) -> None:
    engine.embed([scene, scene])
    assert engine.stats.images_encoded == 1


def test_empty_prompt_list(engine, scene) -> None:
    out = engine.predict(scene, [])
    assert out.masks.shape == (0, 3, 360, 480)


def test_image_conversions(engine, scene) -> None:
    gray = scene[..., 0]
    rgba = np.dstack([scene, np.full(scene.shape[:2], 255, np.uint8)])
    deep = scene.astype(np.uint16) * 257
    handles = engine.embed([gray, rgba, deep])
    assert handles[1].key == handles[2].key  # RGBA and 16-bit versions reduce to the same RGB pixels
    assert all(h.original_size == (360, 480) for h in handles)


BAD_PROMPTS = [
    (Prompt(), "prompt 0 is empty"),
    (
        Prompt(points=[[500, 10]], labels=[1]),
        r"prompt 0.points\[0\] = \(500, 10\) lies outside the 480x360 image",
    ),
    (Prompt(points=[[5, 10]]), "labels missing"),
    (Prompt(points=[[5, 10]], labels=[1, 1]), r"prompt 0.labels: expected shape \(1,\)"),
    (Prompt(points=[[5, 10]], labels=[2]), r"must be 1 \(positive\) or 0 \(negative\), got \[2.0\]"),
    (Prompt(points=[[np.nan, 10]], labels=[1]), "contains NaN"),
    (Prompt(box=[10, 10, 5, 50]), "need x0 <= x1"),
    (Prompt(box=[10, 10, 50]), "expected 4 numbers"),
    (Prompt(box=[0, 0, 481, 100]), "lies outside the 480x360 image"),
    (Prompt(mask_logits=np.zeros((64, 64))), "expected 1x256x256 logits"),
]


@pytest.mark.parametrize(("prompt", "message"), BAD_PROMPTS)
def test_bad_prompts_raise_clear_errors(engine, scene, prompt: Prompt, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        engine.predict(scene, [prompt])


def test_bad_images(engine) -> None:
    with pytest.raises(ValueError, match=r"images\[0\]: expected HxW"):
        engine.embed([np.zeros((4, 4, 5), np.uint8)])
    with pytest.raises(ValueError, match=r"images\[0\]: empty image"):
        engine.embed([np.zeros((0, 4, 3), np.uint8)])
    with pytest.raises(ValueError, match="float pixels must lie in"):
        engine.embed([np.full((4, 4, 3), 2.0)])
    with pytest.raises(ValueError, match="single image in a list"):
        engine.embed(np.zeros((4, 4, 3), np.uint8))


def test_handle_from_other_backend_is_refused(tiny_sam, scene) -> None:
    handle = ClassicalPrior().embed([scene])[0]
    with pytest.raises(ValueError, match="comes from backend 'classical'"):
        SamEngine(tiny_sam).predict(handle, [Prompt(points=[[1, 1]], labels=[1])])


def test_max_prompts(tiny_sam, scene) -> None:
    engine = ClassicalPrior(max_prompts=2)
    with pytest.raises(ValueError, match="3 prompts exceed the limit of 2"):
        engine.predict(scene, [Prompt(points=[[1, 1]], labels=[1])] * 3)


def test_factory_defaults_to_classical_and_reads_env(monkeypatch, tmp_path) -> None:
    assert build_engine().name == "classical"
    monkeypatch.setenv("SESAM_BACKEND", "torch")
    monkeypatch.setenv("SESAM_SAM_TYPE", "tiny")
    assert build_engine(EngineConfig.from_env()).name == "sam-tiny"
    monkeypatch.setenv("SESAM_SAM_TYPE", "vit_b")
    with pytest.raises(ValueError, match="needs sam_checkpoint"):
        build_engine(EngineConfig.from_env())
    monkeypatch.setenv("SESAM_SAM_CHECKPOINT", str(tmp_path / "missing.pth"))
    with pytest.raises(ValueError, match=r"missing\.pth' is not a file"):
        EngineConfig.from_env()
    with pytest.raises(ValueError, match="unknown settings"):
        EngineConfig.from_mapping({"backnd": "torch"})
    with pytest.raises(ValueError, match="cache_bytes = 'lots' is not a valid int"):
        EngineConfig.from_mapping({"cache_bytes": "lots"})


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"backend": "classical"}, "sam_checkpoint"),
        ({"backend": "classical-regions"}, "random_weights"),
        ({"backend": "torch", "sam_type": "tiny"}, "random_weights"),
        ({"backend": "torch", "sam_type": "tiny"}, "sam_checkpoint_sha256"),
        ({"backend": "light", "sam_type": "efficientvit-sam-l0"}, "sam_checkpoint_sha256"),
    ],
)
def test_weights_given_to_a_backend_that_reads_none_are_refused(config, field) -> None:
    """A checkpoint, its hash or a random seed given to a backend that would ignore it is one error
    naming the field and the backends that read it (before: the classical prior ignored it)."""
    value = {"sam_checkpoint": __file__, "sam_checkpoint_sha256": "0" * 64, "random_weights": 0}[field]
    with pytest.raises(ValueError, match=rf"backend {config['backend']} reads no {field} \(backends "):
        EngineConfig.from_mapping({**config, field: value})
    EngineConfig.from_mapping(config)  # the same without it is fine


def test_auto_with_random_weights_picks_the_backend_of_the_sam_type() -> None:
    """auto reads random weights as it reads a checkpoint (before: it resolved to the classical
    prior, which ignored them); SAM 1 takes no random seed, and says so."""
    assert (
        EngineConfig.from_mapping({"sam_type": "sam2.1_hiera_t", "random_weights": 0}).resolved_backend()
        == "sam2"
    )
    light = {"sam_type": "efficientvit-sam-l0", "random_weights": 3}
    assert EngineConfig.from_mapping(light).resolved_backend() == "light"
    with pytest.raises(
        ValueError, match=r"backend torch reads no random_weights \(backends sam2, light do\)"
    ):
        EngineConfig.from_mapping({"sam_type": "vit_b", "random_weights": 0})


def test_factory_classical_scales() -> None:
    """classical_scales configure the previous prior (`classical-regions`)."""
    regions = {"backend": "classical-regions"}
    engine = build_engine(EngineConfig.from_mapping({**regions, "classical_scales": [20, 60, 200]}))
    assert engine.scales == (20, 60, 200)
    env = {"SESAM_BACKEND": "classical-regions", "SESAM_CLASSICAL_SCALES": "30,100,300"}
    assert build_engine(EngineConfig.from_env(env)).scales == (30, 100, 300)
    engine = build_engine(EngineConfig(backend="classical-regions", classical_scales="20,60,200"))
    assert "(20, 60, 200)" in engine.namespace
    for bad in ("60,20,200", "1,2", "a,b,c", [0, 5, 9]):
        with pytest.raises(ValueError, match=r"classical_scales=.* three increasing positive integers"):
            EngineConfig.from_mapping({"classical_scales": bad})


def test_factory_builds_onnx_from_an_export_dir(tiny_export, monkeypatch) -> None:
    monkeypatch.setenv("SESAM_EXPORT_DIR", str(tiny_export))
    monkeypatch.setenv("SESAM_THREADS", "1")
    engine = build_engine(EngineConfig.from_env())  # auto: no checkpoint, an export dir -> onnx
    assert engine.name == "onnx" and engine.info()["providers"] == ["CPUExecutionProvider"]
    with pytest.raises(ValueError, match=r"holds no metadata\.json"):
        EngineConfig.from_mapping({"export_dir": "/nonexistent"})
    with pytest.raises(ValueError, match="backend onnx needs export_dir"):
        build_engine(EngineConfig(backend="onnx"))
    with pytest.raises(ValueError, match="provider 'Bogus' is not available"):
        build_engine(EngineConfig(backend="onnx", export_dir=str(tiny_export), providers="Bogus"))


def test_yaml_config(tmp_path) -> None:
    path = tmp_path / "engine.yaml"
    path.write_text("engine:\n  backend: classical\n  cache_bytes: 1000\n")
    config = EngineConfig.from_yaml(path)
    assert config.backend == "classical" and config.cache_bytes == 1000


SLIVER_ENGINES = {
    "classical": {"backend": "classical"},
    "torch-tiny": {"backend": "torch", "sam_type": "tiny"},
    "torch-tiny never reduced": {"backend": "torch", "sam_type": "tiny", "working_side": 0},
    "onnx-tiny": {"backend": "onnx"},
    "sam2": {"backend": "sam2", "sam_type": "sam2.1_hiera_t", "random_weights": 0},
    "light": {"backend": "light", "sam_type": "efficientvit-sam-l0", "random_weights": 0},
    "light never reduced": {
        "backend": "light",
        "sam_type": "efficientvit-sam-l0",
        "random_weights": 0,
        "working_side": 0,
    },
}


@pytest.mark.parametrize("name", sorted(SLIVER_ENGINES))
def test_slivers_of_extreme_aspect_are_embedded_and_answered(name: str, request) -> None:
    """An image more than 2048 times longer than wide: SAM's resize rounds its short side to 0
    pixels (segment-anything's `ResizeLongestSide`); every engine keeps at least one."""
    settings = dict(SLIVER_ENGINES[name])
    if settings["backend"] == "onnx":
        settings["export_dir"] = str(request.getfixturevalue("tiny_export"))
    engine = build_engine(EngineConfig(**settings))
    rng = np.random.default_rng(0)
    for shape in ((1, 5000), (5000, 1), (2, 4097)):
        image = rng.integers(0, 255, (*shape, 3), dtype=np.uint8)
        handle = engine.embed([image])[0]
        point = [[shape[1] / 2, shape[0] / 2]]
        out = engine.predict(handle, [Prompt(points=point, labels=[1])], multimask=False)
        assert out.masks.shape == (1, 1, *shape), (name, shape)


def test_a_handle_from_another_model_of_the_same_name_is_refused(tiny_sam, scene) -> None:
    """Engines check a handle's cache space (model and working side), not only the backend's name:
    two SAMs named alike (a fine-tune beside its original, two exports) never decode each other's
    embeddings; another engine on the same weights (the service's front and heavy lane) does."""
    import copy

    import torch

    from models.engine.sam_torch import SamEngine

    tuned = copy.deepcopy(tiny_sam)
    with torch.no_grad():
        tuned.image_encoder.neck[0].weight.view(-1)[-1] += 1e-3
    original, other, same = (SamEngine(m, name="sam-tiny") for m in (tiny_sam, tuned, tiny_sam))
    handle = original.embed([scene])[0]
    click = [Prompt(points=[[120.0, 130.0]], labels=[1])]
    with pytest.raises(ValueError, match="embedded by another model"):
        other.predict(handle, click)
    assert same.predict(handle, click).masks.shape == (1, 3, *scene.shape[:2])
    small = SamEngine(tiny_sam, name="sam-tiny", working_side=256)  # same weights, other working side
    with pytest.raises(ValueError, match="embedded by another model"):
        small.predict(handle, click)
