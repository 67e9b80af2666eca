"""The weight-free classical prior with SAM's interface: a seeded random walk on superpixels. NOT SAM.

"Embedding" (`_encode`): the image's fine Felzenszwalb regions as a weighted region adjacency
graph and its Laplacian (`models.engine.walker`), about a thousand nodes for a 480x360 image, and
the pixel affinities for the refinement step.

Decoding one prompt solves one sparse system (`walker.random_walk`) for the probability x_i that
region i belongs to the object:

- points are seeds (`clicks`): a positive click fixes its region to 1, a negative click to 0 (a
  later click on the same region wins), except on a region holding clicks of both kinds, or a
  region larger than the whole earlier answer that the click contradicts (`flip_share`): there
  the click fixes only its pixels. Every region is pulled weakly towards background
  (`background_prior`, Grady's flat background prior); border seeds are an option;
- a box fixes every region lying mostly outside it to 0 and pulls the regions inside towards a
  prior: GrabCut-style colour models (object: the box's regions weighted towards its centre;
  background: the regions outside), mixed with the centre prior and refitted on the walk's answer
  `box_refits` times. Answers are clipped to the box. A box alone (no points) answers the walk
  above the two `box_thresholds` and the filled box itself, scored by a predicted IoU that blends
  the walk's expected IoU with a flat fill prior by the doubt small boxes and under-filled answers
  raise (`walker.box_doubt`, `walker.box_candidate_scores`): where the walk is not to be trusted,
  the best-scored answer is the box;
- a first click (one positive point, no box, no mask input) gets an objectness term: colour models
  of the plain walk's answer against the regions on the image border, every region pulled towards
  P(object | colour) (`click_color_weight`), mixed with boundary-connectivity saliency
  (`click_saliency`: a region joined to the image border by gradual colour changes is background,
  Zhu et al., CVPR 2014), so the answer spreads over parts of the object that differ from the
  clicked one but not like the surroundings do; the colour models are refitted on that answer
  `click_refits` times (each refit one more walk);
- mask_logits (an earlier answer, SAM's or ours) pull every region towards it, weight
  `mask_weight` per pixel (`click_mask_weight` where the prompt has points too: the next click of a
  session): this is what makes the next click refine the last answer instead of starting over.

Then the pixels of the regions along the answer's boundary, and of clicked regions, are solved
again at pixel level (`walker.refine_pixels`) with the clicked pixels fixed. The three candidates
are the potentials above `thresholds` (core, middle, most likely); multimask=False answers those
above 0.5. `iou` is the IoU each candidate is expected to have if the potentials were true (it
ranks the candidates); `stability` is SAM's (area above t + offset over area above t - offset,
offset 1 in logit units). Low-res logits (`candidate_logits`) are 0 at the candidate's threshold,
so a candidate fed back as `Prompt.mask_logits` carries the walk's probabilities, not just its mask.

Click and box settings were first chosen on Penn-Fudan's train split, the background treatment and
the thresholds on CamVid train for SeSAM's labels (`benchmarks/classical_sweep.py`); the box-alone,
first-click and later-click (`click_mask_weight`, `flip_share`) settings by cross-validation over
the train splits of Penn-Fudan, COCO-mini and CamVid (`benchmarks/prior_cv.py`; docs/engine.md has
the figures). The previous prior (regions selected whole) stays available as backend
`classical-regions`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
from scipy import sparse

from models.config import from_mapping, setting
from models.engine.base import PRIOR_WORKING_SIDE, CachedSegmenter, stability_score
from models.engine.cache import DEFAULT_CACHE_BYTES
from models.engine.lowres import MASK_LOGIT, low_res_pixels, low_res_to_probability
from models.engine.types import ImageHandle, Predictions, Prompt
from models.engine.walker import (
    RegionGraph,
    boundary_band,
    boundary_connectivity,
    box_candidate_scores,
    box_centre_prior,
    box_doubt,
    box_fraction,
    box_slices,
    color_likelihood,
    edge_weights,
    expected_iou,
    laplacian,
    pixel_affinities,
    random_walk,
    refine_pixels,
    region_graph,
    smooth_lab,
)
from models.runtime.deadline import check_deadline

STABILITY_OFFSET = 1.0 / (2 * MASK_LOGIT)  # SAM's offset of 1.0 logit, in potential units
SINGLE = 0.5  # multimask=False answers the walk's most likely mask: potentials above one half


@dataclass
class ClassicalOptions:
    """Settings of the classical prior (engine option `classical`); chosen on train splits only
    (Penn-Fudan, CamVid; the box-alone, first-click and later-click ones across Penn-Fudan, COCO-mini,
    CamVid)."""

    scale: float = setting(
        60.0, help="Felzenszwalb scale of the graph's regions (smaller: more, finer nodes)"
    )
    sigma: float = setting(0.8, help="Felzenszwalb pre-smoothing")
    edge_weight: float = setting(
        2.0, help="how strongly a colour change across a region boundary cuts the edge (x its image mean)"
    )
    color_weight: float = setting(
        1.0, help="how strongly different mean colours of two regions cut their edge (x its image mean)"
    )
    border_background: bool = setting(
        False, help="without a box, regions on the image border are background seeds"
    )
    background_prior: float = setting(
        0.001,
        help="pull of every region towards background per pixel of area (Grady's flat background "
        "prior): answers fade with graph distance from the clicks even where no seed says stop",
    )
    mask_weight: float = setting(
        0.01, help="pull towards the mask input per pixel of region area (0: mask_logits ignored)"
    )
    click_mask_weight: float = setting(
        0.03,
        help="mask_weight of a prompt with points as well as a mask input (the next click of an "
        "interactive session, the last answer fed back; -1: mask_weight). Mask-only prompts (coarse "
        "weak labels) keep mask_weight",
    )
    box_weight: float = setting(0.03, help="pull towards the box prior per pixel of region area")
    box_color_share: float = setting(
        0.8, help="box prior = share x colour model + (1 - share) x centre prior"
    )
    box_spread: float = setting(0.5, help="centre prior width, in half box sides")
    box_thresholds: tuple[float, float] = setting(
        (0.4, 0.2),
        help="a box alone: the walk's two candidates (potentials above each); the third is the filled box",
    )
    box_trust_side: float = setting(
        64.0,
        help="a box alone: the walk's answer is trusted fully only on boxes at least this many pixels "
        "across (geometric mean side); below, its predicted IoU leans towards the filled box's",
    )
    box_trust_fill: float = setting(
        0.5,
        help="a box alone: the walk's answer is trusted fully only where its most likely candidate "
        "covers at least this share of the box (an object touches all sides of its tight box)",
    )
    box_fill_prior: float = setting(
        0.5,
        help="a box alone: the share of its tight box an object is expected to cover where the walk "
        "is not trusted (the filled box's predicted IoU then)",
    )
    color_bins: int = setting(8, help="colour model bins of L (a and b get twice as many)")
    box_refits: int = setting(1, help="colour models refitted on the walk's answer this many times")
    pixel_refine: bool = setting(
        True, help="solve the pixels of the regions along the answer's boundary again (splits regions)"
    )
    pixel_beta: float = setting(4.0, help="pixel edge sharpness: exp(-beta |dLab|^2 / its image mean)")
    pixel_pull: float = setting(0.05, help="pull of a boundary pixel towards its region's potential")
    click_radius: int = setting(3, help="a click fixes the pixels of its region within this radius")
    flip_share: float = setting(
        0.5,
        help="a click against the earlier answer flips its whole region only if the region is at most "
        "this share of that answer's area (else it fixes its pixels only)",
    )
    clicked_pull: float = setting(
        0.01, help="share of pixel_pull left to a clicked region's pixels (they follow the click)"
    )
    click_color_weight: float = setting(
        0.001,
        help="objectness of a first click (one positive point, no box, no mask input): pull per pixel of "
        "area towards P(object | colour), colour models of the walk's first answer against the regions "
        "on the image border (0: off). Above the first click's background prior the pulls alone put "
        "regions into the answer and it floods (benchmarks/results/first_click_scale.md); with "
        "click_background_prior -1, lowering background_prior lowers the first click's as well",
    )
    click_saliency: float = setting(
        0.5,
        help="share of a first click's objectness target taken from boundary-connectivity saliency "
        "(1 - P(background), `walker.boundary_connectivity`) instead of the colour models (0: colour only; "
        "nothing without click_color_weight)",
    )
    saliency_sigma: float = setting(
        30.0,
        help="colour scale (Lab units summed along a path of touching regions) within which regions "
        "count as one span for boundary connectivity",
    )
    click_refits: int = setting(
        2,
        help="a first click: the objectness colour models refitted on the objectness walk's own answer "
        "this many times (as box_refits; each refit is one more walk)",
    )
    click_background_prior: float = setting(
        -1.0, help="background_prior of a first click (-1: background_prior)"
    )
    click_thresholds: tuple[float, float, float] = setting(
        (0.85, 0.7, 0.5), help="a first click's three candidates (potentials above each)"
    )
    thresholds: tuple[float, float, float] = setting(
        (0.85, 0.7, 0.5),
        help="the three candidates: potentials above each (core, middle, most likely); multimask=False "
        "answers potentials above 0.5",
    )

    def validate(self, source: str = "classical options") -> ClassicalOptions:
        if self.scale <= 0 or self.sigma < 0:
            raise ValueError(f"{source}: scale must be > 0 and sigma >= 0, got {self.scale}, {self.sigma}")
        if (
            min(self.edge_weight, self.color_weight, self.mask_weight, self.box_weight, self.background_prior)
            < 0
        ):
            raise ValueError(
                f"{source}: edge_weight, color_weight, mask_weight, box_weight, background_prior must be >= 0"
            )
        if not 0 <= self.box_color_share <= 1 or self.box_spread <= 0:
            raise ValueError(f"{source}: box_color_share must lie in [0, 1] and box_spread be > 0")
        if self.color_bins < 1 or min(self.box_refits, self.click_refits, self.click_radius) < 0:
            raise ValueError(
                f"{source}: color_bins must be >= 1, box_refits, click_refits and click_radius >= 0"
            )
        if self.pixel_beta < 0 or self.pixel_pull <= 0 or not 0 < self.clicked_pull <= 1:
            raise ValueError(f"{source}: pixel_beta must be >= 0, pixel_pull > 0, clicked_pull in (0, 1]")
        b = tuple(self.box_thresholds)
        if len(b) != 2 or not all(0 < v < 1 for v in b) or not b[0] > b[1]:
            raise ValueError(f"{source}: box_thresholds must be two decreasing values in (0, 1), got {b}")
        if self.box_trust_side < 0 or not 0 <= self.box_trust_fill <= 1 or not 0 < self.box_fill_prior <= 1:
            raise ValueError(
                f"{source}: box_trust_side must be >= 0, box_trust_fill in [0, 1], box_fill_prior in (0, 1]"
            )
        c = tuple(self.click_thresholds)
        if len(c) != 3 or not all(0 < v < 1 for v in c) or not c[0] > c[1] > c[2]:
            raise ValueError(f"{source}: click_thresholds must be three decreasing values in (0, 1), got {c}")
        if self.click_color_weight < 0:
            raise ValueError(f"{source}: click_color_weight must be >= 0")
        if not (self.click_mask_weight >= 0 or self.click_mask_weight == -1):  # NaN fails both
            raise ValueError(f"{source}: click_mask_weight must be >= 0, or -1 (mask_weight)")
        if not 0 <= self.click_saliency <= 1 or not self.saliency_sigma > 0:  # NaN fails both
            raise ValueError(f"{source}: click_saliency must lie in [0, 1] and saliency_sigma be > 0")
        t = tuple(self.thresholds)
        if len(t) != 3 or not all(0 < v < 1 for v in t) or not t[0] > t[1] > t[2]:
            raise ValueError(f"{source}: thresholds must be three decreasing values in (0, 1), got {t}")
        return self


# the options `ClassicalPrior._encode` reads: the cache namespace holds them all
ENCODING_OPTIONS = ("scale", "sigma", "edge_weight", "color_weight", "pixel_beta")


@dataclass(frozen=True)
class WalkerImage:
    """Per-image state: the region graph, its Laplacian under the engine's edge settings, the pixel
    affinities, and which pixels SAM's 256x256 low-res cells sample."""

    graph: RegionGraph
    laplacian: sparse.csr_matrix
    original_size: tuple[int, int]
    horizontal: np.ndarray  # Hx(W-1) pixel affinities
    vertical: np.ndarray  # (H-1)xW pixel affinities
    low_res_pixels: tuple[np.ndarray, np.ndarray]  # rows, cols sampled by the low-res cells
    # saliency_sigma -> N P(background), computed at the image's first first-click prompt (boxes,
    # scribbles, several points and mask inputs never ask)
    background: dict[float, np.ndarray] = field(default_factory=dict, repr=False, compare=False)

    @property
    def nbytes(self) -> int:
        lap = self.laplacian
        arrays = (lap.data, lap.indices, lap.indptr, self.horizontal, self.vertical)
        # one background map counted (one float64 per region): one saliency_sigma per engine
        return self.graph.nbytes + sum(a.nbytes for a in arrays) + 8 * self.graph.count

    def background_probability(self, sigma: float) -> np.ndarray:
        """N P(background) of each region by boundary connectivity at colour scale `sigma`, kept
        with the image (a concurrent first computation only repeats the same work)."""
        if sigma not in self.background:
            self.background[sigma] = boundary_connectivity(self.graph, sigma)
        return self.background[sigma]


@dataclass(frozen=True)
class Click:
    """One point of a prompt: its region, its value (1 object, 0 background), the pixels it fixes
    (`disk` inside the image `window`) and whether the whole region becomes a seed."""

    node: int
    value: float
    window: tuple[slice, slice]
    disk: np.ndarray
    seeds_region: bool


@dataclass
class _Pulls:
    """Soft priors of one prompt: per-region weights and the weighted sum of their targets."""

    weight: np.ndarray
    target: np.ndarray

    def add(self, weight: np.ndarray, target: np.ndarray) -> None:
        self.weight = self.weight + weight
        self.target = self.target + weight * target

    def prior(self) -> np.ndarray:
        return self.target / np.maximum(self.weight, 1e-12)


class ClassicalPrior(CachedSegmenter):
    """Seeded random walk on fine superpixels, with the PromptableSegmenter interface; needs no weights."""

    def __init__(
        self,
        options: ClassicalOptions | dict[str, Any] | None = None,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        max_prompts: int | None = None,
        working_side: int | None = PRIOR_WORKING_SIDE,
    ) -> None:
        super().__init__(cache_bytes=cache_bytes, max_prompts=max_prompts, working_side=working_side)
        if not isinstance(options, ClassicalOptions):
            options = from_mapping(ClassicalOptions, options or {}, "classical options")
        self.options = options.validate()
        self.name = "classical"

    @property
    def namespace(self) -> str:
        """The cache namespace: every option `_encode` reads (`ENCODING_OPTIONS`), so that a cached
        image is never read back under other encoding settings."""
        return ":".join(["classical", *(str(getattr(self.options, k)) for k in ENCODING_OPTIONS)])

    @property
    def answer_key(self) -> str:
        """The namespace and working side, and every option (decoding reads the rest)."""
        return f"{super().answer_key}:{json.dumps(asdict(self.options), sort_keys=True)}"

    def _encode(self, images: list[np.ndarray]) -> list[WalkerImage]:
        o = self.options
        out = []
        for image in images:
            lab = smooth_lab(image)
            graph = region_graph(image, o.scale, o.sigma, lab=lab)
            lap = laplacian(graph.count, graph.edges, edge_weights(graph, o.edge_weight, o.color_weight))
            horizontal, vertical = pixel_affinities(lab[1], o.pixel_beta)
            out.append(
                WalkerImage(
                    graph,
                    lap,
                    graph.labels.shape,
                    horizontal,
                    vertical,
                    low_res_pixels(graph.labels.shape),
                )
            )
        self.stats.encoder_calls += 1
        self.stats.images_encoded += len(images)
        return out

    def _payload_nbytes(self, payload: WalkerImage) -> int:
        return payload.nbytes

    # -- one prompt --------------------------------------------------------------------------
    def _box_prior(
        self, graph: RegionGraph, centre: np.ndarray, inside: np.ndarray, x: np.ndarray | None
    ) -> np.ndarray:
        """N prior of the box: colour models (object weights: the centre prior, or the walk's last
        answer when refitting) mixed with the centre prior (`walker.box_centre_prior`)."""
        o = self.options
        object_weight = inside * (centre if x is None else x)
        colour = color_likelihood(graph.colors, graph.areas, object_weight, 1 - object_weight, o.color_bins)
        return o.box_color_share * colour + (1 - o.box_color_share) * centre

    def previous_answer(self, payload: WalkerImage, prompt: Prompt) -> np.ndarray | None:
        """N mean probability of each region in the mask input (an earlier answer), None without one."""
        if prompt.mask_logits is None:
            return None
        return payload.graph.region_means(low_res_to_probability(prompt.mask_logits, payload.original_size))

    def clicks(self, payload: WalkerImage, prompt: Prompt, previous: np.ndarray | None) -> list[Click]:
        """The prompt's points as clicks: each one's region, the pixels it fixes (its region's pixels
        within `click_radius`), and whether it seeds its whole region.

        A click that contradicts the earlier answer on a region larger than `flip_share` of that
        answer seeds only its pixels: a small error inside a large region that straddles the
        object's edge (e.g. the last few pixels of a boundary) must not flip the whole region.
        Neither does a click on a region that also holds a click of the other kind.
        """
        if prompt.points is None:
            return []
        graph, (h, w), r = payload.graph, payload.original_size, self.options.click_radius
        answer_area = None if previous is None else float(graph.areas[previous > 0.5].sum())
        out = []
        for (px, py), label in zip(prompt.points, prompt.labels):
            cx, cy = min(max(int(px), 0), w - 1), min(max(int(py), 0), h - 1)
            top, left = max(0, cy - r), max(0, cx - r)
            window = slice(top, min(h, cy + r + 1)), slice(left, min(w, cx + r + 1))
            node = int(graph.labels[cy, cx])
            yy, xx = np.ogrid[window]
            disk = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r) & (graph.labels[window] == node)
            value = float(label == 1)
            seeds_region = (
                previous is None
                or (previous[node] > 0.5) == bool(value)
                or graph.areas[node] <= self.options.flip_share * max(answer_area, 1.0)
            )
            out.append(Click(node, value, window, disk, seeds_region))
        # a region holding clicks of both kinds straddles the boundary by definition: its pixels
        # are split by the clicks at pixel level, the region itself seeds nothing
        values: dict[int, set[float]] = {}
        for click in out:
            values.setdefault(click.node, set()).add(click.value)
        return [replace(c, seeds_region=c.seeds_region and len(values[c.node]) == 1) for c in out]

    def potentials(
        self, payload: WalkerImage, prompt: Prompt, clicks: list[Click], previous: np.ndarray | None
    ) -> np.ndarray:
        """N probabilities that each region belongs to the object the prompt points at."""
        o = self.options
        graph = payload.graph
        seeds = np.full(graph.count, np.nan)
        pulls = _Pulls(np.zeros(graph.count), np.zeros(graph.count))
        inside = None
        if prompt.box is not None:
            inside = box_fraction(graph, prompt.box)
            seeds[inside < 0.5] = 0.0
        elif o.border_background:
            seeds[graph.on_border] = 0.0
        mask_weight = o.mask_weight
        if prompt.points is not None and o.click_mask_weight >= 0:
            mask_weight = o.click_mask_weight
        if previous is not None and mask_weight > 0:
            pulls.add(mask_weight * graph.areas, previous)
        first = self.first_click(prompt)
        background = o.background_prior
        if first and o.click_background_prior >= 0:
            background = o.click_background_prior
        if background > 0:
            pulls.add(background * graph.areas, np.zeros(graph.count))
        for click in clicks:  # in order: a later click on the same region wins
            if click.seeds_region:
                seeds[click.node] = click.value
        if first and o.click_color_weight > 0:
            return self._objectness_walk(payload, seeds, pulls)
        if inside is None or o.box_weight == 0:
            return random_walk(payload.laplacian, seeds, pulls.weight, pulls.prior())
        x = None
        centre = box_centre_prior(graph, prompt.box, o.box_spread)
        for _ in range(1 + o.box_refits):
            both = _Pulls(pulls.weight, pulls.target)
            both.add(o.box_weight * graph.areas, self._box_prior(graph, centre, inside, x))
            x = random_walk(payload.laplacian, seeds, both.weight, both.prior())
        return x

    def candidate_thresholds(self, prompt: Prompt) -> tuple[float, ...]:
        """The potentials the prompt's candidates are cut at: a box alone `box_thresholds` (the third
        candidate is the filled box), a first click `click_thresholds`, anything else `thresholds`."""
        o = self.options
        if prompt.box is not None and prompt.points is None:
            return tuple(o.box_thresholds)
        return tuple(o.click_thresholds if self.first_click(prompt) else o.thresholds)

    @staticmethod
    def first_click(prompt: Prompt) -> bool:
        """One positive point, no box, no mask input: the prompt gives no scale and no background."""
        return (
            prompt.box is None
            and prompt.mask_logits is None
            and prompt.points is not None
            and len(prompt.points) == 1
            and int(prompt.labels[0]) == 1
        )

    def _objectness_walk(self, payload: WalkerImage, seeds: np.ndarray, pulls: _Pulls) -> np.ndarray:
        """A first click's walk with an objectness term: the plain walk's answer is the object's
        colour model, the regions on the image border the background's (weighted by how little the
        answer holds them), and every region is pulled towards P(object | its colour) with weight
        `click_color_weight` per pixel. Colours unlike the border's are not pulled down, so the answer
        spreads over the parts of an object that differ from the click's region (a person's trousers
        from a shirt) and stops at what looks like the surroundings. The target mixes in, by
        `click_saliency`, how little each region is joined to the image border by gradual colour
        changes (`walker.boundary_connectivity`): trousers whose colour also occurs on the border are
        still cut off from it by the street around them. The colour models are then refitted on the
        objectness walk's own answer `click_refits` times, a walk each (as GrabCut refits)."""
        o = self.options
        graph = payload.graph
        x = random_walk(payload.laplacian, seeds, pulls.weight, pulls.prior())
        salient = 1.0 - payload.background_probability(o.saliency_sigma) if o.click_saliency > 0 else 0.0
        for _ in range(1 + o.click_refits):
            target = color_likelihood(graph.colors, graph.areas, x, graph.on_border * (1 - x), o.color_bins)
            target = (1 - o.click_saliency) * target + o.click_saliency * salient
            both = _Pulls(pulls.weight, pulls.target)
            both.add(o.click_color_weight * graph.areas, target)
            x = random_walk(payload.laplacian, seeds, both.weight, both.prior())
        return x

    def pixel_potentials(
        self, payload: WalkerImage, prompt: Prompt, clicks: list[Click], x: np.ndarray
    ) -> np.ndarray:
        """HxW potentials: the regions' painted, the pixels of regions along any candidate's boundary
        (and of clicked regions) solved again at pixel level (`walker.refine_pixels`), clicked pixels
        fixed, 0 outside a box."""
        o = self.options
        graph = payload.graph
        h, w = payload.original_size
        values = graph.paint(x)
        fixed = np.zeros((h, w), dtype=bool)
        if prompt.box is not None:
            fixed[:] = True
            fixed[box_slices(prompt.box, (h, w))] = False  # outside the box: background, fixed
            values[fixed] = 0.0
        if not o.pixel_refine:
            return values
        band = np.zeros(graph.count, dtype=bool)
        for t in {*self.candidate_thresholds(prompt), SINGLE}:
            band |= boundary_band(graph, x, t)
        # a clicked region's potential is its seed, not evidence about its pixels: they follow the
        # click and their neighbours alone (a click on a region that straddles the object's edge
        # must not flip the whole region)
        pull = np.full(graph.count, o.pixel_pull)
        for click in clicks:
            values[click.window][click.disk] = click.value
            fixed[click.window] |= click.disk
            band[click.node] = True
            pull[click.node] = o.pixel_pull * o.clicked_pull
        free = band[graph.labels] & ~fixed
        return refine_pixels(values, free, payload.horizontal, payload.vertical, pull[graph.labels])

    def _decode(self, handle: ImageHandle, prompts: list[Prompt], multimask: bool) -> Predictions:
        payload: WalkerImage = handle.payload
        rows, cols = payload.low_res_pixels
        out = Predictions.zeros(len(prompts), payload.original_size, multimask, logit=-MASK_LOGIT)
        for i, prompt in enumerate(prompts):
            check_deadline()  # a request past its deadline stops here, between prompts
            previous = self.previous_answer(payload, prompt)
            clicks = self.clicks(payload, prompt, previous)
            x = self.potentials(payload, prompt, clicks, previous)
            y = self.pixel_potentials(payload, prompt, clicks, x)
            if prompt.box is not None and prompt.points is None:
                self._box_answer(out, i, y, prompt.box, multimask, (rows, cols))
                continue
            small = y[rows][:, cols]
            for j, t in enumerate(self.candidate_thresholds(prompt) if multimask else (SINGLE,)):
                out.masks[i, j] = y > t
                out.low_res_logits[i, j, : len(rows), : len(cols)] = candidate_logits(small, t)
                out.iou[i, j] = expected_iou(y, None, out.masks[i, j])  # every pixel weighs one
                out.stability[i, j] = stability_score(y, t, STABILITY_OFFSET)
        self.stats.decoder_calls += 1
        self.stats.prompts_decoded += len(prompts)
        return out

    def box_candidates(self, y: np.ndarray, box: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A box alone: (3xHxW candidates, their predicted IoU). The walk's answers above the two
        `box_thresholds` and the filled box (clipped to the image), scored by
        `walker.box_candidate_scores`: the walk's expected IoU blended with a flat fill prior by the
        doubt the box's size and the walk's fill of it raise (`walker.box_doubt`)."""
        o = self.options
        window = box_slices(box, y.shape)
        candidates = np.zeros((3, *y.shape), bool)
        for k, t in enumerate(o.box_thresholds):
            candidates[k] = y > t
        candidates[2][window] = True
        inside = y[window]
        if inside.size == 0:
            return candidates, np.zeros(3)
        side = float(np.sqrt(inside.size))
        doubt = box_doubt(
            side, float((inside > o.box_thresholds[-1]).mean()), o.box_trust_side, o.box_trust_fill
        )
        scores = box_candidate_scores(inside, candidates[:, window[0], window[1]], doubt, o.box_fill_prior)
        return candidates, scores

    def _box_answer(
        self,
        out: Predictions,
        i: int,
        y: np.ndarray,
        box: np.ndarray,
        multimask: bool,
        low_res: tuple[np.ndarray, np.ndarray],
    ) -> None:
        """Fill prompt i of `out` with a box's candidates (multimask: all three; else the
        best-scored one). The filled box's low-res logits are +/-MASK_LOGIT, its stability 1."""
        rows, cols = low_res
        candidates, scores = self.box_candidates(y, box)
        thresholds = (*self.options.box_thresholds, None)
        order = range(3) if multimask else [int(np.argmax(scores))]
        small = y[rows][:, cols]
        for j, k in enumerate(order):
            out.masks[i, j] = candidates[k]
            out.iou[i, j] = scores[k]
            if thresholds[k] is None:
                filled = candidates[k][rows][:, cols]
                out.low_res_logits[i, j, : len(rows), : len(cols)] = np.where(filled, MASK_LOGIT, -MASK_LOGIT)
                out.stability[i, j] = 1.0
            else:
                out.low_res_logits[i, j, : len(rows), : len(cols)] = candidate_logits(small, thresholds[k])
                out.stability[i, j] = stability_score(y, thresholds[k], STABILITY_OFFSET)


def candidate_logits(x: np.ndarray, threshold: float) -> np.ndarray:
    """Potentials as logits of the candidate `x > threshold`: 0 at the threshold, +/-MASK_LOGIT at
    1 and 0, linear in between on each side. Read back (`low_res_to_probability`) they give the
    potentials remapped so that this candidate's boundary is the 0.5 level: the accepted answer."""
    above = MASK_LOGIT * (x - threshold) / (1 - threshold)
    below = MASK_LOGIT * (x - threshold) / threshold
    return np.where(x > threshold, above, below).astype(np.float32)
