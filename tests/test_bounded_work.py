"""Work bounded before it starts: the engine's working size, chunked decoding, deadlines, and
refinement at a working size."""

from __future__ import annotations

import time

import numpy as np
import pytest

from models.engine import Prompt
from models.engine.base import Reduced, reduce_image, upsample_nearest, working_size
from models.engine.classical import ClassicalPrior
from models.runtime.deadline import DeadlineExceeded, check_deadline, deadline, remaining


@pytest.fixture(scope="module")
def big_scene(scene) -> np.ndarray:
    """The 360x480 scene at 4x: 1440x1920."""
    return np.repeat(np.repeat(scene, 4, axis=0), 4, axis=1)


def test_working_size_keeps_the_aspect_and_small_images() -> None:
    assert working_size((360, 480), 1024) == (360, 480)
    assert working_size((3264, 4896), 1024) == (683, 1024)
    assert working_size((5000, 10), 100) == (100, 1)
    assert working_size((3000, 4000), None) == (3000, 4000)


def test_upsample_nearest_picks_pixel_centres() -> None:
    small = np.array([[1, 0], [0, 1]], bool)
    big = upsample_nearest(small, (4, 6))
    assert big.shape == (4, 6)
    assert big[:2, :3].all() and big[2:, 3:].all() and not big[:2, 3:].any() and not big[2:, :3].any()


def test_images_within_the_working_side_are_untouched(scene) -> None:
    reduced, plain = ClassicalPrior(working_side=1024), ClassicalPrior(working_side=None)
    prompts = [Prompt(points=[[120, 130]], labels=[1]), Prompt(box=[250, 170, 410, 330])]
    a = reduced.predict(reduced.embed([scene])[0], prompts)
    b = plain.predict(plain.embed([scene])[0], prompts)
    assert not isinstance(reduced.embed([scene])[0].payload, Reduced)
    for x, y in zip((a.masks, a.iou, a.low_res_logits), (b.masks, b.iou, b.low_res_logits), strict=True):
        np.testing.assert_array_equal(x, y)


def test_a_large_image_is_encoded_at_the_working_size(big_scene) -> None:
    """Encoding, prompts and masks of a 1440x1920 image on a 480 working side equal the same work
    done by hand on the reduced image (scaled prompts, masks upsampled)."""
    engine, plain = ClassicalPrior(working_side=480), ClassicalPrior(working_side=None)
    handle = engine.embed([big_scene])[0]
    assert handle.original_size == (1440, 1920)
    assert isinstance(handle.payload, Reduced) and handle.payload.working_size == (360, 480)
    assert engine.lookup(handle.key).original_size == (1440, 1920)
    prompts = [Prompt(points=[[480, 520]], labels=[1]), Prompt(box=[1000, 680, 1640, 1320])]
    out = engine.predict(handle, prompts)
    assert out.masks.shape == (2, 3, 1440, 1920)
    small = reduce_image(big_scene, (360, 480))
    by_hand = plain.predict(
        plain.embed([small])[0], [Prompt(points=[[120, 130]], labels=[1]), Prompt(box=[250, 170, 410, 330])]
    )
    np.testing.assert_array_equal(out.masks, upsample_nearest(by_hand.masks, (1440, 1920)))
    np.testing.assert_array_equal(out.iou, by_hand.iou)
    # the red rectangle (rows 60:200, cols 50:200 at 1x) is found at full size
    red = np.zeros((1440, 1920), bool)
    red[240:800, 200:800] = True
    best = out.masks[0, int(np.argmax(out.iou[0]))]
    assert (best & red).sum() / (best | red).sum() > 0.8
    # the next click feeds the low-res logits back, in the same frame
    again = engine.predict(
        handle,
        [Prompt(points=[[480, 520], [1300, 1000]], labels=[1, 0], mask_logits=out.low_res_logits[0, :1])],
    )
    assert again.masks.shape == (1, 3, 1440, 1920)


def test_deadline_is_per_context_and_nests() -> None:
    assert remaining() is None
    check_deadline()  # no deadline: nothing happens
    with deadline(60):
        assert 59 < remaining() <= 60
        with deadline(120):
            assert remaining() <= 60  # the earlier deadline wins
        check_deadline()
    with deadline(0.01):
        time.sleep(0.02)
        with pytest.raises(DeadlineExceeded):
            check_deadline()
    assert remaining() is None


def test_the_prior_stops_between_prompts_past_the_deadline(scene) -> None:
    engine = ClassicalPrior()
    handle = engine.embed([scene])[0]
    prompts = [Prompt(points=[[10 + i, 20]], labels=[1]) for i in range(50)]
    with deadline(0.0), pytest.raises(DeadlineExceeded):
        engine.predict(handle, prompts)
    assert engine.stats.prompts_decoded == 0


def _weak(h: int = 360, w: int = 480):
    from models.labels.schema import BoxLabel, PointLabel, Scribble, WeakLabels

    coarse = np.full((h, w), 255, np.uint8)
    coarse[: h // 4, : w // 4] = 4
    return WeakLabels(
        h,
        w,
        [PointLabel(120.0, 130.0, 1)],
        [Scribble(2, np.array([[300.0, 240.0], [360.0, 260.0]]), 5)],
        [BoxLabel(3, (250.0, 170.0, 410.0, 330.0))],
        [1, 2],
        coarse,
    )


def test_weak_labels_rescale_with_the_image() -> None:
    half = _weak().rescaled(180, 240)
    assert half.size == (180, 240)
    assert (half.points[0].x, half.points[0].y) == (60.0, 65.0)
    np.testing.assert_allclose(half.scribbles[0].points, [[150, 120], [180, 130]])
    assert half.scribbles[0].width == 2  # round(5 * 0.5)
    assert half.boxes[0].box == (125.0, 85.0, 205.0, 165.0)
    assert half.tags == [1, 2]
    assert (
        half.coarse.shape == (180, 240)
        and (half.coarse[:45, :60] == 4).all()
        and (half.coarse[45:] == 255).all()
    )
    half.validate(5)


def test_refine_at_a_working_size(scene, big_scene) -> None:
    from models.jobs.refine import refine_at
    from models.labels import build_labeler

    engine = ClassicalPrior(working_side=None)
    labeler = build_labeler("sesam", engine)
    weak = _weak()
    labels, stats = refine_at(labeler, scene, weak, 1024)
    np.testing.assert_array_equal(labels, labeler.refine(scene, weak).labels)  # fits: untouched
    assert stats["working_size"] == [360, 480]
    big, stats = refine_at(labeler, big_scene, weak.rescaled(1440, 1920), 480)
    assert big.shape == (1440, 1920) and stats["working_size"] == [360, 480]
    by_hand = labeler.refine(reduce_image(big_scene, (360, 480)), weak).labels
    np.testing.assert_array_equal(big, upsample_nearest(by_hand, (1440, 1920)))


class Recording(ClassicalPrior):
    """The prior, recording how many prompts each decode call saw."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[int] = []

    def _decode(self, handle, prompts, multimask):
        self.calls.append(len(prompts))
        return super()._decode(handle, prompts, multimask)


@pytest.mark.parametrize("method", ["sesam", "naive", "sepl"])
def test_labelers_decode_in_chunks_with_equal_answers(scene, monkeypatch, method) -> None:
    """With a chunk budget of 40 full-size masks, no decode call sees more than 13 prompts (3
    candidates each) and the labels equal those of one big call."""
    from models.labels import backend_defaults, build_labeler, common

    weak = _weak()
    weak.points.extend(type(weak.points[0])(10.0 + 20 * i, 300.0, 1) for i in range(20))
    options = backend_defaults(method, "classical", {"points_per_side": 6} if method == "sepl" else {})
    engine = Recording()
    whole = build_labeler(method, engine, **options).refine(scene, weak)
    assert max(engine.calls) > 13
    monkeypatch.setattr(common, "MAX_MASK_BYTES", 40 * (360 * 480 + common.LOGIT_BYTES))
    engine = Recording()
    chunked = build_labeler(method, engine, **options).refine(scene, weak)
    assert max(engine.calls) <= 13 and len(engine.calls) > 1
    np.testing.assert_array_equal(whole.labels, chunked.labels)


def test_a_deadline_stops_sepl_between_chunks(scene, monkeypatch) -> None:
    from models.labels import backend_defaults, build_labeler, common

    monkeypatch.setattr(common, "MAX_MASK_BYTES", 3 * (360 * 480 + common.LOGIT_BYTES))  # one prompt a chunk
    engine = Recording()
    labeler = build_labeler("sepl", engine, **backend_defaults("sepl", "classical", {"points_per_side": 8}))
    handle = engine.embed([scene])[0]
    started = time.monotonic()
    with deadline(0.3), pytest.raises(DeadlineExceeded):
        labeler.refine(handle, _weak())
    assert time.monotonic() - started < 5
    assert 0 < len(engine.calls) < 64


def test_sam_at_its_working_side_sees_the_same_pixels(tiny_sam, scene, big_scene) -> None:
    """SAM reduces a 1440x1920 image with its own resize: the embedding, IoU and low-res logits equal
    the unreduced engine's; masks come back at the image's size and differ only along boundaries
    (nearest on the 768x1024 mask instead of bilinear on full-size logits). A 360x480 image is
    untouched."""
    from scipy import ndimage

    from models.engine.sam_torch import SamEngine

    reduced, plain = SamEngine(tiny_sam, name="t"), SamEngine(tiny_sam, name="t", working_side=None)
    assert reduced.working_side == 1024
    small = reduced.embed([scene])[0]
    assert not isinstance(small.payload, Reduced)
    a, b = reduced.embed([big_scene])[0], plain.embed([big_scene])[0]
    assert isinstance(a.payload, Reduced) and a.payload.working_size == (768, 1024)
    assert a.original_size == (1440, 1920) and a.key != b.key
    np.testing.assert_array_equal(a.payload.inner.embedding.numpy(), b.payload.embedding.numpy())
    prompts = [
        Prompt(points=[[480, 520]], labels=[1]),
        Prompt(box=[1000, 680, 1640, 1320]),
        Prompt(points=[[1919, 1439], [5, 5]], labels=[1, 0], box=[0, 0, 1920, 1440]),
    ]
    x, y = reduced.predict(a, prompts), plain.predict(b, prompts)
    assert x.masks.shape == y.masks.shape == (3, 3, 1440, 1920)
    np.testing.assert_array_equal(x.iou, y.iou)
    np.testing.assert_array_equal(x.low_res_logits, y.low_res_logits)
    for m, n in zip(x.masks.reshape(-1, 1440, 1920), y.masks.reshape(-1, 1440, 1920)):
        boundary = ndimage.binary_dilation(m, iterations=3) & ~ndimage.binary_erosion(m, iterations=3)
        assert not ((m != n) & ~boundary).any()


def test_engine_config_working_side() -> None:
    from models.engine import EngineConfig, build_engine

    assert EngineConfig().resolved_working_side() == 1024
    assert EngineConfig(working_side=0).resolved_working_side() is None
    assert build_engine(EngineConfig(working_side=640)).working_side == 640
    assert build_engine(EngineConfig(backend="classical-regions", working_side=0)).working_side is None
    assert build_engine(EngineConfig(backend="torch", sam_type="tiny")).working_side == 1024
    with pytest.raises(ValueError, match="working_side"):
        EngineConfig(working_side=8).validate()


# -- one chunking helper for every labeler -------------------------------------------------------
def _two_objects(h: int = 64, w: int = 96) -> list[np.ndarray]:
    a, b = np.zeros((h, w), bool), np.zeros((h, w), bool)
    a[8:30, 10:40], b[36:60, 50:90] = True, True
    return [a, b]


def test_chunk_size_counts_masks_and_logits() -> None:
    from models.labels.common import LOGIT_BYTES, chunk_size

    per = 3 * (100 * 200 + LOGIT_BYTES)
    assert chunk_size((100, 200), True, 10 * per) == 10
    assert chunk_size((100, 200), True, 10 * per - 1) == 9
    assert chunk_size((100, 200), False, 10 * per) == 30
    assert chunk_size((100, 200), True, 10 * per, max_prompts=4) == 4
    assert chunk_size((4000, 6000), True, 1) == 1  # never less than one prompt


def test_predict_chunks_yields_every_prompt_once_and_books_calls() -> None:
    from models.labels.common import RefineResult, predict_chunks
    from tests.scripted import ScriptedSegmenter

    engine = ScriptedSegmenter(_two_objects())
    handle = engine.embed([np.zeros((64, 96, 3), np.uint8)])[0]
    prompts = [Prompt(points=[[20 + (i % 2) * 50, 20 + (i % 2) * 25]], labels=[1]) for i in range(11)]
    whole = engine.predict(handle, prompts)
    result = RefineResult(np.empty(0))
    starts, masks = [], []
    for start, out in predict_chunks(engine, handle, prompts, result, max_prompts=4):
        starts.append(start)
        masks.append(out.masks)
    assert starts == [0, 4, 8] and [len(p) for p in engine.seen[-3:]] == [4, 4, 3]
    np.testing.assert_array_equal(np.concatenate(masks), whole.masks)
    assert (result.decoder_calls, result.prompts) == (3, 11)
    assert len(list(predict_chunks(engine, handle, [], result))) == 0


def test_packed_masks_round_trip_at_one_bit_per_pixel() -> None:
    from models.labels.common import PackedMasks

    rng = np.random.default_rng(0)
    masks = rng.random((5, 37, 41)) > 0.5
    packed = PackedMasks((37, 41))
    for m in masks:
        packed.append(m)
    assert len(packed) == 5 and packed.nbytes == 5 * ((37 * 41 + 7) // 8)
    for m, n in zip(masks, packed, strict=True):
        np.testing.assert_array_equal(m, n)
    np.testing.assert_array_equal(packed.select([3, 1])[0], masks[3])
    assert len(packed[1:3]) == 2
    with pytest.raises(ValueError, match="PackedMasks"):
        packed.append(np.zeros((37, 40), bool))


class Largest:
    """Records the largest prompt batch a ScriptedSegmenter decoded."""

    @staticmethod
    def of(engine) -> int:
        return max(len(p) for p in engine.seen)


def test_weaksam_proposals_and_tag_points_decode_in_chunks(monkeypatch) -> None:
    """WeakSAM's proposals and WISH's tags -> points give the same answer with a chunk budget of
    two prompts, and no decode call sees more."""
    import torch

    from models.labels import common
    from models.labels.weaksam.proposals import ProposalOptions, weaksam_proposals
    from models.labels.wish_tags import TagPointOptions, tags_to_points
    from tests.scripted import ScriptedSegmenter

    def run():
        engine = ScriptedSegmenter(_two_objects())
        handle = engine.embed([np.zeros((64, 96, 3), np.uint8)])[0]
        props = weaksam_proposals(engine, handle, options=ProposalOptions(points_per_side=4))
        cam = torch.zeros(2, 64, 96)
        for y, x, v in ((10, 12, 1.0), (25, 30, 0.9), (50, 80, 0.8), (40, 60, 0.7)):
            cam[0, y, x] = v
        found = tags_to_points(
            engine, handle, cam, [0], lambda xy: xy.astype(float), TagPointOptions(3, 0.5, 0.5)
        )
        return props, found, Largest.of(engine)

    props, found, largest = run()
    assert largest == 16
    monkeypatch.setattr(common, "MAX_MASK_BYTES", 2 * 3 * (64 * 96 + common.LOGIT_BYTES))
    props2, found2, largest2 = run()
    assert largest2 == 2
    np.testing.assert_array_equal(props.boxes, props2.boxes)
    np.testing.assert_array_equal(props.scores, props2.scores)
    assert props.sources == props2.sources
    np.testing.assert_array_equal(found.points, found2.points)
    np.testing.assert_array_equal(found.candidates, found2.candidates)
    np.testing.assert_array_equal(found.stability, found2.stability)


def test_box_instances_decode_in_chunks(monkeypatch) -> None:
    from models.labels import common
    from models.labels.common import RefineResult, box_instances
    from tests.scripted import ScriptedSegmenter

    boxes = np.array([[10, 8, 40, 30], [50, 36, 90, 60], [12, 10, 38, 28]], float)

    def run():
        engine = ScriptedSegmenter(_two_objects())
        handle = engine.embed([np.zeros((64, 96, 3), np.uint8)])[0]
        found = box_instances(engine, handle, boxes, [1, 2, 1], [0.9, 0.8, 0.7], RefineResult(np.empty(0)))
        return found, Largest.of(engine)

    whole, largest = run()
    monkeypatch.setattr(common, "MAX_MASK_BYTES", 64 * 96 + common.LOGIT_BYTES)  # one single-mask prompt
    chunked, largest2 = run()
    assert (largest, largest2) == (3, 1)
    for (c, m, s), (c2, m2, s2) in zip(whole, chunked, strict=True):
        assert (c, s) == (c2, s2) and np.array_equal(m, m2)
    with pytest.raises(ValueError, match="differ in length"):
        box_instances(None, None, boxes, [1], [0.5], RefineResult(np.empty(0)))


def test_sepl_peak_memory_is_bounded_by_the_chunk(monkeypatch) -> None:
    """SEPL on 100 grid prompts over a 400x600 image: decoded in one call its candidates and logits
    take ~150 MB; in chunks of 2 prompts the peak of Python-traced memory stays under 40 MB (kept
    candidates are bit-packed) and the labels are the same."""
    import tracemalloc

    from models.labels import backend_defaults, build_labeler, common
    from models.labels.schema import PointLabel, WeakLabels
    from tests.scripted import ScriptedSegmenter

    h, w = 400, 600
    objects = [np.zeros((h, w), bool), np.zeros((h, w), bool)]
    objects[0][50:200, 60:250], objects[1][220:380, 300:560] = True, True
    weak = WeakLabels(h, w, points=[PointLabel(100, 100, 1), PointLabel(400, 300, 2)])
    options = backend_defaults("sepl", "classical", {"points_per_side": 10})

    def run() -> tuple[np.ndarray, int, int]:
        engine = ScriptedSegmenter(objects)
        handle = engine.embed([np.zeros((h, w, 3), np.uint8)])[0]
        labeler = build_labeler("sepl", engine, **options)
        tracemalloc.start()
        try:
            labels = labeler.refine(handle, weak).labels
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        return labels, peak, Largest.of(engine)

    monkeypatch.setattr(common, "MAX_MASK_BYTES", 2**40)  # one call
    whole, whole_peak, largest = run()
    assert largest == 100 and whole_peak > 150e6
    monkeypatch.setattr(common, "MAX_MASK_BYTES", 2 * 3 * (h * w + common.LOGIT_BYTES))
    chunked, peak, largest = run()
    assert largest == 2 and peak < 40e6
    np.testing.assert_array_equal(whole, chunked)


def test_a_deadline_stops_weaksam_proposals_between_chunks(monkeypatch) -> None:
    from models.labels import common
    from models.labels.weaksam.proposals import ProposalOptions, weaksam_proposals
    from tests.scripted import ScriptedSegmenter

    class Slow(ScriptedSegmenter):
        def _decode(self, handle, prompts, multimask):
            time.sleep(0.05)
            return super()._decode(handle, prompts, multimask)

    engine = Slow(_two_objects())
    handle = engine.embed([np.zeros((64, 96, 3), np.uint8)])[0]
    monkeypatch.setattr(common, "MAX_MASK_BYTES", 3 * (64 * 96 + common.LOGIT_BYTES))
    with deadline(0.3), pytest.raises(DeadlineExceeded):
        weaksam_proposals(engine, handle, options=ProposalOptions(points_per_side=8))
    assert 1 <= len(engine.seen) < 64


def test_deadlines_belong_to_their_thread() -> None:
    """A deadline set in one thread (the service's worker) is not seen by another."""
    import threading

    seen: dict[str, object] = {}

    def other() -> None:
        seen["remaining"] = remaining()
        try:
            check_deadline()
            seen["raised"] = False
        except DeadlineExceeded:
            seen["raised"] = True

    with deadline(0.0):
        time.sleep(0.01)
        thread = threading.Thread(target=other)
        thread.start()
        thread.join()
        with pytest.raises(DeadlineExceeded):
            check_deadline()
    assert seen == {"remaining": None, "raised": False}


def test_prompts_map_into_the_working_frame_and_are_checked_at_the_image_size(big_scene) -> None:
    """Points and boxes scale by working / original per axis (and back exactly); a prompt is
    validated against the image's own size, not the working one."""
    from models.engine.base import scale_prompt

    p = Prompt(points=[[1920, 0], [960, 720]], labels=[1, 0], box=[480, 360, 1440, 1080])
    small = scale_prompt(p, 480 / 1920, 360 / 1440, (360, 480))
    np.testing.assert_allclose(small.points, [[480, 0], [240, 180]])
    np.testing.assert_allclose(small.box, [120, 90, 360, 270])
    back = scale_prompt(small, 1920 / 480, 1440 / 360, (1440, 1920))
    np.testing.assert_allclose(back.points, p.points)
    np.testing.assert_allclose(back.box, p.box)
    engine = ClassicalPrior(working_side=480)
    handle = engine.embed([big_scene])[0]
    out = engine.predict(handle, [Prompt(points=[[1900, 1400]], labels=[1])])  # beyond 480x360: fine
    assert out.masks.shape == (1, 3, 1440, 1920)
    with pytest.raises(ValueError):
        engine.predict(handle, [Prompt(points=[[1930, 10]], labels=[1])])


def test_rescaled_labels_at_the_far_edge_stay_inside() -> None:
    from models.labels.schema import BoxLabel, PointLabel, Scribble, WeakLabels

    big = WeakLabels(
        1440,
        1920,
        [PointLabel(1919.9, 1439.9, 1)],
        [Scribble(2, np.array([[0.0, 0.0], [1919.99, 1439.99]]), 1)],
        [BoxLabel(3, (0.0, 0.0, 1920.0, 1440.0))],
    )
    big.validate(5)
    small = big.rescaled(360, 480)
    small.validate(5)
    assert small.boxes[0].box == (0.0, 0.0, 480.0, 360.0) and small.scribbles[0].width == 1
    assert small.scribble_mask(small.scribbles[0])[359, 479]


def test_decode_cost_refuses_a_predict_that_cannot_finish_before_it_starts() -> None:
    """The service learns what a prompt costs (fixed part from the warm-up, per-megapixel part from
    the decodes it serves) and refuses with a 413 naming `prompts`, and how many would fit, a
    /predict whose expected decode is over its deadline; one that fits goes through."""
    from serving.errors import ApiError
    from serving.lanes import DecodeCost

    cost = DecodeCost(weight=0.5)
    cost.calibrate(0.05)  # the warm-up: 50 ms a prompt on its small image
    assert cost.seconds(10, 1_000_000) == pytest.approx(0.5)
    cost.observe(seconds=1.5, prompts=10, pixels=1_000_000)  # 150 ms each at 1 Mpx: 100 ms per Mpx
    assert cost.per_mpx == pytest.approx(0.1)
    cost.observe(seconds=0.9, prompts=3, pixels=2_000_000)  # 300 ms each at 2 Mpx: 125 ms per Mpx
    assert cost.per_mpx == pytest.approx(0.1125)  # halfway, weight 0.5
    assert cost.seconds(200, 1_000_000) == pytest.approx(200 * 0.1625)
    cost.refuse_over(184, 1_000_000, 30.0)  # 29.9 s: fits
    with pytest.raises(ApiError) as refused:
        cost.refuse_over(256, 1_000_000, 30.0)  # 41.6 s
    assert refused.value.error_code == 413 and refused.value.field == "prompts"
    assert "256 prompts need about 42 s" in refused.value.message
    assert "send at most 184 per request" in refused.value.message
    cost.observe(seconds=1.0, prompts=0, pixels=1_000_000)  # nothing decoded: nothing learned
    assert cost.per_mpx == pytest.approx(0.1125)


def test_a_refine_grid_that_cannot_finish_is_refused_before_it_starts() -> None:
    """SEPL's and WeakSAM's grids of point prompts: refused (413 on options.points_per_side, with the
    side that would fit) when even the size-independent cost of their prompts is over the deadline."""
    from serving.errors import ApiError
    from serving.lanes import DecodeCost

    cost = DecodeCost()
    cost.calibrate(0.1)
    cost.refuse_grid_over(34, 120.0, "options.points_per_side")  # 1156 prompts, 115.6 s: fits
    with pytest.raises(ApiError) as refused:
        cost.refuse_grid_over(64, 120.0, "options.points_per_side")  # 4096 prompts, 410 s
    assert refused.value.error_code == 413 and refused.value.field == "options.points_per_side"
    assert "64x64 grid (4096 prompts) needs at least 410 s" in refused.value.message
    assert "use at most 34 per side" in refused.value.message


def test_a_refine_whose_weak_labels_cannot_be_decoded_in_time_is_refused_before_the_lane() -> None:
    """SeSAM and the naive labeler decode at least one prompt per point, scribble and box: a /refine
    (or a Label Studio refinement, which goes the same way) with more of them than the heavy deadline
    fits at the size-independent cost is a 413 on `weak` (on a Label Studio task's annotations),
    with how many fit, before the heavy lane is asked; fewer go through, and methods whose prompts
    do not follow the labels are not counted."""
    import asyncio
    from types import SimpleNamespace

    from serving.errors import ApiError
    from serving.lanes import DecodeCost
    from serving.service import SegmentationService

    cost = DecodeCost()
    cost.calibrate(0.05)  # 50 ms a prompt: 2400 fit in 120 s
    asked: list[str] = []

    async def heavy(call) -> dict:
        asked.append("lane")
        return {}

    server = SimpleNamespace(decode_cost=cost, config=SimpleNamespace(request_timeout_s=120), _heavy=heavy)
    refine = SegmentationService.inner.refine_bytes

    def send(method: str, weak: dict) -> None:
        asyncio.run(refine(server, b"", weak, None, method, {}, "png", None))

    point, box = {"x": 1, "y": 1, "class_id": 1}, {"class_id": 2, "box": [0, 0, 4, 4]}
    scribble = {"class_id": 1, "points": [[0, 0], [3, 3]]}
    for method in ("sesam", "naive"):
        with pytest.raises(ApiError) as refused:
            send(method, {"points": [point] * 2000, "scribbles": [scribble] * 300, "boxes": [box] * 101})
        assert refused.value.error_code == 413 and refused.value.field == "weak"
        # 120.05 s: rounded so that it never reads as the deadline itself
        assert (
            "2401 weak labels are at least 2401 prompts, at least 120.1 s on this server, over the 120 s"
            in (refused.value.message)
        )
        assert "send at most 2400 per request" in refused.value.message
        assert asked == []
        send(method, {"points": [point] * 2000, "scribbles": [scribble] * 300, "boxes": [box] * 100})
        assert asked == ["lane"]
        asked.clear()
    send("sepl", {"points": [point] * 4000})  # SEPL's prompts are its grid, bounded on its own
    assert asked == ["lane"]
    with pytest.raises(ApiError) as refused:  # Label Studio names where its annotations are
        asyncio.run(
            refine(
                server, b"", {"points": [point] * 2401}, None, "sesam", {}, "png", 2, "tasks[0].annotations"
            )
        )
    assert refused.value.field == "tasks[0].annotations"


@pytest.mark.parametrize(
    ("decode_batch", "max_prompts", "timed"), [(8, None, 8), (8, 4, 4), (1, None, 1), (None, None, 64)]
)
def test_the_warm_up_times_a_prompt_as_a_batch_decodes_it(monkeypatch, decode_batch, max_prompts, timed):
    """The calibration a lower bound per prompt rests on: the warm-up times one decode of the engine's
    own batch (at most 64 prompts, at most its max_prompts) and divides by it, so an engine that
    decodes prompts together is not charged one click's per-call overhead for each of them."""
    import itertools

    import serving.service as service

    calls: list[int] = []

    class Engine:
        def embed(self, images):
            return ["handle"]

        def predict(self, handle, prompts):
            calls.append(len(prompts))

    engine = Engine()
    engine.max_prompts = max_prompts
    if decode_batch is not None:
        engine.decode_batch = decode_batch
    clock = itertools.count(0.0, 2.0)  # each reading 2 s after the last
    monkeypatch.setattr(service.time, "perf_counter", lambda: next(clock))
    assert service.warm_up(engine) == pytest.approx(2.0 / timed)
    assert calls == [1, timed]
