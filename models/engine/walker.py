"""Seeded random walks on a region adjacency graph: the solver behind the classical prior.

The graph's nodes are fine superpixels (Felzenszwalb), its edges join regions that touch. An edge
is strong when the two regions look alike and the pixels across their shared boundary change
little:

    w_ij = len_ij * exp(-edge_weight * e_ij / mean(e) - color_weight * d_ij / mean(d))

with len_ij the shared boundary in pixels, e_ij the mean Lab difference across it (after a small
blur) and d_ij the distance between the regions' mean Lab colours (Grady's random walker, on
regions instead of pixels). Seeds fix a node to 1 (object) or 0 (background); soft priors pull a
node towards a probability p_i with a weight proportional to its area (a previous answer, a box's
colour model). The walk minimises

    sum_ij w_ij (x_i - x_j)^2 + sum_i lambda_i a_i (x_i - p_i)^2,   x_seed fixed,

a sparse symmetric positive-definite system over the unseeded nodes (a thousand or so), solved
directly in milliseconds. Everything here is pure numpy / scipy on arrays: no I/O, no images
beyond the one passed in.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from scipy import sparse
from scipy.sparse import csgraph
from scipy.sparse.linalg import cg, spsolve
from skimage.color import rgb2lab
from skimage.segmentation import felzenszwalb
from threadpoolctl import ThreadpoolController

LEAK = 1e-6  # a vanishing pull towards 0 so that a component without seeds stays solvable
PIXEL_TOLERANCE = 1e-4  # relative residual of the pixel-level solve
PIXEL_ITERATIONS = 200
BLAS = ThreadpoolController()


@dataclass(frozen=True)
class RegionGraph:
    """One image as a graph. N regions, E undirected edges.

    labels: HxW int32 region ids 0..N-1; areas: N pixels; colors: Nx3 mean Lab; centroids: Nx2 (x, y); edges: Ex2 int (i < j); boundary: E shared boundary length in pixel pairs; edge_contrast:
    E mean Lab difference across the boundary; color_distance: E |mean Lab_i - mean Lab_j|;
    on_border: N bool, the region touches the image border.
    """

    labels: np.ndarray
    areas: np.ndarray
    colors: np.ndarray
    centroids: np.ndarray
    edges: np.ndarray
    boundary: np.ndarray
    edge_contrast: np.ndarray
    color_distance: np.ndarray
    on_border: np.ndarray

    @property
    def count(self) -> int:
        return len(self.areas)

    @property
    def nbytes(self) -> int:
        return sum(
            getattr(self, f).nbytes
            for f in (
                "labels",
                "areas",
                "colors",
                "centroids",
                "edges",
                "boundary",
                "edge_contrast",
                "color_distance",
                "on_border",
            )
        )

    def region_means(self, values: np.ndarray) -> np.ndarray:
        """Per-region mean of an HxW float map (N)."""
        sums = np.bincount(self.labels.ravel(), weights=values.ravel(), minlength=self.count)
        return sums / np.maximum(self.areas, 1)

    def paint(self, node_values: np.ndarray) -> np.ndarray:
        """HxW map of a per-region value."""
        return node_values[self.labels]


def smooth_lab(image: np.ndarray, blur: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(Lab, Lab blurred by a Gaussian of `blur` pixels) of an HxWx3 uint8 image, float32."""
    lab = rgb2lab(image).astype(np.float32)
    return lab, (ndi.gaussian_filter(lab, sigma=(blur, blur, 0)) if blur > 0 else lab)


def region_graph(
    image: np.ndarray,
    scale: float = 60,
    sigma: float = 0.8,
    blur: float = 1.0,
    lab: tuple[np.ndarray, np.ndarray] | None = None,
) -> RegionGraph:
    """Felzenszwalb regions of an HxWx3 uint8 image (min size scale/2) as a RegionGraph; `lab` is
    `smooth_lab(image, blur)` when the caller has it already."""
    h, w = image.shape[:2]
    seg = felzenszwalb(image, scale=scale, sigma=sigma, min_size=max(1, int(scale) // 2))
    seg = np.unique(seg, return_inverse=True)[1].reshape(h, w).astype(np.int32)
    count = int(seg.max()) + 1
    lab, smooth = lab if lab is not None else smooth_lab(image, blur)
    flat = seg.ravel()
    areas = np.bincount(flat, minlength=count).astype(np.float64)
    colors = (
        np.stack([np.bincount(flat, weights=lab[..., k].ravel(), minlength=count) for k in range(3)], 1)
        / np.maximum(areas, 1)[:, None]
    )
    rows, cols = np.indices((h, w))
    centroids = (
        np.stack(
            [
                np.bincount(flat, weights=cols.ravel(), minlength=count),
                np.bincount(flat, weights=rows.ravel(), minlength=count),
            ],
            1,
        )
        / np.maximum(areas, 1)[:, None]
    )

    # every pair of 4-neighbours in different regions is one unit of shared boundary
    a = np.concatenate([seg[:, :-1].ravel(), seg[:-1, :].ravel()])
    b = np.concatenate([seg[:, 1:].ravel(), seg[1:, :].ravel()])
    diff = np.concatenate(
        [
            np.linalg.norm(smooth[:, :-1] - smooth[:, 1:], axis=-1).ravel(),
            np.linalg.norm(smooth[:-1, :] - smooth[1:, :], axis=-1).ravel(),
        ]
    )
    cross = a != b
    a, b, diff = a[cross], b[cross], diff[cross]
    lo, hi = np.minimum(a, b).astype(np.int64), np.maximum(a, b).astype(np.int64)
    keys, inverse = np.unique(lo * count + hi, return_inverse=True)
    edges = np.stack([keys // count, keys % count], 1).astype(np.int32)
    boundary = np.bincount(inverse).astype(np.float64)
    edge_contrast = np.bincount(inverse, weights=diff) / boundary
    color_distance = np.linalg.norm(colors[edges[:, 0]] - colors[edges[:, 1]], axis=1)

    on_border = border_pixels(seg, count) > 0
    return RegionGraph(
        seg,
        areas,
        colors.astype(np.float32),
        centroids.astype(np.float32),
        edges,
        boundary,
        edge_contrast.astype(np.float32),
        color_distance.astype(np.float32),
        on_border,
    )


def border_pixels(labels: np.ndarray, count: int) -> np.ndarray:
    """N float: how many pixels of the image's outer ring (each counted once) each region holds."""
    ring = np.concatenate([labels[0], labels[-1], labels[1:-1, 0], labels[1:-1, -1]])
    return np.bincount(ring, minlength=count).astype(np.float64)


def edge_weights(graph: RegionGraph, edge_weight: float, color_weight: float) -> np.ndarray:
    """E affinities w_ij (see the module docstring); contrasts are divided by their image means so
    that one setting fits dull and vivid images alike."""
    e = graph.edge_contrast / max(float(graph.edge_contrast.mean()), 1e-6)
    d = graph.color_distance / max(float(graph.color_distance.mean()), 1e-6)
    return graph.boundary * np.exp(-edge_weight * e - color_weight * d)


def laplacian(count: int, edges: np.ndarray, weights: np.ndarray) -> sparse.csr_matrix:
    """NxN graph Laplacian D - W of undirected weighted edges."""
    i, j = edges[:, 0], edges[:, 1]
    w = sparse.coo_matrix(
        (np.concatenate([weights, weights]), (np.concatenate([i, j]), np.concatenate([j, i]))),
        shape=(count, count),
    ).tocsr()
    return (sparse.diags(np.asarray(w.sum(1)).ravel()) - w).tocsr()


def random_walk(
    lap: sparse.csr_matrix,
    seeds: np.ndarray,
    unary: np.ndarray | None = None,
    prior: np.ndarray | None = None,
) -> np.ndarray:
    """N potentials in [0, 1]: the probability that a walker from each node reaches an object seed first.

    seeds: N float, 1 object, 0 background, NaN free; unary: N weights (lambda_i * a_i) pulling free
    nodes towards `prior` (N, in [0, 1]); both None: the plain random walker.
    """
    count = lap.shape[0]
    fixed = ~np.isnan(seeds)
    free = np.flatnonzero(~fixed)
    x = np.where(fixed, seeds, 0.0)
    if not len(free):
        return x
    unary = np.zeros(count) if unary is None else unary
    prior = np.zeros(count) if prior is None else prior
    pull = unary[free] + LEAK
    a = lap[free][:, free] + sparse.diags(pull)
    rhs = -(lap[free][:, np.flatnonzero(fixed)] @ x[fixed]) + unary[free] * prior[free]
    x[free] = np.clip(spsolve(a.tocsc(), rhs), 0.0, 1.0)
    return x


def box_slices(box: np.ndarray, size: tuple[int, int]) -> tuple[slice, slice]:
    """(rows, cols) of the pixels of an image of `size` (H, W) inside a box (x0, y0, x1, y1 in
    pixels, rounded outwards)."""
    h, w = size
    x0, y0, x1, y1 = box
    rows = slice(max(0, int(np.floor(y0))), min(h, int(np.ceil(y1))))
    return rows, slice(max(0, int(np.floor(x0))), min(w, int(np.ceil(x1))))


def box_fraction(graph: RegionGraph, box: np.ndarray) -> np.ndarray:
    """N share of each region's pixels inside a box (see `box_slices`)."""
    inside = np.bincount(graph.labels[box_slices(box, graph.labels.shape)].ravel(), minlength=graph.count)
    return inside / np.maximum(graph.areas, 1)


def color_likelihood(
    colors: np.ndarray, areas: np.ndarray, fg: np.ndarray, bg: np.ndarray, bins: int
) -> np.ndarray:
    """N P(object | colour) from two area-weighted Lab histograms of region colours (`bins` steps of
    L, 2*bins of a and of b), as GrabCut's colour models but on regions; fg, bg: N weights in [0, 1]."""
    lightness = np.clip(colors[:, 0] / 100 * bins, 0, bins - 1).astype(np.int64)
    a = np.clip((colors[:, 1] + 100) / 200 * 2 * bins, 0, 2 * bins - 1).astype(np.int64)
    b = np.clip((colors[:, 2] + 100) / 200 * 2 * bins, 0, 2 * bins - 1).astype(np.int64)
    key = (lightness * 2 * bins + a) * 2 * bins + b
    size = bins * 4 * bins * bins
    hist_fg = np.bincount(key, weights=areas * fg, minlength=size) + 1e-3
    hist_bg = np.bincount(key, weights=areas * bg, minlength=size) + 1e-3
    p_fg, p_bg = hist_fg[key] / hist_fg.sum(), hist_bg[key] / hist_bg.sum()
    return p_fg / (p_fg + p_bg)


def boundary_connectivity(graph: RegionGraph, sigma: float, chunk: int = 512) -> np.ndarray:
    """N probability that each region is background, from its boundary connectivity (Zhu, Liang,
    Wei and Sun, "Saliency Optimization from Robust Background Detection", CVPR 2014; areas and
    border lengths here in pixels where the paper counts superpixels):

        S(p, q) = exp(-d_geo(p, q)^2 / (2 sigma^2)),  d_geo the least sum of mean-colour (Lab)
        differences along a path of touching regions;
        Area(p) = sum_q S(p, q) a_q,  Len(p) = sum_q S(p, q) b_q,  b_q the region's border pixels;
        BndCon(p) = Len(p) / sqrt(Area(p)),  P(background) = 1 - exp(-BndCon^2 / 2)  (sigma_b 1).

    Background spans (road, sky, walls) reach far along the image border for their area; an
    object is cut off from the border by colour changes, even where its colour also occurs there.
    Paths are followed to 3 sigma (S < 0.012 beyond), `chunk` sources at a time: memory is chunk x N
    floats, time grows with N times the regions within 3 sigma of each (N^2 at worst)."""
    n = graph.count
    step = np.maximum(graph.color_distance.astype(np.float64), 1e-6)  # equal colours: still apart
    edges = sparse.coo_matrix((step, (graph.edges[:, 0], graph.edges[:, 1])), shape=(n, n)).tocsr()
    border = border_pixels(graph.labels, n)
    area, length = np.empty(n), np.empty(n)
    for start in range(0, n, chunk):
        sources = np.arange(start, min(n, start + chunk))
        geo = csgraph.dijkstra(edges, directed=False, indices=sources, limit=3 * sigma)
        similar = np.exp(-np.square(geo) / (2 * sigma**2))  # exp(-inf) = 0 past the limit
        area[sources], length[sources] = similar @ graph.areas, similar @ border
    bndcon = length / np.sqrt(area)
    return 1.0 - np.exp(-np.square(bndcon) / 2)


def box_centre_prior(graph: RegionGraph, box: np.ndarray, spread: float) -> np.ndarray:
    """N exp(-r^2 / (2 spread^2)), r the region centroid's distance from the box centre in units
    of the box's half sides: objects fill the middle of their box more than its corners."""
    x0, y0, x1, y1 = box
    dx = (graph.centroids[:, 0] - (x0 + x1) / 2) / max((x1 - x0) / 2, 1e-6)
    dy = (graph.centroids[:, 1] - (y0 + y1) / 2) / max((y1 - y0) / 2, 1e-6)
    return np.exp(-(dx**2 + dy**2) / (2 * spread**2))


def expected_iou(x: np.ndarray, areas: np.ndarray | None, selected: np.ndarray) -> float:
    """The IoU a selection of regions would have if each region belonged to the object with
    probability x: sum_sel a x / (sum_sel a + sum_rest a x). The prior's predicted IoU. `areas`
    None: every element (a pixel) weighs one."""
    mass = x if areas is None else areas * x
    inside = float(mass[selected].sum())
    size = float(np.count_nonzero(selected)) if areas is None else float(areas[selected].sum())
    denominator = size + float(mass.sum()) - inside
    return inside / denominator if denominator > 0 else 0.0


def pixel_affinities(lab: np.ndarray, beta: float) -> tuple[np.ndarray, np.ndarray]:
    """Grady's pixel edge weights exp(-beta |dLab|^2 / mean |dLab|^2) of an HxWx3 Lab image:
    Hx(W-1) between horizontal neighbours, (H-1)xW between vertical ones (float32)."""
    horizontal = ((lab[:, 1:] - lab[:, :-1]) ** 2).sum(-1)
    vertical = ((lab[1:] - lab[:-1]) ** 2).sum(-1)
    scale = max(float(np.concatenate([horizontal.ravel(), vertical.ravel()]).mean()), 1e-6)
    return (
        np.exp(-beta * horizontal / scale).astype(np.float32),
        np.exp(-beta * vertical / scale).astype(np.float32),
    )


def boundary_band(graph: RegionGraph, x: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """N bool: regions on either side of the cut `x > threshold` (an edge joins them to a region on
    the other side). Their pixels are where a region-level answer can be wrong."""
    inside = x > threshold
    cut = inside[graph.edges[:, 0]] != inside[graph.edges[:, 1]]
    band = np.zeros(graph.count, bool)
    band[graph.edges[cut].ravel()] = True
    return band


def refine_pixels(
    values: np.ndarray,
    free: np.ndarray,
    horizontal: np.ndarray,
    vertical: np.ndarray,
    pull: float | np.ndarray,
) -> np.ndarray:
    """A pixel-level random walk inside a band: HxW potentials.

    values: HxW potentials everywhere (the region walk's, painted; clicked pixels 0 / 1); free: HxW
    bool, the pixels solved again, each held by its 4-neighbours (weights `horizontal`, `vertical`
    from `pixel_affinities`) and pulled towards its own value with weight `pull` (a scalar or HxW, > 0
    where free); every other pixel
    is a fixed boundary value. The band is a thin ribbon, so the sparse system stays small.
    """
    h, w = values.shape
    index = np.flatnonzero(free)
    out = values.astype(np.float64).ravel().copy()
    n = len(index)
    if not n:
        return out.reshape(h, w)
    position = np.full(h * w, -1, dtype=np.int64)
    position[index] = np.arange(n)
    pull = np.broadcast_to(np.asarray(pull, dtype=np.float64), (h, w)).ravel()[index]
    diagonal = pull.copy()
    rhs = pull * out[index]
    rows, cols, weights = [], [], []
    for weight, step, valid in (
        (horizontal, 1, free[:, :-1] | free[:, 1:]),
        (vertical, w, free[:-1, :] | free[1:, :]),
    ):
        r, c = np.nonzero(valid)
        a = r * w + c
        b = a + step
        wt = weight[r, c].astype(np.float64)
        pa, pb = position[a], position[b]
        for p, q, other in ((pa, pb, b), (pb, pa, a)):
            mine = p >= 0
            diagonal += np.bincount(p[mine], weights=wt[mine], minlength=n)
            fixed = mine & (q < 0)
            rhs += np.bincount(p[fixed], weights=wt[fixed] * out[other[fixed]], minlength=n)
        both = (pa >= 0) & (pb >= 0)
        rows += [pa[both], pb[both]]
        cols += [pb[both], pa[both]]
        weights += [-wt[both], -wt[both]]
    rows.append(np.arange(n))
    cols.append(np.arange(n))
    weights.append(diagonal)
    system = sparse.csc_matrix(
        (np.concatenate(weights), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n)
    )
    # conjugate gradients, Jacobi-preconditioned and started from the region answer: the pull keeps
    # the system well conditioned, so a few dozen iterations reach the tolerance (a direct solve of
    # tens of thousands of pixels takes ~10x longer)
    with BLAS.limit(limits=1, user_api="blas"):  # vectors of ~1e4: threads only contend
        solution, _ = cg(
            system.tocsr(),
            rhs,
            x0=out[index],
            rtol=PIXEL_TOLERANCE,
            maxiter=PIXEL_ITERATIONS,
            M=sparse.diags(1 / diagonal),
        )
    out[index] = np.clip(solution, 0.0, 1.0)
    return out.reshape(h, w)


def box_doubt(side: float, fill: float, trust_side: float, trust_fill: float) -> float:
    """How little the walk's answer to a tight box is to be trusted, in [0, 1]: 1 - min(1, side /
    trust_side) * min(1, fill / trust_fill), with `side` the box's geometric mean side (pixels) and
    `fill` the share of the box the walk's most likely answer covers. Walks on boxes a few
    superpixels across, and answers that leave most of a tight box empty, lose to the box itself
    (an object touches all four sides of its tight box and fills most of it)."""
    size = min(1.0, side / trust_side) if trust_side > 0 else 1.0
    share = min(1.0, fill / trust_fill) if trust_fill > 0 else 1.0
    return 1.0 - size * share


def box_candidate_scores(
    y: np.ndarray, candidates: np.ndarray, doubt: float, fill_prior: float
) -> np.ndarray:
    """Predicted IoU of each candidate mask inside a tight box (the last candidate may be the filled
    box itself): the expected IoU under the walk's potentials `y` (HxW inside the box), blended with
    the expected IoU under a flat prior that the object covers `fill_prior` of its box, by `doubt`
    (`box_doubt`). Under the flat prior the filled box scores `fill_prior` and any part of it less,
    so the more doubtful the walk, the likelier the box is the best-scored answer."""
    out = np.empty(len(candidates))
    flat = np.full(y.shape, fill_prior)
    for k, mask in enumerate(candidates):
        walk = expected_iou(y, None, mask)
        prior = expected_iou(flat, None, mask)
        out[k] = (1 - doubt) * walk + doubt * prior
    return out
