"""The previous classical prior (`classical-regions`: superpixel regions selected whole) on a known scene."""

from __future__ import annotations

import numpy as np

from models.engine import Prompt
from models.engine.lowres import low_res_to_mask, mask_to_low_res
from models.engine.regions import RegionPrior, region_contrast, superpixels


def test_superpixel_scales_grow(scene) -> None:
    sp = superpixels(scene)
    counts = [len(a) for a in sp.areas]
    assert counts[0] > counts[1] > counts[2] >= 2
    assert sp.labels.shape == (3, 360, 480)


def test_point_on_object_returns_that_object(scene) -> None:
    out = RegionPrior().predict(scene, [Prompt(points=[[120, 130]], labels=[1])])
    rect = np.zeros((360, 480), bool)
    rect[60:200, 50:200] = True
    for mask in out.masks[0]:
        assert mask[130, 120]
    # The flat red rectangle is one region at some scale: its best candidate matches it closely.
    ious = [(m & rect).sum() / (m | rect).sum() for m in out.masks[0]]
    assert max(ious) > 0.9


def test_negative_point_removes_its_region(scene) -> None:
    engine = RegionPrior()
    both = engine.predict(scene, [Prompt(points=[[120, 130], [330, 250]], labels=[1, 1])]).masks[0]
    minus = engine.predict(scene, [Prompt(points=[[120, 130], [330, 250]], labels=[1, 0])]).masks[0]
    assert both[:, 250, 330].all() and not minus[:, 250, 330].any()
    assert minus[:, 130, 120].all()


def test_box_prompt_stays_inside_box(scene) -> None:
    out = RegionPrior().predict(scene, [Prompt(box=[250, 170, 410, 330])])
    outside = np.ones((360, 480), bool)
    outside[170:330, 250:410] = False
    assert not out.masks[0][:, outside].any()
    disc = np.zeros((360, 480), bool)
    yy, xx = np.mgrid[:360, :480]
    disc[(yy - 250) ** 2 + (xx - 330) ** 2 < 70**2] = True
    assert max((m & disc).sum() / disc.sum() for m in out.masks[0]) > 0.9


def test_region_contrast_ranks_true_object_higher(scene) -> None:
    sp = superpixels(scene)
    s = 1
    labels = sp.labels[s]
    stats = (sp.areas[s], sp.colors[s], sp.spreads[s], sp.adjacency[s])
    rect_region = labels[130, 120]
    whole = np.zeros(len(sp.areas[s]), bool)
    whole[np.unique(labels[60:200, 50:200])] = True  # the rectangle's regions (and any that straddle it)
    mixed = whole.copy()
    mixed[np.unique(labels[250:300, 0:40])] = True  # plus unrelated background
    single = np.zeros_like(whole)
    single[rect_region] = True
    assert region_contrast(single, *stats) > region_contrast(mixed, *stats)
    assert region_contrast(np.zeros_like(whole), *stats) == 0.0


def test_mask_round_trip_through_low_res(scene) -> None:
    rect = np.zeros((360, 480), bool)
    rect[60:200, 50:200] = True
    back = low_res_to_mask(mask_to_low_res(rect), (360, 480))
    assert (back ^ rect).sum() / rect.sum() < 0.05


def test_candidates_equal_their_regions_painted_everywhere(scene) -> None:
    """Candidates are painted only inside the chosen regions' bounding box; that must equal
    painting the chosen regions over the whole image, at full and at low resolution."""
    engine = RegionPrior()
    handle = engine.embed([scene])[0]
    sp = handle.payload
    rng = np.random.default_rng(3)
    prompts = [
        Prompt(
            points=rng.uniform([0, 0], [480, 360], (n, 2)), labels=rng.integers(0, 2, n) | (np.arange(n) == 0)
        )
        for n in (1, 2, 5, 9)
    ] + [Prompt(box=[30, 40, 300, 350])]
    out = engine.predict(handle, prompts)
    for i, prompt in enumerate(prompts):
        for s in range(3):
            _, chosen = engine._candidate(sp, s, prompt, None)
            everywhere = chosen[sp.labels[s]]
            low = np.append(chosen, False)[sp.low_res[s]]
            if prompt.box is not None:
                x0, y0, x1, y1 = (int(v) for v in prompt.box)
                clip = np.zeros_like(everywhere)
                clip[y0:y1, x0:x1] = True
                everywhere &= clip
                low_clip = np.zeros_like(low)
                low_clip[
                    int(y0 * 192 / 360) : int(np.ceil(y1 * 192 / 360)),
                    int(x0 * 256 / 480) : int(np.ceil(x1 * 256 / 480)),
                ] = True
                low &= low_clip
            assert np.array_equal(out.masks[i, s], everywhere)
            assert np.array_equal(out.low_res_logits[i, s] > 0, low)
