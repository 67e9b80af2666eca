"""Instance-level weak labels from instance ground truth, and WISH's budget protocol (paper 002, Eq. 21).

Protocols (pure, deterministic by (seed, stem)), each answering `WeakLabels(instances=True)`:

- `points`: one point per instance, drawn uniformly from its interior: the pixels whose distance
  to the instance's outline is at least `interior` (0.5) of the instance's largest such distance,
  the way an annotator clicks well inside an object rather than on its edge.
- `boxes`: the tight box of every instance ([x0, y0, x1, y1), pixel edges).
- `tags`: the classes present.

Budget (Eq. 21): an image labelled with tags costs beta_t, with points beta_p, with boxes beta_b
(1 : 6 : 12, the paper's Amazon Mechanical Turk estimate). A target (N_t, N_p, N_b) fits a budget
zeta when N_t beta_t + N_p beta_p + N_b beta_b <= zeta; `assign_label_kinds` gives each of the
first N_t + N_p + N_b images of a seeded permutation one kind (the rest stay unlabelled, and are
not trained on).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi

from models.labels.schema import BoxLabel, PointLabel, WeakLabels
from training.protocols import stem_rng, tight_box

INSTANCE_KINDS = ("tags", "points", "boxes")
COSTS = {"tags": 1, "points": 6, "boxes": 12}  # beta_t : beta_p : beta_b (paper 002, Sec. 5.4)


def interior_point(mask: np.ndarray, rng: np.random.Generator, interior: float = 0.5) -> tuple[int, int]:
    """(x, y) of a random pixel deep inside `mask` (distance to the outline >= interior x its maximum)."""
    depth = ndi.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    ys, xs = np.nonzero(depth >= interior * depth.max())
    i = int(rng.integers(len(ys)))
    return int(xs[i]), int(ys[i])


def derive_instance_labels(
    kind: str,
    masks: Sequence[np.ndarray],
    class_ids: Sequence[int],
    size: tuple[int, int],
    seed: int = 0,
    stem: str = "",
    interior: float = 0.5,
) -> WeakLabels:
    """Weak labels of one kind (tags, points, boxes) from one image's instance masks."""
    if kind not in INSTANCE_KINDS:
        raise ValueError(f"instance weak-label kind {kind!r} unknown; choose one of {INSTANCE_KINDS}")
    h, w = size
    weak = WeakLabels(h, w, instances=True, tags=sorted({int(c) for c in class_ids}))
    if kind == "points":
        rng = stem_rng(seed, stem)
        for mask, c in zip(masks, class_ids):
            x, y = interior_point(mask, rng, interior)
            weak.points.append(PointLabel(float(x), float(y), int(c)))
    elif kind == "boxes":
        weak.boxes.extend(BoxLabel(int(c), tight_box(m)) for m, c in zip(masks, class_ids))
    return weak


def budget_cost(counts: Sequence[int], costs: dict[str, int] = COSTS) -> int:
    """Eq. 21's left side: N_t beta_t + N_p beta_p + N_b beta_b."""
    return int(sum(n * costs[k] for n, k in zip(counts, INSTANCE_KINDS)))


def homogeneous_counts(kind: str, budget: int, costs: dict[str, int] = COSTS) -> tuple[int, int, int]:
    """The homogeneous extreme of a budget: as many images of `kind` as it pays for."""
    if kind not in INSTANCE_KINDS:
        raise ValueError(f"kind {kind!r} unknown; choose one of {INSTANCE_KINDS}")
    return tuple(budget // costs[k] if k == kind else 0 for k in INSTANCE_KINDS)  # type: ignore[return-value]


def assign_label_kinds(
    num_images: int,
    counts: Sequence[int],
    budget: int | None = None,
    seed: int = 0,
    costs: dict[str, int] = COSTS,
) -> list[str | None]:
    """Each image's label kind for the target counts (N_t, N_p, N_b): a seeded permutation of the
    images, the first N_t get tags, the next N_p points, the next N_b boxes, the rest None. Raises
    when the target costs more than `budget` or asks for more images than there are."""
    if len(counts) != 3 or any(int(n) < 0 for n in counts):
        raise ValueError(f"label counts {list(counts)} must be three non-negative numbers (N_t, N_p, N_b)")
    total, cost = int(sum(counts)), budget_cost(counts, costs)
    if total > num_images:
        raise ValueError(f"label counts {list(counts)} ask for {total} images; the set has {num_images}")
    if budget is not None and cost > budget:
        raise ValueError(
            f"label counts {list(counts)} cost {cost} (tag:point:box = "
            f"{costs['tags']}:{costs['points']}:{costs['boxes']}), over the budget of {budget}"
        )
    order = np.random.default_rng(seed).permutation(num_images)
    kinds: list[str | None] = [None] * num_images
    start = 0
    for kind, n in zip(INSTANCE_KINDS, counts):
        for i in order[start : start + int(n)]:
            kinds[int(i)] = kind
        start += int(n)
    return kinds
