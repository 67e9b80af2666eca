"""The torch and ONNX engines equal segment-anything's official SamPredictor (seeded tiny SAM)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from segment_anything import SamPredictor

from models.engine import Prompt
from models.engine.modeling import ManyPromptDecoder
from models.engine.sam_torch import SamEngine

ATOL = 1e-5
POINTS = np.array([[100.0, 120.0], [300.0, 200.0], [420.0, 60.0]])
LABELS = np.array([1, 0, 1])
BOX = np.array([50.0, 60.0, 400.0, 300.0])


@pytest.fixture(scope="module")
def predictor(tiny_sam, scene):
    pred = SamPredictor(tiny_sam)
    pred.set_image(scene)
    return pred


@pytest.fixture(scope="module", params=["torch", "onnx"])
def engine(request, tiny_sam):
    """Both backends must equal SamPredictor: torch directly, onnx through its exported graphs."""
    if request.param == "onnx":
        from models.engine.sam_onnx import OnnxSamEngine

        return OnnxSamEngine(request.getfixturevalue("tiny_export"))
    return SamEngine(tiny_sam, name="sam-tiny")


def assert_masks_match(ours: np.ndarray, official_logits: np.ndarray, threshold: float = 0.0) -> None:
    """Binary masks equal except where the official logit is within rounding of the threshold."""
    official = official_logits > threshold
    undecided = np.abs(official_logits - threshold) < 1e-4
    assert np.array_equal(ours[~undecided], official[~undecided])


CASES = {
    "points": dict(point_coords=POINTS, point_labels=LABELS),
    "single_point": dict(point_coords=POINTS[:1], point_labels=LABELS[:1]),
    "box": dict(box=BOX),
    "points_and_box": dict(point_coords=POINTS[:2], point_labels=LABELS[:2], box=BOX),
}


@pytest.mark.parametrize("multimask", [True, False])
@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_sam_predictor(predictor, engine, scene, case: str, multimask: bool) -> None:
    kw = CASES[case]
    logits, iou, low_res = predictor.predict(multimask_output=multimask, return_logits=True, **kw)
    prompt = Prompt(points=kw.get("point_coords"), labels=kw.get("point_labels"), box=kw.get("box"))
    out = engine.predict(scene, [prompt], multimask=multimask)
    assert out.masks.shape == (1, 3 if multimask else 1, 360, 480)
    np.testing.assert_allclose(out.iou[0], iou, atol=ATOL)
    np.testing.assert_allclose(out.low_res_logits[0], low_res, atol=ATOL)
    assert_masks_match(out.masks[0], logits)
    stab = ((logits > 1).sum((1, 2)) / np.maximum((logits > -1).sum((1, 2)), 1)).astype(np.float32)
    np.testing.assert_allclose(out.stability[0], stab, atol=1e-3)


@pytest.mark.parametrize("multimask", [True, False])
def test_mask_input_matches(predictor, engine, scene, multimask: bool) -> None:
    _, _, first = predictor.predict(POINTS[:1], LABELS[:1], multimask_output=True)
    mask_in = first[1:2]
    logits, iou, low_res = predictor.predict(
        POINTS, LABELS, mask_input=mask_in, multimask_output=multimask, return_logits=True
    )
    out = engine.predict(
        scene, [Prompt(points=POINTS, labels=LABELS, mask_logits=mask_in)], multimask=multimask
    )
    np.testing.assert_allclose(out.iou[0], iou, atol=ATOL)
    np.testing.assert_allclose(out.low_res_logits[0], low_res, atol=ATOL)
    assert_masks_match(out.masks[0], logits)


def _mixed_prompts(rng: np.random.Generator, n: int, low_res: np.ndarray) -> list[Prompt]:
    prompts = []
    for i in range(n):
        kind = i % 4
        k = 1 + i % 3
        pts = np.column_stack([rng.uniform(0, 480, k), rng.uniform(0, 360, k)])
        lbl = (rng.uniform(size=k) > 0.3).astype(int)
        x0, y0 = rng.uniform(0, 240), rng.uniform(0, 180)
        box = np.array([x0, y0, x0 + rng.uniform(20, 240), y0 + rng.uniform(20, 180)])
        if kind == 0:
            prompts.append(Prompt(points=pts, labels=lbl))
        elif kind == 1:
            prompts.append(Prompt(box=box))
        elif kind == 2:
            prompts.append(Prompt(points=pts, labels=lbl, box=box))
        else:
            prompts.append(Prompt(points=pts, labels=lbl, mask_logits=low_res))
    return prompts


def test_batch_of_32_equals_32_single_calls(engine, scene) -> None:
    rng = np.random.default_rng(3)
    seed = engine.predict(scene, [Prompt(points=POINTS[:1], labels=LABELS[:1])]).low_res_logits[0, :1]
    prompts = _mixed_prompts(rng, 32, seed)
    handle = engine.embed([scene])[0]
    before = engine.stats.decoder_calls
    batch = engine.predict(handle, prompts)
    layouts = {(p.num_points, p.box is not None) for p in prompts}
    assert engine.stats.decoder_calls - before == len(layouts)  # one call per prompt layout, not per prompt
    for i, prompt in enumerate(prompts):
        single = engine.predict(handle, [prompt])
        np.testing.assert_allclose(batch.low_res_logits[i], single.low_res_logits[0], atol=ATOL)
        np.testing.assert_allclose(batch.iou[i], single.iou[0], atol=ATOL)
        np.testing.assert_allclose(batch.stability[i], single.stability[0], atol=1e-3)
        assert (batch.masks[i] != single.masks[0]).mean() < 1e-5


def test_many_images_in_one_encoder_call_equal_one_by_one(tiny_sam, scene) -> None:
    rng = np.random.default_rng(1)
    images = [scene, rng.integers(0, 255, (200, 300, 3), dtype=np.uint8), scene[:, ::-1].copy()]
    batched = SamEngine(tiny_sam, encoder_batch=8)
    handles = batched.embed(images)
    assert batched.stats.encoder_calls == 1 and batched.stats.images_encoded == 3
    for image, handle in zip(images, handles):
        single = SamEngine(tiny_sam, encoder_batch=1).embed([image])[0]
        torch.testing.assert_close(handle.payload.embedding, single.payload.embedding, atol=ATOL, rtol=0)
        assert handle.payload.input_size == single.payload.input_size


def test_official_decoder_path_agrees_with_fast_path(tiny_sam, scene) -> None:
    rng = np.random.default_rng(5)
    prompts = _mixed_prompts(rng, 12, np.zeros((1, 256, 256), np.float32))
    fast = SamEngine(tiny_sam).predict(scene, prompts)
    slow = SamEngine(tiny_sam, fast_decoder=False).predict(scene, prompts)
    np.testing.assert_allclose(fast.low_res_logits, slow.low_res_logits, atol=ATOL)
    np.testing.assert_allclose(fast.iou, slow.iou, atol=ATOL)


@pytest.mark.parametrize("with_mask", [False, True])
@pytest.mark.parametrize("num_tokens", [0, 2, 7])
@pytest.mark.parametrize("chunk", [1, 3])
def test_many_prompt_decoder_equals_mask_decoder(
    tiny_sam, with_mask: bool, num_tokens: int, chunk: int
) -> None:
    gen = torch.Generator().manual_seed(num_tokens)
    bsz = 5
    emb = torch.randn(1, 256, 64, 64, generator=gen)
    sparse = torch.randn(bsz, num_tokens, 256, generator=gen)
    pe = tiny_sam.prompt_encoder.get_dense_pe()
    if with_mask:
        dense = torch.randn(bsz, 256, 64, 64, generator=gen)
    else:
        dense = tiny_sam.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(1, -1, 64, 64)
    fast = ManyPromptDecoder(tiny_sam.mask_decoder, pe, chunk=chunk)
    for multimask in (True, False):
        with torch.inference_mode():
            ref_masks, ref_iou = tiny_sam.mask_decoder(
                emb, pe, sparse, dense.expand(bsz, -1, -1, -1), multimask
            )
            masks, iou = fast(emb, sparse, dense, multimask)
        torch.testing.assert_close(masks, ref_masks, atol=ATOL, rtol=0)
        torch.testing.assert_close(iou, ref_iou, atol=ATOL, rtol=0)
