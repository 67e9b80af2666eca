"""The previous weight-free prior (`classical-regions`), kept as a named baseline. It is NOT SAM.

The default prior is `models.engine.classical` (a seeded random walk); this one is kept so that
benchmarks can print both in one run. "Embedding": superpixel segmentations of the image at three scales (scikit-image's Felzenszwalb
graph segmentation, which follows colour edges and lets regions grow to object size), fine /
medium / coarse. A prompt selects whole regions at each scale, which gives the
three candidates (small to large, like SAM's part / object / whole):

- positive points: the regions holding them, minus the regions holding negative points;
- a box: the regions lying mostly (>= half their area) inside the box, clipped to the box;
- mask_logits: the regions lying mostly inside the mask the logits describe.

Scores come from region statistics: `iou` is the colour contrast between the chosen regions and
the regions touching them, squashed to [0, 1); `stability` is the IoU of the candidate with its
neighbouring scale(s). Low-res logits are +/-8 in SAM's 256x256 padded frame, so they can be fed back as
`Prompt.mask_logits` exactly like SAM's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from scipy import sparse
from skimage.color import rgb2lab
from skimage.segmentation import felzenszwalb

from models.engine.base import PRIOR_WORKING_SIDE, CachedSegmenter
from models.engine.cache import DEFAULT_CACHE_BYTES
from models.engine.lowres import MASK_LOGIT, low_res_pixels, low_res_shape, low_res_to_mask
from models.engine.types import LOW_RES, ImageHandle, Predictions, Prompt
from models.runtime.deadline import check_deadline

RING_HOPS = 3
DEFAULT_SCALES = (60, 200, 600)  # Felzenszwalb scale per level: larger -> larger regions


@dataclass(frozen=True)
class SuperpixelImage:
    """Per-image state, per scale: labels (3xHxW int32), region areas, mean Lab colours, Lab spreads,
    which regions touch, and each region's bounding box (Rx4 rows/cols [r0, r1, c0, c1]) at full
    and at low resolution, so that a candidate is painted only where its regions lie."""

    labels: np.ndarray
    areas: list[np.ndarray]
    colors: list[np.ndarray]
    spreads: list[np.ndarray]
    adjacency: list[sparse.csr_matrix]
    low_res: np.ndarray  # 3xLxL int32 region ids at SAM's low-res grid (-1 in the padding)
    original_size: tuple[int, int]
    boxes: list[np.ndarray]
    low_res_boxes: list[np.ndarray]

    @property
    def nbytes(self) -> int:
        extra = sum(
            a.nbytes + c.nbytes + d.nbytes + m.data.nbytes + m.indices.nbytes + m.indptr.nbytes
            for a, c, d, m in zip(self.areas, self.colors, self.spreads, self.adjacency)
        )
        boxes = sum(b.nbytes for b in self.boxes + self.low_res_boxes)
        return self.labels.nbytes + self.low_res.nbytes + extra + boxes


def region_boxes(seg: np.ndarray, count: int) -> np.ndarray:
    """Rx4 int32 [r0, r1, c0, c1] bounding box of every region id 0..R-1 (empty 0,0,0,0 for a region
    that does not occur, e.g. one too small to be sampled on the low-res grid)."""
    out = np.zeros((count, 4), dtype=np.int32)
    for i, found in enumerate(ndi.find_objects(seg + 1, max_label=count)):
        if found is not None:
            rows, cols = found
            out[i] = rows.start, rows.stop, cols.start, cols.stop
    return out


def chosen_box(boxes: np.ndarray, chosen: np.ndarray) -> tuple[slice, slice] | None:
    """The bounding box (row and column slices) of the chosen regions, None when none is chosen."""
    picked = boxes[chosen]
    picked = picked[picked[:, 1] > picked[:, 0]]
    if not len(picked):
        return None
    return slice(picked[:, 0].min(), picked[:, 1].max()), slice(picked[:, 2].min(), picked[:, 3].max())


def _region_adjacency(seg: np.ndarray, count: int) -> sparse.csr_matrix:
    pairs = np.concatenate(
        [
            np.stack([seg[:, :-1].ravel(), seg[:, 1:].ravel()], 1),
            np.stack([seg[:-1, :].ravel(), seg[1:, :].ravel()], 1),
        ]
    )
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    adj = sparse.coo_matrix(
        (np.ones(len(pairs), np.float32), (pairs[:, 0], pairs[:, 1])), shape=(count, count)
    )
    adj = adj.tocsr()
    return ((adj + adj.T) > 0).astype(np.float32).tocsr()


def superpixels(
    image: np.ndarray, scales: tuple[int, ...] = DEFAULT_SCALES, sigma: float = 0.8
) -> SuperpixelImage:
    """Felzenszwalb segmentation per scale (min region size scale/2), ids contiguous from 0, with
    per-region colour statistics and adjacency for scoring."""
    h, w = image.shape[:2]
    lab = rgb2lab(image).astype(np.float64).reshape(-1, 3)
    labels, areas, colors, spreads, adjacency = [], [], [], [], []
    for scale in scales:
        seg = felzenszwalb(image, scale=scale, sigma=sigma, min_size=max(1, scale // 2))
        seg = np.unique(seg, return_inverse=True)[1].reshape(h, w).astype(np.int32)
        count = int(seg.max()) + 1
        flat = seg.ravel()
        area = np.bincount(flat, minlength=count).astype(np.float64)
        sums = np.stack([np.bincount(flat, weights=lab[:, k], minlength=count) for k in range(3)], 1)
        squares = np.stack([np.bincount(flat, weights=lab[:, k] ** 2, minlength=count) for k in range(3)], 1)
        mean = sums / np.maximum(area, 1)[:, None]
        var = np.maximum(squares / np.maximum(area, 1)[:, None] - mean**2, 0)
        labels.append(seg)
        areas.append(area)
        colors.append(mean.astype(np.float32))
        spreads.append(np.sqrt(var).mean(1).astype(np.float32))
        adjacency.append(_region_adjacency(seg, count))
    stacked = np.stack(labels)
    low_res = low_res_ids(stacked)
    boxes = [region_boxes(seg, len(a)) for seg, a in zip(labels, areas)]
    low_res_boxes = [region_boxes(ids, len(a)) for ids, a in zip(low_res, areas)]
    return SuperpixelImage(stacked, areas, colors, spreads, adjacency, low_res, (h, w), boxes, low_res_boxes)


def low_res_ids(labels: np.ndarray) -> np.ndarray:
    """Region ids sampled at the centres of SAM's 256x256 low-res cells (-1 in the padding)."""
    rows, cols = low_res_pixels(labels.shape[1:])
    out = np.full((labels.shape[0], LOW_RES, LOW_RES), -1, dtype=np.int32)
    out[:, : len(rows), : len(cols)] = labels[:, rows][:, :, cols]
    return out


def region_contrast(
    chosen: np.ndarray,
    areas: np.ndarray,
    colors: np.ndarray,
    spreads: np.ndarray,
    adjacency: sparse.csr_matrix,
) -> float:
    """Colour contrast between a set of regions and the regions around it (area-weighted), in [0, 1).

    |mean Lab inside - mean Lab of the touching ring| / (spread inside + spread of the ring),
    squashed by x / (1 + x); all from per-region statistics, so it costs O(regions).
    """
    if not chosen.any() or chosen.all():
        return 0.0
    # Up to RING_HOPS hops: Felzenszwalb often gives an object's blurred edge one or two thin
    # regions of its own, which alone would make the object look like its own surroundings.
    near = chosen.copy()
    for _ in range(RING_HOPS):
        near |= adjacency @ near.astype(np.float32) > 0
    ring = near & ~chosen
    if not ring.any():
        return 0.0

    def pooled(sel: np.ndarray) -> tuple[np.ndarray, float]:
        weights = areas[sel] / areas[sel].sum()
        return weights @ colors[sel], float(weights @ spreads[sel])

    inside, inside_spread = pooled(chosen)
    around, around_spread = pooled(ring)
    ratio = float(np.linalg.norm(inside - around)) / (inside_spread + around_spread + 1e-6)
    return ratio / (1.0 + ratio)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


class RegionPrior(CachedSegmenter):
    """Superpixel regions selected whole at three scales; the PromptableSegmenter interface, no weights."""

    def __init__(
        self,
        scales: tuple[int, ...] = DEFAULT_SCALES,
        sigma: float = 0.8,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        max_prompts: int | None = None,
        working_side: int | None = PRIOR_WORKING_SIDE,
    ) -> None:
        super().__init__(cache_bytes=cache_bytes, max_prompts=max_prompts, working_side=working_side)
        if len(scales) != 3 or any(int(s) <= 0 for s in scales):
            raise ValueError(f"scales: need 3 positive scales (fine, medium, coarse), got {scales}")
        self.scales = tuple(int(s) for s in scales)
        self.sigma = float(sigma)
        self.name = "classical-regions"

    @property
    def namespace(self) -> str:
        return f"classical-regions:{self.scales}:{self.sigma}"

    def _encode(self, images: list[np.ndarray]) -> list[SuperpixelImage]:
        out = [superpixels(img, self.scales, self.sigma) for img in images]
        self.stats.encoder_calls += 1
        self.stats.images_encoded += len(images)
        return out

    def _payload_nbytes(self, payload: SuperpixelImage) -> int:
        return payload.nbytes

    # -- candidate construction --------------------------------------------------------------
    def _candidate(
        self, sp: SuperpixelImage, scale: int, prompt: Prompt, guide: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(HxW mask, chosen regions) at one scale."""
        labels = sp.labels[scale]
        count = len(sp.areas[scale])
        chosen = np.zeros(count, dtype=bool)
        h, w = sp.original_size
        box_clip = None
        if prompt.box is not None:
            x0, y0, x1, y1 = prompt.box
            r0, r1 = int(np.floor(y0)), int(np.ceil(y1))
            c0, c1 = int(np.floor(x0)), int(np.ceil(x1))
            inside = np.bincount(labels[r0:r1, c0:c1].ravel(), minlength=count)
            chosen |= inside >= 0.5 * sp.areas[scale]
            box_clip = (slice(r0, r1), slice(c0, c1))
        if guide is not None:
            inside = np.bincount(labels[guide], minlength=count)
            chosen |= inside >= 0.5 * sp.areas[scale]
        if prompt.points is not None:
            xs = np.clip(prompt.points[:, 0].astype(int), 0, w - 1)
            ys = np.clip(prompt.points[:, 1].astype(int), 0, h - 1)
            ids = labels[ys, xs]
            chosen[ids[prompt.labels == 1]] = True
            chosen[ids[prompt.labels == 0]] = False
        mask = np.zeros((h, w), dtype=bool)
        window = chosen_box(sp.boxes[scale], chosen)
        if window is not None:  # paint only where the chosen regions lie
            mask[window] = chosen[labels[window]]
        if box_clip is not None:
            clipped = np.zeros_like(mask)
            clipped[box_clip] = mask[box_clip]
            mask = clipped
        return mask, chosen

    @staticmethod
    def _low_res_logits(sp: SuperpixelImage, scale: int, chosen: np.ndarray, prompt: Prompt) -> np.ndarray:
        """256x256 logits of a candidate from the precomputed low-res region ids (box-clipped)."""
        inside = np.zeros((LOW_RES, LOW_RES), dtype=bool)
        window = chosen_box(sp.low_res_boxes[scale], chosen)
        if window is not None:  # the window lies inside the image part, so it holds no padding (-1)
            inside[window] = chosen[sp.low_res[scale][window]]
        if prompt.box is not None:
            h, w = sp.original_size
            ch, cw = low_res_shape((h, w))
            x0, y0, x1, y1 = prompt.box
            keep = np.zeros_like(inside)
            r0, r1 = int(np.floor(y0 * ch / h)), int(np.ceil(y1 * ch / h))
            c0, c1 = int(np.floor(x0 * cw / w)), int(np.ceil(x1 * cw / w))
            keep[r0:r1, c0:c1] = True
            inside &= keep
        return np.where(inside, MASK_LOGIT, -MASK_LOGIT).astype(np.float32)

    def _decode(self, handle: ImageHandle, prompts: list[Prompt], multimask: bool) -> Predictions:
        sp: SuperpixelImage = handle.payload
        h, w = sp.original_size
        out = Predictions.zeros(len(prompts), (h, w), multimask)
        for i, prompt in enumerate(prompts):
            check_deadline()  # a request past its deadline stops here, between prompts
            guide = None if prompt.mask_logits is None else low_res_to_mask(prompt.mask_logits, (h, w))
            built = [self._candidate(sp, s, prompt, guide) for s in range(3)]
            cands = [m for m, _ in built]
            scores = np.array(
                [
                    region_contrast(chosen, sp.areas[s], sp.colors[s], sp.spreads[s], sp.adjacency[s])
                    for s, (_, chosen) in enumerate(built)
                ],
                dtype=np.float32,
            )
            thumbs = [m[::4, ::4] for m in cands]  # stability on a 1/4 grid: plenty for an IoU
            stab = np.array(
                [
                    np.mean([_iou(thumbs[s], thumbs[t]) for t in (s - 1, s + 1) if 0 <= t < 3])
                    for s in range(3)
                ],
                dtype=np.float32,
            )
            order = range(3) if multimask else [int(np.argmax(scores + stab))]
            for j, s in enumerate(order):
                out.masks[i, j] = cands[s]
                out.iou[i, j] = scores[s]
                out.stability[i, j] = stab[s]
                out.low_res_logits[i, j] = self._low_res_logits(sp, s, built[s][1], prompt)
        self.stats.decoder_calls += 1
        self.stats.prompts_decoded += len(prompts)
        return out
