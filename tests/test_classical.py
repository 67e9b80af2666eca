"""The classical prior as an interactive segmenter (seeded random walk on superpixels), on scenes
whose objects are known, and the walker's pure parts on graphs small enough to solve by hand."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
from scipy import sparse

from models.engine import EngineConfig, Prompt, build_engine
from models.engine.base import stability_score
from models.engine.classical import ClassicalOptions, ClassicalPrior, candidate_logits
from models.engine.lowres import LOW_RES, low_res_to_probability, mask_to_low_res
from models.engine.walker import (
    boundary_connectivity,
    color_likelihood,
    expected_iou,
    laplacian,
    random_walk,
    region_graph,
)
from training.interactive import mask_iou, next_click

H, W = 240, 320


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return mask_iou(a, b)


@pytest.fixture(scope="module")
def touching() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A noisy grey background with a red and a blue rectangle that share an edge."""
    rng = np.random.default_rng(1)
    img = rng.normal(120, 10, (H, W, 3)).clip(0, 255).astype(np.uint8)
    red = np.zeros((H, W), bool)
    red[60:180, 60:160] = True
    blue = np.zeros((H, W), bool)
    blue[60:180, 160:260] = True
    img[red] = (210, 40, 40)
    img[blue] = (40, 60, 210)
    noise = rng.normal(0, 6, (H, W, 3))
    return (img + noise).clip(0, 255).astype(np.uint8), red, blue


@pytest.fixture(scope="module")
def prior() -> ClassicalPrior:
    return ClassicalPrior()


def test_a_click_on_each_of_two_touching_regions_selects_each(prior, touching) -> None:
    img, red, blue = touching
    handle = prior.embed([img])[0]
    on_red = prior.predict(handle, [Prompt(points=[[110, 120]], labels=[1])], multimask=False).masks[0, 0]
    on_blue = prior.predict(handle, [Prompt(points=[[210, 120]], labels=[1])], multimask=False).masks[0, 0]
    assert iou(on_red, red) > 0.9 and iou(on_blue, blue) > 0.9
    assert not (on_red & on_blue).any()


def test_a_negative_click_removes_the_region_it_lands_on(prior, touching) -> None:
    img, red, blue = touching
    both = Prompt(points=[[110, 120], [210, 120]], labels=[1, 1])
    minus = Prompt(points=[[110, 120], [210, 120]], labels=[1, 0])
    with_both, without = prior.predict(img, [both, minus], multimask=False).masks[:, 0]
    assert iou(with_both, red | blue) > 0.9
    assert iou(without, red) > 0.9 and (without & blue).sum() < 0.01 * blue.sum()


def test_adding_correct_clicks_never_lowers_iou(prior) -> None:
    """The benchmark's click protocol on a figure of three differently coloured parts (head, torso,
    legs) with a brownish distractor touching the red torso: every click goes to the largest error,
    the answer is fed back; IoU rises with every click until the figure is found (the last pixels
    of a noisy edge, under 1 %, are left out: there one pixel can tip either way)."""
    rng = np.random.default_rng(7)
    img = rng.normal(110, 8, (H, W, 3))
    yy, xx = np.mgrid[:H, :W]
    head = (yy - 60) ** 2 + (xx - 160) ** 2 < 20**2
    torso = (yy >= 80) & (yy < 160) & (xx >= 130) & (xx < 190)
    legs = (yy >= 160) & (yy < 225) & (xx >= 135) & (xx < 185)
    distractor = (yy >= 100) & (yy < 140) & (xx >= 190) & (xx < 250)
    for part, colour in ((head, (230, 190, 150)), (torso, (200, 40, 40)), (legs, (40, 40, 160))):
        img[part] += np.array(colour) - 110
    img[distractor] += np.array((160, 110, 40)) - 110
    img = img.clip(0, 255).astype(np.uint8)
    truth = head | torso | legs
    handle = prior.embed([img])[0]
    points, labels, logits, ious = [], [], None, []
    answer = np.zeros_like(truth)
    while len(ious) < 10 and (not ious or ious[-1] < 0.99):
        click = next_click(answer, truth)
        points.append([click.x + 0.5, click.y + 0.5])
        labels.append(int(click.positive))
        out = prior.predict(
            handle, [Prompt(points=points, labels=labels, mask_logits=logits)], multimask=False
        )
        answer, logits = out.masks[0, 0], out.low_res_logits[0]
        ious.append(iou(answer, truth))
    assert ious[-1] >= 0.99 and len(ious) >= 3, ious  # several parts: several clicks
    assert (answer & distractor).sum() < 0.01 * distractor.sum()
    assert all(b >= a for a, b in itertools.pairwise(ious)), [round(v, 4) for v in ious]


def test_a_box_excludes_everything_outside_it(prior, scene) -> None:
    box = [250, 170, 410, 330]
    out = prior.predict(scene, [Prompt(box=box), Prompt(box=box, points=[[330, 250]], labels=[1])])
    outside = np.ones(scene.shape[:2], bool)
    outside[170:330, 250:410] = False
    assert out.masks.any() and not out.masks[:, :, outside].any()
    disc = (np.mgrid[:360, :480][0] - 250) ** 2 + (np.mgrid[:360, :480][1] - 330) ** 2 < 70**2
    best = out.masks[0, int(np.argmax(out.iou[0]))]
    assert iou(best, disc) > 0.9
    low = out.low_res_logits[0] > 0  # the low-res answer is clipped to the box too
    assert not low[:, :, 220:].any() and not low[:, 230:, :].any()


def test_the_mask_input_changes_the_answer(prior, touching) -> None:
    img, red, blue = touching
    handle = prior.embed([img])[0]
    click = Prompt(points=[[110, 120]], labels=[1])
    plain = prior.predict(handle, [click], multimask=False).masks[0, 0]
    guided = Prompt(points=[[110, 120]], labels=[1], mask_logits=mask_to_low_res(red | blue))
    with_mask = prior.predict(handle, [guided], multimask=False).masks[0, 0]
    assert iou(plain, red) > 0.9
    assert iou(with_mask, red | blue) > 0.9  # the earlier answer pulled the blue half in
    alone = prior.predict(handle, [Prompt(mask_logits=mask_to_low_res(blue))], multimask=False)
    assert iou(alone.masks[0, 0], blue) > 0.9


def test_candidates_are_nested_and_scored(prior, scene) -> None:
    out = prior.predict(scene, [Prompt(points=[[120, 130]], labels=[1])])
    tight, middle, loose = out.masks[0]
    assert not (tight & ~middle).any() and not (middle & ~loose).any()
    assert ((out.iou >= 0) & (out.iou <= 1)).all() and ((out.stability >= 0) & (out.stability <= 1)).all()
    # each candidate's low-res logits are positive where (the low-res view of) its mask is
    for k in range(3):
        back = low_res_to_probability(out.low_res_logits[0, k], scene.shape[:2]) > 0.5
        assert iou(back, out.masks[0, k]) > 0.95


def test_only_negative_points_give_an_empty_answer(prior, scene) -> None:
    out = prior.predict(scene, [Prompt(points=[[120, 130]], labels=[0])])
    assert not out.masks.any() and (out.iou == 0).all()


# -- the walker's pure parts -------------------------------------------------------------------


def test_random_walk_on_a_chain_interpolates_between_seeds() -> None:
    """Five nodes in a row with equal weights, ends seeded 1 and 0: x is linear in between."""
    edges = np.array([[0, 1], [1, 2], [2, 3], [3, 4]])
    lap = laplacian(5, edges, np.ones(4))
    x = random_walk(lap, np.array([1.0, np.nan, np.nan, np.nan, 0.0]))
    assert np.allclose(x, [1, 0.75, 0.5, 0.25, 0])
    # a weak edge in the middle keeps each side close to its own seed
    lap = laplacian(5, edges, np.array([1, 1, 0.01, 1.0]))
    x = random_walk(lap, np.array([1.0, np.nan, np.nan, np.nan, 0.0]))
    assert x[1] > 0.95 and x[3] < 0.05


def test_random_walk_pull_towards_a_prior() -> None:
    lap = laplacian(3, np.array([[0, 1], [1, 2]]), np.ones(2))
    seeds = np.array([1.0, np.nan, np.nan])
    free = random_walk(lap, seeds)
    pulled = random_walk(lap, seeds, unary=np.array([0, 0, 100.0]), prior=np.array([0, 0, 0.0]))
    assert np.allclose(free, 1) and pulled[2] < 0.02 and 0.4 < pulled[1] < 0.6
    assert isinstance(lap, sparse.csr_matrix)


def test_expected_iou_and_stability() -> None:
    areas = np.array([10.0, 10.0, 10.0])
    x = np.array([1.0, 1.0, 0.0])
    assert expected_iou(x, areas, x > 0.5) == pytest.approx(1.0)
    assert expected_iou(x, areas, np.array([True, False, False])) == pytest.approx(0.5)
    assert stability_score(np.array([[0.9, 0.52, 0.1]]), 0.5, 0.0625) == pytest.approx(0.5)


def test_colour_likelihood_separates_two_colours() -> None:
    colors = np.array([[50, 60, 40], [50, 60, 40], [50, -40, -30], [50, -40, -30]], np.float32)
    p = color_likelihood(colors, np.ones(4), np.array([1, 0, 0, 0.0]), np.array([0, 0, 1, 0.0]), 8)
    assert p[1] > 0.99 and p[3] < 0.01


def test_region_graph_of_two_flat_halves() -> None:
    img = np.zeros((40, 60, 3), np.uint8)
    img[:, 30:] = (255, 255, 255)
    g = region_graph(img, scale=60, sigma=0.0)
    assert g.count == 2 and len(g.edges) == 1 and g.boundary[0] == 40
    assert g.on_border.all() and np.allclose(sorted(g.areas), [1200, 1200])


def test_boundary_connectivity_of_an_object_whose_colour_is_also_on_the_border() -> None:
    """Grey ground, a red square in the middle and a red stripe along the top: the square is cut
    off from the border (P(background) 0), the stripe and the ground reach along it (the paper's
    1 - exp(-BndCon^2 / 2), BndCon their border pixels over the root of their area, counted by
    hand); at a colour scale far beyond the red-grey distance all three are one span."""
    img = np.full((60, 60, 3), 128, np.uint8)
    img[20:40, 20:40] = (200, 30, 30)
    img[:5] = (200, 30, 30)
    g = region_graph(img, scale=60, sigma=0.0)
    assert g.count == 3
    square, stripe, ground = (int(g.labels[y, x]) for y, x in ((30, 30), (2, 30), (50, 50)))
    p = boundary_connectivity(g, sigma=10.0)
    assert p[square] == pytest.approx(0.0, abs=1e-12)
    stripe_border = 60 + 2 * 4  # the top row, and rows 1..4 of the left and right columns
    ground_border = 4 * 60 - 4 - stripe_border
    for region, border, area in ((stripe, stripe_border, 300), (ground, ground_border, 3600 - 700)):
        assert p[region] == pytest.approx(1 - np.exp(-(border**2 / area) / 2))
    joined = boundary_connectivity(g, sigma=1e6)
    assert joined == pytest.approx(np.full(3, 1 - np.exp(-(236**2 / 3600) / 2)))
    assert boundary_connectivity(g, sigma=10.0, chunk=2) == pytest.approx(p)  # two chunks, one answer


def test_candidate_logits_round_trip() -> None:
    x = np.linspace(0, 1, 11)
    for t in (0.3, 0.5, 0.7):
        logits = candidate_logits(x, t)
        assert ((logits > 0) == (x > t)).all()
        assert logits.min() == pytest.approx(-8) and logits.max() == pytest.approx(8)
    assert LOW_RES == 256


def _perturbed(value: object) -> object:
    """A valid nearby value of a classical option: a flipped bool, an int one larger, a float 3/4 of
    itself (0.1 for 0), a tuple of thresholds scaled down (still decreasing, still in (0, 1))."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value * 0.75 if value > 0 else 0.1
    if isinstance(value, tuple):
        return tuple(v * 0.9 for v in value)
    raise TypeError(f"no perturbation for {value!r}")


@pytest.mark.parametrize("name", [f.name for f in dataclasses.fields(ClassicalOptions)])
def test_the_cache_namespace_changes_exactly_when_the_encoding_does(name: str, scene: np.ndarray) -> None:
    """An option that changes what `_encode` stores must change the cache namespace (else a cached
    image is read back under other settings); one that does not must leave it alone (else the
    cache splits for nothing)."""
    base = ClassicalOptions()
    other = dataclasses.replace(base, **{name: _perturbed(getattr(base, name))}).validate()
    image = scene[::3, ::3].copy()
    a, b = (ClassicalPrior(o)._encode([image])[0] for o in (base, other))
    same = (
        np.array_equal(a.graph.labels, b.graph.labels)
        and a.laplacian.shape == b.laplacian.shape
        and np.array_equal(a.laplacian.toarray(), b.laplacian.toarray())
        and np.array_equal(a.horizontal, b.horizontal)
        and np.array_equal(a.vertical, b.vertical)
    )
    assert (ClassicalPrior(base).namespace == ClassicalPrior(other).namespace) == same, name


def test_options_are_checked_and_reachable_from_the_engine_config() -> None:
    engine = build_engine(EngineConfig.from_mapping({"classical": {"scale": 40, "mask_weight": 0.02}}))
    assert engine.options.scale == 40 and engine.options.mask_weight == 0.02
    assert ":40.0:" in engine.namespace
    with pytest.raises(ValueError, match="thresholds"):
        ClassicalOptions(thresholds=(0.5, 0.5, 1.5)).validate()
    for bad in ({"click_saliency": 1.5}, {"saliency_sigma": 0.0}, {"saliency_sigma": float("nan")}):
        with pytest.raises(ValueError, match="click_saliency"):
            ClassicalOptions(**bad).validate()
    with pytest.raises(ValueError, match="click_refits"):
        ClassicalOptions(click_refits=-1).validate()
    with pytest.raises(ValueError, match=r"classical.*scal"):
        EngineConfig.from_mapping({"classical": {"scal": 40}}).validate()
    assert build_engine(EngineConfig(backend="classical-regions")).name == "classical-regions"


def test_click_refits_reach_the_first_click_only(scene) -> None:
    """The objectness colour models are refitted (`click_refits`) only for a first click (one
    positive point, nothing else): its potentials move with the count, while two clicks, a box or a
    negative point give the same potentials whatever the count."""
    engines = {n: ClassicalPrior(dataclasses.replace(ClassicalOptions(), click_refits=n)) for n in (0, 2)}
    handles = {n: e.embed([scene])[0] for n, e in engines.items()}

    def potentials(n: int, prompt: Prompt) -> np.ndarray:
        payload = handles[n].payload
        return engines[n].potentials(payload, prompt, engines[n].clicks(payload, prompt, None), None)

    first = Prompt(points=[[100.5, 100.5]], labels=[1])
    assert np.abs(potentials(0, first) - potentials(2, first)).max() > 1e-3
    for other in (
        Prompt(points=[[100.5, 100.5], [300.5, 200.5]], labels=[1, 1]),
        Prompt(box=[60, 60, 160, 160]),
        Prompt(points=[[100.5, 100.5]], labels=[0]),
    ):
        np.testing.assert_array_equal(potentials(0, other), potentials(2, other))


def test_a_click_against_the_answer_on_a_huge_region_fixes_only_its_pixels(prior, touching) -> None:
    """A positive click on the background (one region larger than the whole earlier answer) must not
    flip the background wholesale; without an earlier answer the same click seeds its region."""
    img, red, _ = touching
    handle = prior.embed([img])[0]
    clicks = {"points": [[110, 120], [20, 20]], "labels": [1, 1]}
    guided = prior.predict(handle, [Prompt(**clicks, mask_logits=mask_to_low_res(red))], multimask=False)
    assert iou(guided.masks[0, 0], red) > 0.9 and guided.masks[0, 0][20, 20]
    fresh = prior.predict(handle, [Prompt(**clicks)], multimask=False)
    assert fresh.masks[0, 0].sum() > 5 * red.sum()  # the background region itself was seeded


@pytest.mark.parametrize("flip_share, flips", [(1.25, True), (0.75, False)])
def test_flip_share_decides_whether_a_contradicting_click_seeds_its_whole_region(
    touching, flip_share: float, flips: bool
) -> None:
    """The earlier answer is the red rectangle; a positive click on the blue one (its region the same
    area as that answer, to within the noise's few stray pixels) seeds the whole blue region only if
    its area is at most `flip_share` of the answer's. A click that agrees with the answer always seeds."""
    img, red, blue = touching
    engine = ClassicalPrior(options=ClassicalOptions(flip_share=flip_share))
    payload = engine.embed([img])[0].payload
    graph = payload.graph
    node_red, node_blue = int(graph.labels[120, 110]), int(graph.labels[120, 210])
    assert abs(graph.areas[node_blue] / graph.areas[node_red] - 1) < 0.1  # hand-made: equal rectangles
    previous = (np.arange(graph.count) == node_red).astype(float)
    prompt = Prompt(points=[[210.5, 120.5], [110.5, 120.5]], labels=[1, 1])
    on_blue, on_red = engine.clicks(payload, prompt, previous)
    assert (on_blue.node, on_red.node) == (node_blue, node_red)
    assert bool(on_blue.seeds_region) == flips and on_red.seeds_region
    # the answer follows: the blue region joins whole, or only the pixels near the click and what the
    # walk draws in at pixel level stay with it
    guided = Prompt(points=prompt.points, labels=prompt.labels, mask_logits=mask_to_low_res(red))
    out = engine.predict(engine.embed([img])[0], [guided], multimask=False)
    assert bool(iou(out.masks[0, 0], red | blue) > 0.9) == flips


def test_click_mask_weight_pulls_only_prompts_that_also_have_points(touching) -> None:
    """`click_mask_weight` replaces `mask_weight` for a mask input that comes with points (the next
    click of a session) and leaves a mask-only prompt (a coarse weak label) to `mask_weight`."""
    img, red, blue = touching
    earlier = mask_to_low_res(red | blue)
    prompts = {
        "points": Prompt(points=[[110.5, 120.5], [210.5, 120.5]], labels=[1, 0], mask_logits=earlier),
        "mask only": Prompt(mask_logits=earlier),
    }
    engines = {
        "default": ClassicalPrior(),
        # -1: prompts with points read mask_weight too (the setting before click_mask_weight existed)
        "mask_weight": ClassicalPrior(options=ClassicalOptions(mask_weight=0.1, click_mask_weight=-1.0)),
        "click_mask_weight": ClassicalPrior(options=ClassicalOptions(click_mask_weight=0.1)),
    }
    logits = {
        (e, p): engine.predict(engine.embed([img])[0], [prompt], multimask=False).low_res_logits
        for e, engine in engines.items()
        for p, prompt in prompts.items()
    }
    assert np.array_equal(logits["click_mask_weight", "points"], logits["mask_weight", "points"])
    assert not np.allclose(logits["click_mask_weight", "points"], logits["default", "points"])
    assert np.array_equal(logits["click_mask_weight", "mask only"], logits["default", "mask only"])
    assert not np.allclose(logits["mask_weight", "mask only"], logits["default", "mask only"])
    for bad in (-0.5, float("nan")):
        with pytest.raises(ValueError, match="click_mask_weight"):
            ClassicalOptions(click_mask_weight=bad).validate()
