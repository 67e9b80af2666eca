"""The light SAM (`backend: light`, EfficientViT-SAM L0 from `efficientsam`) against its own
`EfficientViTSamPredictor`, on seeded random weights: the embedding, points, box, points + box, mask
input, multimask on and off, a batch of prompts in one call; the factory and checkpoint errors.
Masks must be >= 99.9 % equal and logits and IoU within 1e-4. Its encoder input (512) is kept apart
from the 1024 prompt frame, as the reference does."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models.engine import EngineConfig, Prompt, build_engine
from models.engine.light_sam import LightSamEngine, build_light_sam
from models.engine.modeling.build import CheckpointError
from tests.conftest import PARITY_BOX as BOX
from tests.conftest import PARITY_CASES as CASES
from tests.conftest import PARITY_LABELS as LABELS
from tests.conftest import PARITY_POINTS as POINTS
from tests.conftest import assert_same_prediction


@pytest.fixture(scope="module")
def pair(camvid_image):
    from efficientsam.models.efficientvit.sam import EfficientViTSamPredictor

    model = build_light_sam("efficientvit-sam-l0")
    engine = LightSamEngine(model, name="efficientvit-sam-l0")
    predictor = EfficientViTSamPredictor(model)
    predictor.set_image(camvid_image)
    return engine, predictor, engine.embed([camvid_image])[0]


def test_embedding_equals_the_predictors(pair) -> None:
    engine, predictor, handle = pair
    assert torch.allclose(handle.payload.embedding, predictor.features, atol=1e-4)
    assert handle.payload.input_size == (768, 1024)  # the 1024 prompt frame of a 480x360 image
    assert engine.encoder_side == 512 and engine.prompt_side == 1024


@pytest.mark.parametrize("multimask", [True, False])
@pytest.mark.parametrize("case", sorted(CASES))
def test_prompts_equal_the_predictor(pair, case: str, multimask: bool) -> None:
    engine, predictor, handle = pair
    theirs, ours = CASES[case]
    assert_same_prediction(
        engine.predict(handle, [Prompt(**ours)], multimask=multimask),
        0,
        *predictor.predict(multimask_output=multimask, **theirs),
    )


def test_mask_input_and_a_batch_equal_the_predictor(pair) -> None:
    engine, predictor, handle = pair
    _, _, first = predictor.predict(box=BOX, multimask_output=False)
    first = np.asarray(first)
    expected = predictor.predict(point_coords=POINTS[:1], point_labels=LABELS[:1], mask_input=first)
    assert_same_prediction(
        engine.predict(handle, [Prompt(points=POINTS[:1], labels=LABELS[:1], mask_logits=first)]),
        0,
        *expected,
    )
    prompts = [Prompt(points=POINTS + 9 * i, labels=LABELS) for i in range(4)]
    together = engine.predict(handle, prompts)
    for i in range(4):
        assert_same_prediction(
            together, i, *predictor.predict(point_coords=POINTS + 9 * i, point_labels=LABELS)
        )


def test_factory_and_checkpoints(tmp_path: Path) -> None:
    engine = build_engine(EngineConfig(backend="light", sam_type="efficientvit-sam-l0", random_weights=0))
    assert isinstance(engine, LightSamEngine) and engine.name == "efficientvit-sam-l0"
    with pytest.raises(ValueError, match=r"backend light with efficientvit-sam-l0 needs sam_checkpoint"):
        build_engine(EngineConfig(backend="light", sam_type="efficientvit-sam-l0"))
    with pytest.raises(
        ValueError, match=r"sam_type 'vit_b' is for backend torch; backend light takes efficientvit-sam-l0"
    ):
        build_engine(EngineConfig(backend="light", sam_type="vit_b", random_weights=0))
    model = build_light_sam("efficientvit-sam-l0", random_seed=5)
    torch.save(model.state_dict(), tmp_path / "l0.pt")
    loaded = build_light_sam("efficientvit-sam-l0", tmp_path / "l0.pt", random_seed=6).state_dict()
    assert all(torch.equal(v, loaded[k]) for k, v in model.state_dict().items())
    with pytest.raises(CheckpointError, match=r"l0\.pt does not load into efficientvit-sam-l1"):
        build_light_sam("efficientvit-sam-l1", tmp_path / "l0.pt")
    with pytest.raises(CheckpointError, match="is not a file"):
        build_light_sam("efficientvit-sam-l0", tmp_path / "missing.pt")


def test_a_float16_cache_halves_the_bytes_and_keeps_the_masks(pair, camvid_image) -> None:
    """cache_dtype float16 on the SAM 1 code path (shared with the light SAM): a 2 MiB embedding
    instead of 4, masks >= 99.9 % equal to the reference predictor's."""
    engine, predictor, _ = pair
    half = LightSamEngine(engine.model, name=engine.name, cache_dtype="float16")
    handle = half.embed([camvid_image])[0]
    assert handle.payload.embedding.dtype == torch.float16
    assert half.payload_nbytes(handle.payload) == 2 * 256 * 64 * 64
    masks, _, low = predictor.predict(point_coords=POINTS, point_labels=LABELS, box=BOX)
    out = half.predict(handle, [Prompt(points=POINTS, labels=LABELS, box=BOX)])
    assert np.mean(out.masks[0] == masks) >= 0.999 and np.abs(out.low_res_logits[0] - low).max() < 1e-2
    with pytest.raises(ValueError, match=r"config: cache_dtype 'int8' unknown; choose one of \['bfloat16',"):
        EngineConfig(backend="light", sam_type="efficientvit-sam-l0", cache_dtype="int8").validate()


def test_wish_prompt_latents_use_the_light_sams_own_prompt_encoder() -> None:
    """EfficientViT-SAM ships its own copy of SAM's prompt encoder (same tokens, SAM's 1024 frame):
    WISH's prompt latents come from it, not from the seeded random stand-in."""
    import torch

    from models.engine.prompt_latents import PromptLatents

    engine = build_engine(EngineConfig(backend="light", sam_type="efficientvit-sam-l0", random_weights=0))
    latents = PromptLatents.for_engine(engine)
    assert latents.encoder is engine.model.prompt_encoder and "seeded" not in latents.source
    ours = latents.points(np.array([[40.0, 30.0]]), (360, 480))
    coords = torch.tensor([[[40.0 * 1024 / 480, 30.0 * 1024 / 480]]])
    with torch.no_grad():
        sparse, _ = engine.model.prompt_encoder(
            points=(coords, torch.ones(1, 1, dtype=torch.int64)), boxes=None, masks=None
        )
    assert torch.allclose(ours, sparse.flatten(1), atol=1e-6)
    sam2 = build_engine(EngineConfig(backend="sam2", sam_type="sam2.1_hiera_t", random_weights=0))
    assert "seeded" in PromptLatents.for_engine(sam2).source  # a stretched frame: not SAM's
