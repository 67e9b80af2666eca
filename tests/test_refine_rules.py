"""The pure pieces of refinement on hand-made masks: components, grid, samplers, selection, merge, SEPL."""

from __future__ import annotations

import numpy as np
import pytest

from models.labels.merge import Instance, merge_instances
from models.labels.sampling import (
    SAMPLERS,
    connected_components,
    grid_cells,
    grid_shape,
    sample_skeleton_grid,
)
from models.labels.selection import (
    coverage_compatibility,
    select_best_score,
    select_coverage,
    select_smallest,
)
from models.labels.sepl import assign_and_select, authors_merge


def _rect(h: int, w: int, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[r0:r1, c0:c1] = True
    return m


def test_connected_components_split_and_order() -> None:
    mask = _rect(50, 50, 0, 10, 0, 10) | _rect(50, 50, 20, 40, 20, 45) | _rect(50, 50, 45, 46, 0, 2)
    parts = connected_components(mask)
    assert [int(p.sum()) for p in parts] == [500, 100, 2]
    assert not (parts[0] & parts[1]).any()
    assert len(connected_components(mask, min_area=3)) == 2
    diagonal = np.eye(5, dtype=bool)  # 8-connected: one component
    assert len(connected_components(diagonal)) == 1
    assert connected_components(np.zeros((4, 4), bool)) == []


@pytest.mark.parametrize("seed", range(4))
def test_grid_has_enough_square_cells_and_no_more(seed: int) -> None:
    """Properties of SeSAM's grid: at least K cells, one row and one column fewer would not hold K,
    the longer side gets more cells, and scaling the box keeps the grid."""
    rng = np.random.default_rng(seed)
    for _ in range(200):
        s1, s2 = (int(v) for v in rng.integers(1, 400, 2))
        k = int(rng.integers(1, 20))
        n1, n2 = grid_shape(s1, s2, k)
        assert n1 * n2 >= k
        assert (n1 - 1) * (n2 - 1) < k
        assert (n1 >= n2) == (s1 >= s2) or n1 == n2
        assert grid_shape(3 * s1, 3 * s2, k) == (n1, n2)


def test_grid_shape_examples() -> None:
    assert grid_shape(100, 100, 5) == (3, 3)  # sqrt(2000) = 44.7 -> ceil(2.24) = 3
    assert grid_shape(20, 180, 5) == (1, 7)  # sqrt(720) = 26.8 -> ceil(0.75), ceil(6.7)
    with pytest.raises(ValueError, match="positive"):
        grid_shape(0, 3, 5)


def _random_shape(rng: np.random.Generator) -> np.ndarray:
    h, w = 80, 100
    mask = np.zeros((h, w), bool)
    yy, xx = np.mgrid[:h, :w]
    for _ in range(rng.integers(1, 4)):
        cy, cx, r = rng.integers(10, 70), rng.integers(10, 90), rng.integers(4, 25)
        mask |= (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
    return connected_components(mask)[0]


@pytest.mark.parametrize("seed", range(20))
def test_skeleton_grid_points_inside_and_one_per_cell(seed: int) -> None:
    rng = np.random.default_rng(seed)
    comp = _random_shape(rng)
    pts = sample_skeleton_grid(comp, 5, rng)
    assert 1 <= len(pts) <= 5
    xs, ys = pts[:, 0].astype(int), pts[:, 1].astype(int)
    assert comp[ys, xs].all()
    cells = grid_cells(comp, 5)
    owner = [
        next(i for i, (rs, cs) in enumerate(cells) if rs.start <= y < rs.stop and cs.start <= x < cs.stop)
        for x, y in zip(xs, ys)
    ]
    assert len(set(owner)) == len(owner)


def test_skeleton_grid_prefers_the_middle() -> None:
    comp = _rect(60, 200, 10, 50, 10, 190)  # a thick bar: the skeleton runs along row ~30
    rng = np.random.default_rng(0)
    rows = np.concatenate([sample_skeleton_grid(comp, 5, rng)[:, 1] for _ in range(50)])
    assert abs(np.mean(rows) - 29.5) < 4
    assert np.mean(np.abs(rows - 29.5) < 10) > 0.6


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_every_sampler_stays_inside(name: str) -> None:
    rng = np.random.default_rng(1)
    comp = _random_shape(rng)
    confidence = rng.uniform(size=comp.shape)
    pts = SAMPLERS[name](comp, 5, rng, confidence)
    assert len(pts) == 5
    assert comp[pts[:, 1].astype(int), pts[:, 0].astype(int)].all()


def test_confidence_sampler_needs_a_map_and_takes_the_top() -> None:
    comp = _rect(20, 20, 2, 18, 2, 18)
    with pytest.raises(ValueError, match="needs a confidence map"):
        SAMPLERS["confidence"](comp, 3, np.random.default_rng(0))
    conf = np.zeros((20, 20))
    conf[5, 7] = conf[9, 9] = conf[15, 3] = 1.0
    pts = SAMPLERS["confidence"](comp, 3, np.random.default_rng(0), conf)
    assert {tuple(p) for p in pts.astype(int)} == {(7, 5), (9, 9), (3, 15)}


def test_center_and_boundary_samplers() -> None:
    comp = _rect(41, 41, 0, 41, 0, 41)
    centre = SAMPLERS["center"](comp, 1, np.random.default_rng(0))[0]
    assert np.allclose(centre, (20, 20))
    edge = SAMPLERS["boundary"](comp, 10, np.random.default_rng(0))
    dist_to_edge = np.minimum.reduce([edge[:, 0], edge[:, 1], 40 - edge[:, 0], 40 - edge[:, 1]]) + 1
    assert (dist_to_edge <= 2).all()


# -- selection --------------------------------------------------------------------------------
H, W = 40, 40
WEAK = _rect(H, W, 10, 30, 10, 30)  # 400 px
PART = _rect(H, W, 10, 20, 10, 20)  # 100 px, inside: r = 0.25, p = 1
WHOLE = _rect(H, W, 9, 31, 9, 31)  # 484 px: r = 1, p = 400/484 = 0.83
HUGE = _rect(H, W, 0, 40, 0, 40)  # 1600 px: r = 1, p = 0.25


def test_coverage_compatibility_values() -> None:
    r, p = coverage_compatibility(np.stack([PART, WHOLE, HUGE]), WEAK)
    np.testing.assert_allclose(r, [0.25, 1.0, 1.0])
    np.testing.assert_allclose(p, [1.0, 400 / 484, 0.25])


def test_selection_rule_takes_highest_compatibility_among_kept() -> None:
    cands = np.stack([PART, WHOLE, HUGE])
    assert select_coverage(cands, WEAK) == 1  # PART fails tau1, HUGE fails tau2
    assert select_best_score(cands, WEAK, np.array([0.9, 0.8, 0.7])) == 0


def test_selection_fallback_is_highest_compatibility() -> None:
    tiny = _rect(H, W, 10, 12, 10, 12)  # r = 0.01, p = 1
    cands = np.stack([HUGE, tiny, HUGE])
    assert select_coverage(cands, WEAK) == 1  # nothing passes both; highest p wins


def test_selection_thresholds_are_used() -> None:
    cands = np.stack([PART, WHOLE, HUGE])
    assert select_coverage(cands, WEAK, tau1=0.2, tau2=0.9) == 0  # now PART passes, WHOLE fails p


def test_select_smallest_skips_empty() -> None:
    assert select_smallest(np.stack([np.zeros((H, W), bool), WHOLE, PART])) == 2


# -- merge ------------------------------------------------------------------------------------
def test_merge_overlap_rules_and_weak_wins() -> None:
    a = Instance(1, _rect(10, 10, 0, 6, 0, 10), score=0.9)
    b = Instance(2, _rect(10, 10, 4, 10, 0, 10), score=0.5)
    same = Instance(1, _rect(10, 10, 0, 2, 0, 2), score=0.1)
    weak = np.full((10, 10), 255, np.uint8)
    weak[5, 5] = 3
    by_score = merge_instances((10, 10), [b, a, same], weak, "score")
    assert (by_score[4:6, :] == 1).sum() == 19 and by_score[5, 5] == 3
    assert (by_score[6:, :] == 2).all()
    unlabeled = merge_instances((10, 10), [a, b, same], weak, "unlabeled")
    assert (unlabeled[4, :] == 255).all() and unlabeled[5, 5] == 3
    assert (unlabeled[:4] == 1).all()
    with pytest.raises(ValueError, match="overlap rule"):
        merge_instances((10, 10), [a], None, "vote")


# -- SEPL -------------------------------------------------------------------------------------
def test_sepl_assignment_and_selection() -> None:
    pseudo = np.full((20, 20), 255, np.uint8)
    pseudo[0:10, 0:10] = 1  # P_1: 100 px
    pseudo[10:20, 10:20] = 2  # P_2: 100 px
    inside = _rect(20, 20, 0, 8, 0, 12)  # 96 px, 80 inside P_1: o_s = 0.83 > 0.5 -> kept for class 1
    spill = _rect(20, 20, 8, 20, 8, 20)  # 144 px, 100 in P_2 -> o_s 0.69 kept for class 2
    stray = _rect(20, 20, 0, 20, 15, 20)  # 100 px, 50 in P_2 -> o_s 0.5 (not > 0.5), o_p 0.5 -> dropped
    nowhere = _rect(20, 20, 0, 5, 15, 20)  # overlaps no class -> dropped
    out = assign_and_select([inside, spill, stray, nowhere], pseudo)
    assert np.array_equal(out[1][0], inside)
    assert np.array_equal(out[2][0], spill)
    kept = assign_and_select([inside, spill], pseudo, keep_pseudo=True)
    assert np.array_equal(kept[1][0], inside | (pseudo == 1))


def test_sepl_falls_back_to_the_pseudo_label() -> None:
    pseudo = np.full((20, 20), 255, np.uint8)
    pseudo[0:10, 0:10] = 1
    big = _rect(20, 20, 0, 20, 0, 20)  # o_s = 0.25, o_p = 1.0 > 0.85 -> kept by the OR
    assert assign_and_select([big], pseudo)[1][0].all()
    small_far = _rect(20, 20, 9, 20, 9, 20)  # 1 px overlap: o_s 0.008, o_p 0.01 -> not kept
    fallback = assign_and_select([small_far], pseudo)[1][0]
    assert np.array_equal(fallback, pseudo == 1)


def _row(*cells: int) -> np.ndarray:
    return np.asarray([cells], np.uint8)


def _span(n: int, a: int, b: int) -> np.ndarray:
    """A 1xn mask over columns a..b inclusive."""
    m = np.zeros((1, n), bool)
    m[0, a : b + 1] = True
    return m


def _paper(masks, pseudo, **kw) -> np.ndarray:
    from models.labels.merge import Instance, merge_instances

    sel = assign_and_select(masks, pseudo, **kw)
    return merge_instances(pseudo.shape, [Instance(c, m, s) for c, (m, s) in sel.items()], None, "score")


def test_sepl_rules_on_one_row() -> None:
    """The three rules on one hand-made row; they differ exactly where the papers say.

    P = [1 1 1 1 . 2 2 2 2 2]; A = cols 0-2 (all P_1), B = cols 3-6 (1 px P_1, 2 px P_2: o_s 0.5,
    not above), C = cols 8-9 (all P_2)."""
    _ = 255
    pseudo = _row(1, 1, 1, 1, _, 2, 2, 2, 2, 2)
    a, b, c = _span(10, 0, 2), _span(10, 3, 6), _span(10, 8, 9)
    # paper: union of kept masks; P pixels outside them (col 3 under B, cols 5-7) are dropped
    assert _paper([a, b, c], pseudo).tolist() == [[1, 1, 1, _, _, _, _, _, 2, 2]]
    # keep_pseudo: every P pixel stays
    assert _paper([a, b, c], pseudo, keep_pseudo=True).tolist() == [[1, 1, 1, 1, _, 2, 2, 2, 2, 2]]
    # authors: col 3 lies under B, which nobody claimed -> dropped; col 7 lies under no mask ->
    # the CAM is trusted there
    assert authors_merge([a, b, c], pseudo).tolist() == [[1, 1, 1, _, _, _, _, 2, 2, 2]]


def test_sepl_authors_merge_is_greedy_and_higher_class_wins() -> None:
    _ = 255
    pseudo = _row(1, 1, 1, 2, 2, 2)
    e, f = _span(6, 0, 3), _span(6, 2, 5)  # E: o_s 3/4 for class 1; F: 1/4 for 1, 3/4 for 2
    assert authors_merge([e, f], pseudo).tolist() == [[1, 1, 2, 2, 2, 2]]  # class 2 paints last
    # a mask claimed by class 1 (o_p = 1 >= 0.85) is gone for class 2, whose P stays as CAM
    whole = _span(4, 0, 3)
    assert authors_merge([whole], _row(1, 1, 2, 2)).tolist() == [[1, 1, 2, 2]]
    assert authors_merge([whole], _row(1, 1, 2, 2), t2=1.01).tolist() == [[_, _, _, _]]  # both drop it


def test_sepl_background_class_takes_no_masks() -> None:
    pseudo = _row(0, 0, 1, 1)
    m = _span(4, 1, 3)  # o_s for class 1 = 2/3
    sel = assign_and_select([m], pseudo, background_class=0)
    assert list(sel) == [1] and sel[1][0].tolist() == [[False, True, True, True]]
    assert authors_merge([m], pseudo, background_class=0).tolist() == [[0, 1, 1, 1]]
