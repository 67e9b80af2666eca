"""The SAM 2.1 backend (`models/engine/sam2_torch.py`) against Meta's own `SAM2ImagePredictor`, on
seeded random weights of hiera tiny and base+ (no weights can be downloaded here; parity does not
depend on them): embeddings, points, box, points + box, mask input, multimask on and off, a batch
of prompts in one call, mixed layouts; then caching, the checkpoint loader's checks and the factory.
Masks must be >= 99.9 % equal and logits and IoU within 1e-4."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models.engine import EngineConfig, Prompt, build_engine
from models.engine.lowres import engine_mask_logits
from models.engine.modeling.build import CheckpointError
from models.engine.modeling.sam2_build import build_sam2_model, file_sha256
from models.engine.sam2_torch import Sam2Engine, stretched_mask_logits
from tests.conftest import PARITY_BOX as BOX
from tests.conftest import PARITY_CASES as CASES
from tests.conftest import PARITY_LABELS as LABELS
from tests.conftest import PARITY_POINTS as POINTS
from tests.conftest import assert_same_prediction

TYPES = ["sam2.1_hiera_t", "sam2.1_hiera_b+"]


@pytest.fixture(scope="module")
def image(camvid_image) -> np.ndarray:
    return camvid_image  # a real 480x360 street image


@pytest.fixture(scope="module", params=TYPES)
def pair(request, image):
    """(engine, predictor with the image set, the engine's handle) for one SAM 2.1 type."""
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    model = build_sam2_model(request.param, None, random_seed=0)
    engine = Sam2Engine(model, name=request.param)
    predictor = SAM2ImagePredictor(model)
    predictor.set_image(image)
    return engine, predictor, engine.embed([image])[0]


def test_embedding_and_high_res_maps_equal_the_predictors(pair) -> None:
    engine, predictor, handle = pair
    payload = handle.payload
    assert torch.allclose(payload.embedding, predictor._features["image_embed"], atol=1e-5)
    for ours, theirs in zip(payload.high_res, predictor._features["high_res_feats"], strict=True):
        assert ours.shape == theirs.shape and torch.allclose(ours, theirs, atol=1e-5)
    # 1x256x64x64 + 1x32x256x256 + 1x64x128x128 float32, all counted in the cache budget
    assert (
        engine.payload_nbytes(payload) == 4 * (256 * 64 * 64 + 32 * 256 * 256 + 64 * 128 * 128) == 16 * 2**20
    )


@pytest.mark.parametrize("multimask", [True, False])
@pytest.mark.parametrize("case", sorted(CASES))
def test_prompts_equal_the_predictor(pair, case: str, multimask: bool) -> None:
    engine, predictor, handle = pair
    theirs, ours = CASES[case]
    masks, iou, low = predictor.predict(multimask_output=multimask, **theirs)
    out = engine.predict(handle, [Prompt(**ours)], multimask=multimask)
    assert out.masks.shape == (1, 3 if multimask else 1, 360, 480)
    assert_same_prediction(out, 0, masks, iou, low)


@pytest.mark.parametrize("multimask", [True, False])
def test_mask_input_equals_the_predictor(pair, multimask: bool) -> None:
    """A previous answer's logits fed back (SAM 2's own frame), with and without a click."""
    engine, predictor, handle = pair
    _, _, first = predictor.predict(box=BOX, multimask_output=False)
    masks, iou, low = predictor.predict(
        point_coords=POINTS[:1], point_labels=LABELS[:1], mask_input=first, multimask_output=multimask
    )
    out = engine.predict(
        handle, [Prompt(points=POINTS[:1], labels=LABELS[:1], mask_logits=first)], multimask=multimask
    )
    assert_same_prediction(out, 0, masks, iou, low)
    masks, iou, low = predictor.predict(mask_input=first, multimask_output=multimask)
    assert_same_prediction(
        engine.predict(handle, [Prompt(mask_logits=first)], multimask=multimask), 0, masks, iou, low
    )


def test_a_batch_of_prompts_equals_the_predictors_batch(pair) -> None:
    engine, predictor, handle = pair
    points = np.stack([POINTS + 7 * i for i in range(5)])
    labels = np.stack([LABELS] * 5)
    masks, iou, low = predictor.predict(point_coords=points, point_labels=labels, multimask_output=True)
    calls, engine.decode_batch = engine.stats.decoder_calls, 64  # CPU's default is one at a time
    out = engine.predict(handle, [Prompt(points=p, labels=q) for p, q in zip(points, labels)])
    engine.decode_batch = 1
    assert engine.stats.decoder_calls == calls + 1  # one decoder call for the five
    for i in range(5):
        assert_same_prediction(out, i, masks[i], iou[i], low[i])


@pytest.mark.parametrize("pair", TYPES[:1], indirect=True)  # grouping does not depend on the encoder
def test_mixed_layouts_in_one_call_equal_each_alone(pair) -> None:
    engine, _, handle = pair
    prompts = [Prompt(**CASES[c][1]) for c in ("points", "box", "points+box")]
    prompts.append(Prompt(points=POINTS[:1], labels=LABELS[:1]))
    together = engine.predict(handle, prompts, multimask=False)
    for i, prompt in enumerate(prompts):
        alone = engine.predict(handle, [prompt], multimask=False)
        assert np.array_equal(together.masks[i], alone.masks[0])
        assert np.abs(together.low_res_logits[i] - alone.low_res_logits[0]).max() < 1e-4


def test_cached_image_makes_no_encoder_call(pair, image) -> None:
    engine, _, handle = pair
    calls = engine.stats.encoder_calls
    again = engine.embed([image.copy()])[0]
    assert again.key == handle.key and engine.stats.encoder_calls == calls


def test_mask_prompts_use_sam2s_stretched_frame() -> None:
    """A mask on the left half of a 300x420 image: positive on the left 128 of the 256 columns in
    every row (SAM 1's padded frame would put it on rows 0..182 only)."""
    mask = np.zeros((300, 420), bool)
    mask[:, :210] = True
    logits = stretched_mask_logits(mask)
    assert logits.shape == (1, 256, 256)
    assert (logits[0, :, :128] > 0).all() and (logits[0, :, 128:] < 0).all()

    class Engine:
        def mask_logits(self, m: np.ndarray) -> np.ndarray:
            return stretched_mask_logits(m)

    assert np.array_equal(engine_mask_logits(Engine(), mask), logits)
    padded = engine_mask_logits(object(), mask)  # an engine without its own frame: SAM 1's
    assert (padded[0, 200:] < 0).all() and (padded[0, :183, :128] > 0).all()


def test_checkpoint_loading_and_its_checks(tmp_path: Path) -> None:
    """An official-layout file (`{"model": state_dict}`) loads every tensor; the checks name the file."""
    model = build_sam2_model("sam2.1_hiera_t", None, random_seed=3)
    path = tmp_path / "sam2.1_hiera_tiny.pt"
    torch.save({"model": model.state_dict()}, path)
    loaded = build_sam2_model("sam2.1_hiera_t", path, sha256=file_sha256(path)).state_dict()
    assert loaded.keys() == model.state_dict().keys()
    assert all(torch.equal(v, loaded[k]) for k, v in model.state_dict().items())
    assert not torch.equal(
        build_sam2_model("sam2.1_hiera_t", None, random_seed=4).sam_mask_decoder.iou_token.weight,
        model.sam_mask_decoder.iou_token.weight,
    )  # the seed matters: loading did the work
    with pytest.raises(CheckpointError, match=r"sha256 .* is not the expected 00ff"):
        build_sam2_model("sam2.1_hiera_t", path, sha256="00ff")
    with pytest.raises(
        CheckpointError, match=r"does not fit sam2.1_hiera_s \(its name says sam2.1_hiera_t\)"
    ):
        build_sam2_model("sam2.1_hiera_s", path)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"junk\.pt is not a readable torch file"):
        build_sam2_model("sam2.1_hiera_t", tmp_path / "junk.pt")
    torch.save({"state": {}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="holds no 'model' state dict"):
        build_sam2_model("sam2.1_hiera_t", tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="is not a file"):
        build_sam2_model("sam2.1_hiera_t", tmp_path / "missing.pt")


def test_factory_builds_sam2() -> None:
    engine = build_engine(EngineConfig(backend="sam2", sam_type="sam2.1_hiera_t", random_weights=0))
    assert isinstance(engine, Sam2Engine) and engine.name == "sam2.1_hiera_t"
    with pytest.raises(ValueError, match=r"backend sam2 with sam2\.1_hiera_t needs sam_checkpoint"):
        build_engine(EngineConfig(backend="sam2", sam_type="sam2.1_hiera_t"))
    with pytest.raises(
        ValueError, match=r"sam_type 'vit_b' is for backend torch; backend sam2 takes sam2\.1_hiera_b\+"
    ):
        build_engine(EngineConfig(backend="sam2", sam_type="vit_b", random_weights=0))
    config = EngineConfig(sam_type="sam2.1_hiera_t", sam_checkpoint=__file__)
    assert config.resolved_backend() == "sam2"  # auto: a SAM 2.1 type with a checkpoint
    assert EngineConfig(sam_checkpoint=__file__).resolved_backend() == "torch"


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_a_half_precision_cache_halves_the_bytes_and_keeps_the_masks(pair, image, dtype: str) -> None:
    """cache_dtype float16 / bfloat16: the embedding and both high-res maps cached in that dtype
    (8 MiB instead of 16), upcast for the float32 decoder; the masks stay >= 99.9 % equal to the
    reference predictor's (logits within 1e-2 on these random weights)."""
    engine, predictor, _ = pair
    half = Sam2Engine(engine.model, name=engine.name, cache_dtype=dtype)
    handle = half.embed([image])[0]
    payload = handle.payload
    assert all(t.dtype == getattr(torch, dtype) for t in (payload.embedding, *payload.high_res))
    assert half.payload_nbytes(payload) == 8 * 2**20 and half.namespace != engine.namespace
    for case in ("points", "box", "points+box"):
        theirs, ours = CASES[case]
        masks, iou, low = predictor.predict(multimask_output=True, **theirs)
        out = half.predict(handle, [Prompt(**ours)])
        assert np.mean(out.masks[0] == masks) >= 0.999
        assert np.abs(out.low_res_logits[0] - low).max() < 1e-2 and np.abs(out.iou[0] - iou).max() < 1e-3


def test_steep_logits_are_upsampled_before_the_clamp(image) -> None:
    """The predictor makes full-size masks from the raw low-res logits and clamps only the ones it
    hands back; so must the engine. Random weights give logits of about +-0.4, far from the clamp
    of 32: the mask heads' last layers are scaled up here (x1000: the masks' signs do not change,
    so the predictor's masks stay what they were) to reach the clamp as trained weights do."""
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    model = build_sam2_model("sam2.1_hiera_t", None, random_seed=0)
    with torch.no_grad():
        for mlp in model.sam_mask_decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight.mul_(1000)
            mlp.layers[-1].bias.mul_(1000)
    engine, predictor = Sam2Engine(model), SAM2ImagePredictor(model)
    predictor.set_image(image)
    theirs, ours = CASES["points"]
    masks, iou, low = predictor.predict(multimask_output=True, **theirs)
    assert np.abs(low).max() == 32.0  # the clamp is reached
    out = engine.predict(image, [Prompt(**ours)])
    assert (out.masks[0] == masks).mean() >= 0.999  # 93.9 % when the clamp came first
    assert np.allclose(out.low_res_logits[0], low, rtol=1e-4, atol=1e-3)  # logits 1000x: float noise too
    assert np.abs(out.iou[0] - iou).max() < 1e-4


def test_an_image_over_the_working_side_keeps_its_short_axis() -> None:
    """SAM 2 stretches each axis to 1024 on its own: an image over the working side (1024) has only
    its long axis reduced, so the encoder sees nearly what the predictor sees unreduced (the
    resampling filters differ), where reducing it as SAM 1 does (aspect kept) would shrink the
    short axis and stretch it back up (low-res logits 0.04 apart on these weights)."""
    from PIL import Image
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    from models.engine import read_image
    from tests.conftest import require_data

    root = require_data("camvid")
    stem = (root / "val.txt").read_text().split()[0]
    big = np.asarray(Image.fromarray(read_image(root / "images" / "val" / f"{stem}.jpg")).resize((1627, 710)))
    model = build_sam2_model("sam2.1_hiera_t", None, random_seed=0)
    engine, predictor = Sam2Engine(model), SAM2ImagePredictor(model)
    predictor.set_image(big)
    handle = engine.embed([big])[0]
    assert handle.payload.working_size == (710, 1024)
    embedding = handle.payload.inner.embedding
    reference = predictor._features["image_embed"]
    assert (embedding - reference).abs().mean() < 0.005 * reference.abs().mean()
    points, labels = POINTS * (3, 2), LABELS  # inside the 1627x710 image
    _, _, low = predictor.predict(point_coords=points, point_labels=labels, multimask_output=True)
    out = engine.predict(handle, [Prompt(points=points, labels=labels)])
    assert np.abs(out.low_res_logits[0] - low).max() < 0.01
