"""A weight-free classical prior with SAM's interface. It is NOT SAM.

"Embedding": superpixel segmentations of the image at three scales (scikit-image's Felzenszwalb
graph segmentation, which follows colour edges and lets regions grow to object size), fine /
medium / coarse. A prompt selects whole regions at each scale, which gives the
three candidates (small to large, like SAM's part / object / whole):

- positive points: the regions holding them, minus the regions holding negative points;
- a box: the regions lying mostly (>= half their area) inside the box, clipped to the box;
- mask_logits: the regions lying mostly inside the mask the logits describe.

Scores come from region statistics: `iou` is the colour contrast between the mask and the ring
around it, squashed to [0, 1); `stability` is the IoU of the candidate with its neighbouring
scale(s). Low-res logits are +/-8 in SAM's 256x256 padded frame, so they can be fed back as
`Prompt.mask_logits` exactly like SAM's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from skimage.color import rgb2lab
from skimage.segmentation import felzenszwalb

from models.engine.base import CachedSegmenter
from models.engine.cache import DEFAULT_CACHE_BYTES
from models.engine.lowres import low_res_to_mask, mask_to_low_res
from models.engine.types import LOW_RES, ImageHandle, Predictions, Prompt

DEFAULT_SCALES = (60, 200, 600)  # Felzenszwalb scale per level: larger -> larger regions


@dataclass(frozen=True)
class SuperpixelImage:
    """Per-image state: labels per scale (3xHxW int32), areas and mean Lab colour per region."""

    labels: np.ndarray
    areas: list[np.ndarray]
    colors: list[np.ndarray]
    lab: np.ndarray
    original_size: tuple[int, int]

    @property
    def nbytes(self) -> int:
        return (
            self.labels.nbytes
            + self.lab.nbytes
            + sum(a.nbytes + c.nbytes for a, c in zip(self.areas, self.colors))
        )


def superpixels(
    image: np.ndarray, scales: tuple[int, ...] = DEFAULT_SCALES, sigma: float = 0.8
) -> SuperpixelImage:
    """Felzenszwalb segmentation per scale (min region size scale/2); ids contiguous from 0."""
    h, w = image.shape[:2]
    lab = rgb2lab(image).astype(np.float32)
    labels, areas, colors = [], [], []
    for scale in scales:
        seg = felzenszwalb(image, scale=scale, sigma=sigma, min_size=max(1, scale // 2))
        seg = np.unique(seg, return_inverse=True)[1].reshape(h, w).astype(np.int32)
        count = int(seg.max()) + 1
        area = np.bincount(seg.ravel(), minlength=count).astype(np.float64)
        color = (
            np.stack(
                [np.bincount(seg.ravel(), weights=lab[..., k].ravel(), minlength=count) for k in range(3)],
                axis=1,
            )
            / np.maximum(area, 1)[:, None]
        )
        labels.append(seg)
        areas.append(area)
        colors.append(color.astype(np.float32))
    return SuperpixelImage(np.stack(labels), areas, colors, lab, (h, w))


def contrast_score(mask: np.ndarray, lab: np.ndarray, ring: int = 5) -> float:
    """Mean-colour distance between a mask and the ring around it over their spread, in [0, 1)."""
    if not mask.any() or mask.all():
        return 0.0
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    window = (
        slice(max(rows[0] - ring, 0), rows[-1] + ring + 1),
        slice(max(cols[0] - ring, 0), cols[-1] + ring + 1),
    )
    mask, lab = mask[window], lab[window]
    outer = ndi.binary_dilation(mask, iterations=ring) & ~mask
    if not outer.any():
        return 0.0
    inside, around = lab[mask], lab[outer]
    gap = float(np.linalg.norm(inside.mean(0) - around.mean(0)))
    spread = float(inside.std(0).mean() + around.std(0).mean()) + 1e-6
    ratio = gap / spread
    return ratio / (1.0 + ratio)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


class ClassicalPrior(CachedSegmenter):
    """Superpixel-region segmenter with the PromptableSegmenter interface; needs no weights."""

    def __init__(
        self,
        scales: tuple[int, ...] = DEFAULT_SCALES,
        sigma: float = 0.8,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        max_prompts: int | None = None,
    ) -> None:
        super().__init__(cache_bytes=cache_bytes, max_prompts=max_prompts)
        if len(scales) != 3 or any(int(s) <= 0 for s in scales):
            raise ValueError(f"scales: need 3 positive scales (fine, medium, coarse), got {scales}")
        self.scales = tuple(int(s) for s in scales)
        self.sigma = float(sigma)
        self.name = "classical"

    @property
    def namespace(self) -> str:
        return f"classical:{self.scales}:{self.sigma}"

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
    ) -> np.ndarray:
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
        mask = chosen[labels]
        if box_clip is not None:
            clipped = np.zeros_like(mask)
            clipped[box_clip] = mask[box_clip]
            mask = clipped
        return mask

    def _decode(self, handle: ImageHandle, prompts: list[Prompt], multimask: bool) -> Predictions:
        sp: SuperpixelImage = handle.payload
        h, w = sp.original_size
        n, c = len(prompts), (3 if multimask else 1)
        masks = np.zeros((n, c, h, w), dtype=bool)
        iou = np.zeros((n, c), dtype=np.float32)
        stability = np.zeros((n, c), dtype=np.float32)
        low_res = np.zeros((n, c, LOW_RES, LOW_RES), dtype=np.float32)
        for i, prompt in enumerate(prompts):
            guide = None if prompt.mask_logits is None else low_res_to_mask(prompt.mask_logits, (h, w))
            cands = [self._candidate(sp, s, prompt, guide) for s in range(3)]
            scores = np.array([contrast_score(m, sp.lab) for m in cands], dtype=np.float32)
            stab = np.array(
                [np.mean([_iou(cands[s], cands[t]) for t in (s - 1, s + 1) if 0 <= t < 3]) for s in range(3)],
                dtype=np.float32,
            )
            order = range(3) if multimask else [int(np.argmax(scores + stab))]
            for j, s in enumerate(order):
                masks[i, j] = cands[s]
                iou[i, j] = scores[s]
                stability[i, j] = stab[s]
                low_res[i, j] = mask_to_low_res(cands[s])[0]
        self.stats.decoder_calls += 1
        self.stats.prompts_decoded += n
        return Predictions(masks, iou, stability, low_res)
