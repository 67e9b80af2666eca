"""Protocols that derive weak labels from dense ground truth, deterministic by seed.

All functions are pure: a dense HxW class map with an ignore index in, `WeakLabels` out.
Regions are 8-connected components of one class. Parameters and their defaults:

- points (Paul et al.): one pixel per class present, drawn uniformly from that class's pixels.
- scribbles: for every region of at least `min_area` pixels, one stroke along its skeleton: the
  region is shrunk by `margin` px (kept whole if that empties it), thinned to its skeleton (the
  medial axis when thinning collapses a blocky shape to a dot), and the longest path through it becomes a polyline (a vertex every `step` px) drawn `width` px thick.
- coarse: every region of at least `min_area` px is shrunk by a margin that grows with its size
  (`margin_frac` * sqrt(area), clipped to [`margin_min`, `margin_max`] px), its outline simplified
  to a polygon (Douglas-Peucker, `tolerance` px) and filled; smaller regions are dropped. This
  imitates Cityscapes coarse labels: labelled pixels are almost always right, about half to two
  thirds of the image is labelled, small objects are missed.
- boxes: the bounding box of every region of at least `min_area` px.
- tags: the classes present.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import ndimage as ndi
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import shortest_path
from skimage import measure, morphology
from skimage.draw import polygon2mask

from models.config import lookup
from models.io import UNLABELED
from models.labels.schema import BoxLabel, PointLabel, Scribble, WeakLabels

WEAK_KINDS = ("points", "scribbles", "coarse", "boxes", "tags")
EIGHT = np.ones((3, 3), dtype=bool)


def class_ids_present(gt: np.ndarray, ignore_index: int | None) -> list[int]:
    return [int(c) for c in np.unique(gt) if c != ignore_index and c != UNLABELED]


def regions(gt: np.ndarray, ignore_index: int | None, min_area: int = 1) -> list[tuple[int, np.ndarray]]:
    """(class id, HxW bool) for every 8-connected region of one class with at least min_area pixels."""
    out = []
    for c in class_ids_present(gt, ignore_index):
        labelled, n = ndi.label(gt == c, structure=EIGHT)
        if n == 0:
            continue
        areas = np.bincount(labelled.ravel(), minlength=n + 1)
        for k in np.flatnonzero(areas[1:] >= min_area) + 1:
            out.append((c, labelled == k))
    return out


def derive_points(gt: np.ndarray, ignore_index: int | None, rng: np.random.Generator) -> WeakLabels:
    h, w = gt.shape
    points = []
    for c in class_ids_present(gt, ignore_index):
        ys, xs = np.nonzero(gt == c)
        i = int(rng.integers(len(ys)))
        points.append(PointLabel(float(xs[i]), float(ys[i]), c))
    return WeakLabels(h, w, points=points)


def longest_skeleton_path(skeleton: np.ndarray) -> np.ndarray:
    """Ordered (row, col) pixels of the longest shortest path in an 8-connected skeleton."""
    coords = np.argwhere(skeleton)
    if len(coords) <= 2:
        return coords
    index = -np.ones(skeleton.shape, dtype=np.int64)
    index[skeleton] = np.arange(len(coords))
    rows, cols, weights = [], [], []
    h, w = skeleton.shape
    for dy, dx in ((0, 1), (1, -1), (1, 0), (1, 1)):
        ys, xs = coords[:, 0] + dy, coords[:, 1] + dx
        ok = (ys >= 0) & (ys < h) & (xs >= 0) & (xs < w)
        nb = np.full(len(coords), -1)
        nb[ok] = index[ys[ok], xs[ok]]
        keep = nb >= 0
        rows.append(np.flatnonzero(keep))
        cols.append(nb[keep])
        weights.append(np.full(keep.sum(), np.hypot(dy, dx)))
    r, c, wt = np.concatenate(rows), np.concatenate(cols), np.concatenate(weights)
    graph = coo_matrix((wt, (r, c)), shape=(len(coords), len(coords))).tocsr()
    # Tree diameter by two sweeps; on a skeleton with loops this is still a long, valid path.
    dist = shortest_path(graph, directed=False, indices=0)
    start = int(np.nanargmax(np.where(np.isfinite(dist), dist, -1)))
    dist, pred = shortest_path(graph, directed=False, indices=start, return_predecessors=True)
    end = int(np.nanargmax(np.where(np.isfinite(dist), dist, -1)))
    path = [end]
    while path[-1] != start and pred[path[-1]] >= 0:
        path.append(int(pred[path[-1]]))
    return coords[path[::-1]]


def derive_scribbles(
    gt: np.ndarray,
    ignore_index: int | None,
    rng: np.random.Generator | None = None,
    min_area: int = 100,
    margin: int = 3,
    width: int = 3,
    step: int = 4,
) -> WeakLabels:
    h, w = gt.shape
    scribbles = []
    for c, region in regions(gt, ignore_index, min_area):
        shrunk = ndi.binary_erosion(region, structure=morphology.disk(margin)) if margin else region
        if not shrunk.any():
            shrunk = region
        path = longest_skeleton_path(morphology.skeletonize(shrunk))
        if len(path) < 0.3 * np.sqrt(shrunk.sum()):  # thinning collapsed a blocky shape to a dot
            path = longest_skeleton_path(morphology.medial_axis(shrunk, rng=0))
        if len(path) == 0:
            continue
        vertices = path[::step]
        if len(path) > 1 and not np.array_equal(vertices[-1], path[-1]):
            vertices = np.vstack([vertices, path[-1:]])
        scribbles.append(Scribble(c, vertices[:, ::-1].astype(np.float64), width))
    return WeakLabels(h, w, scribbles=scribbles)


def simplified_polygon_mask(mask: np.ndarray, tolerance: float) -> np.ndarray:
    """Fill the Douglas-Peucker simplification of every outline of `mask` (holes by even-odd rule)."""
    padded = np.pad(mask, 1).astype(np.float32)
    out = np.zeros(mask.shape, dtype=bool)
    for contour in measure.find_contours(padded, 0.5):
        poly = measure.approximate_polygon(contour - 1, tolerance=tolerance)
        if len(poly) >= 3:
            out ^= polygon2mask(mask.shape, poly)
    return out


def derive_coarse(
    gt: np.ndarray,
    ignore_index: int | None,
    rng: np.random.Generator | None = None,
    min_area: int = 400,
    margin_frac: float = 0.08,
    margin_min: int = 3,
    margin_max: int = 12,
    tolerance: float = 3.0,
) -> WeakLabels:
    h, w = gt.shape
    coarse = np.full((h, w), UNLABELED, dtype=np.uint8)
    for c, region in sorted(regions(gt, ignore_index, min_area), key=lambda r: -int(r[1].sum())):
        margin = int(np.clip(round(margin_frac * np.sqrt(region.sum())), margin_min, margin_max))
        shrunk = ndi.binary_erosion(region, structure=morphology.disk(margin))
        if shrunk.sum() < 16:
            continue
        coarse[simplified_polygon_mask(shrunk, tolerance)] = c
    return WeakLabels(h, w, coarse=coarse)


def tight_box(mask: np.ndarray) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) pixel edges of a non-empty HxW bool mask."""
    ys, xs = np.nonzero(mask)
    return float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)


def derive_boxes(
    gt: np.ndarray, ignore_index: int | None, rng: np.random.Generator | None = None, min_area: int = 100
) -> WeakLabels:
    h, w = gt.shape
    boxes = []
    for c, region in regions(gt, ignore_index, min_area):
        boxes.append(BoxLabel(c, tight_box(region)))
    return WeakLabels(h, w, boxes=boxes)


def derive_tags(
    gt: np.ndarray, ignore_index: int | None, rng: np.random.Generator | None = None
) -> WeakLabels:
    h, w = gt.shape
    return WeakLabels(h, w, tags=class_ids_present(gt, ignore_index))


# weak-label kind -> its protocol (gt, ignore_index, rng) -> WeakLabels, read through `lookup`
PROTOCOLS: dict[str, Callable[..., WeakLabels]] = {
    "points": derive_points,
    "scribbles": derive_scribbles,
    "coarse": derive_coarse,
    "boxes": derive_boxes,
    "tags": derive_tags,
}


def derive(kind: str, gt: np.ndarray, ignore_index: int | None, seed: int = 0, stem: str = "") -> WeakLabels:
    """Weak labels of one kind for one image; the rng is seeded by (seed, stem) so runs are reproducible."""
    return lookup(PROTOCOLS, kind, "weak-label kind")(gt, ignore_index, stem_rng(seed, stem))


def stem_rng(seed: int, stem: str) -> np.random.Generator:
    """The generator of one image's protocol draws: seeded by (seed, the stem's last 8 bytes)."""
    stem_seed = int.from_bytes(stem.encode()[-8:].rjust(8, b"\0"), "little") if stem else 0
    return np.random.default_rng([seed, stem_seed])
