"""Point sampling inside one instance mask (SeSAM step 3 and the paper's ablation samplers).

Every sampler: (component HxW bool, k, rng, confidence HxW float | None) -> Kx2 float (x, y) pixel
coordinates, all inside the component. Pure numpy/scipy; no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from scipy import ndimage as ndi

EIGHT = np.ones((3, 3), dtype=bool)


def connected_components(mask: np.ndarray, min_area: int = 1) -> list[np.ndarray]:
    """8-connected components of a bool mask with at least `min_area` pixels, largest first."""
    labelled, n = ndi.label(mask, structure=EIGHT)
    if n == 0:
        return []
    areas = np.bincount(labelled.ravel(), minlength=n + 1)
    boxes = ndi.find_objects(labelled)
    out = []
    for k in np.argsort(-areas[1:]) + 1:
        if areas[k] >= min_area:
            part = np.zeros(mask.shape, dtype=bool)  # compared only inside its own bounding box
            part[boxes[k - 1]] = labelled[boxes[k - 1]] == k
            out.append(part)
    return out


def grid_shape(s1: int, s2: int, k: int) -> tuple[int, int]:
    """Grid over an s1 x s2 box for k samples: ceil(s1/sqrt(S/K)) x ceil(s2/sqrt(S/K)), S = s1*s2."""
    if s1 <= 0 or s2 <= 0 or k <= 0:
        raise ValueError(f"grid_shape needs positive sides and k, got {s1}x{s2}, k={k}")
    cell = math.sqrt(s1 * s2 / k)
    return math.ceil(s1 / cell), math.ceil(s2 / cell)


def distance_to_background(component: np.ndarray) -> np.ndarray:
    """Euclidean distance to the nearest background pixel; the image border counts as background.

    Computed on the component's bounding box (plus a background margin), which gives the same
    distances as the full image at a fraction of the cost."""
    out = np.zeros(component.shape, dtype=np.float64)
    if not component.any():
        return out
    r0, r1, c0, c1 = bbox = _bbox(component)
    out[r0:r1, c0:c1] = _box_distance(component, bbox)
    return out


def _box_distance(component: np.ndarray, bbox: tuple[int, int, int, int]) -> np.ndarray:
    """distance_to_background inside the component's bounding box (r0, r1, c0, c1) only."""
    r0, r1, c0, c1 = bbox
    return ndi.distance_transform_edt(np.pad(component[r0:r1, c0:c1], 1))[1:-1, 1:-1]


def _bbox(component: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.flatnonzero(component.any(1)), np.flatnonzero(component.any(0))
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def grid_cells(
    component: np.ndarray, k: int, bbox: tuple[int, int, int, int] | None = None
) -> list[tuple[slice, slice]]:
    """The cells of the component's bounding-box grid (grid_shape) as absolute slices, row-major.
    `bbox` (r0, r1, c0, c1) saves recomputing the component's bounding box."""
    r0, r1, c0, c1 = bbox if bbox is not None else _bbox(component)
    n1, n2 = grid_shape(r1 - r0, c1 - c0, k)
    rows = np.linspace(r0, r1, n1 + 1).round().astype(int)
    cols = np.linspace(c0, c1, n2 + 1).round().astype(int)
    return [
        (slice(rows[i], rows[i + 1]), slice(cols[j], cols[j + 1]))
        for i in range(n1)
        for j in range(n2)
        if rows[i + 1] > rows[i] and cols[j + 1] > cols[j]
    ]


def sample_skeleton_grid(
    component: np.ndarray, k: int, rng: np.random.Generator, confidence: np.ndarray | None = None
) -> np.ndarray:
    """SeSAM: K grid cells that intersect the component, one point per cell drawn with probability
    proportional to the normalised distance transform inside that cell. Fewer cells -> fewer points."""
    bbox = _bbox(component)
    r0, c0 = bbox[0], bbox[2]
    # the grid and the distance transform live in the bounding box: same values, less work
    dist = _box_distance(component, bbox)
    prob = dist / dist.max()
    cells = [
        (slice(rs.start - r0, rs.stop - r0), slice(cs.start - c0, cs.stop - c0))
        for rs, cs in grid_cells(component, k, bbox)
    ]
    cells = [cell for cell in cells if prob[cell].sum() > 0]
    chosen = rng.choice(len(cells), size=min(k, len(cells)), replace=False)
    points = []
    for i in sorted(chosen):
        rs, cs = cells[i]
        local = prob[rs, cs].ravel()
        flat = rng.choice(local.size, p=local / local.sum())
        y, x = divmod(int(flat), cs.stop - cs.start)
        points.append((c0 + cs.start + x, r0 + rs.start + y))
    return np.asarray(points, dtype=np.float64).reshape(-1, 2)


def sample_random(
    component: np.ndarray, k: int, rng: np.random.Generator, confidence: np.ndarray | None = None
) -> np.ndarray:
    """Uniform over the component's pixels, without replacement."""
    ys, xs = np.nonzero(component)
    idx = rng.choice(len(ys), size=min(k, len(ys)), replace=False)
    return np.column_stack([xs[idx], ys[idx]]).astype(np.float64)


def _top_k(values: np.ndarray, component: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    ys, xs = np.nonzero(component)
    v = values[ys, xs] + rng.uniform(0, 1e-9, size=len(ys))  # random tie-breaking
    idx = np.argsort(-v)[: min(k, len(ys))]
    return np.column_stack([xs[idx], ys[idx]]).astype(np.float64)


def sample_center(
    component: np.ndarray, k: int, rng: np.random.Generator, confidence: np.ndarray | None = None
) -> np.ndarray:
    """The k pixels nearest the distance-transform maxima (largest distance to the background)."""
    return _top_k(distance_to_background(component), component, k, rng)


def sample_boundary(
    component: np.ndarray,
    k: int,
    rng: np.random.Generator,
    confidence: np.ndarray | None = None,
    band: float = 2.0,
) -> np.ndarray:
    """Uniform among pixels within `band` px of the boundary."""
    edge = component & (distance_to_background(component) <= band)
    return sample_random(edge if edge.any() else component, k, rng)


def sample_confidence(
    component: np.ndarray, k: int, rng: np.random.Generator, confidence: np.ndarray | None = None
) -> np.ndarray:
    """The k most confident pixels of a teacher's confidence map (Kweon and Yoon, 2024)."""
    if confidence is None:
        raise ValueError("sampling 'confidence' needs a confidence map (a teacher's probabilities)")
    return _top_k(confidence, component, k, rng)


# sampling rule -> sampler (component, k, rng, confidence=None) -> Kx2 points, read through `lookup`
SAMPLERS: dict[str, Callable[..., np.ndarray]] = {
    "skeleton-grid": sample_skeleton_grid,
    "random": sample_random,
    "center": sample_center,
    "boundary": sample_boundary,
    "confidence": sample_confidence,
}
# samplers that need a teacher's confidence map: training only (sesam refine refuses them)
TRAINING_ONLY_SAMPLERS = frozenset({"confidence"})


def even_points_along(points: np.ndarray, n: int) -> np.ndarray:
    """At most n points spread evenly (by index) along an ordered polyline or point list."""
    if len(points) <= n:
        return points
    idx = np.linspace(0, len(points) - 1, n).round().astype(int)
    return points[idx]
