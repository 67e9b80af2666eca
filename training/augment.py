"""Augmented views that remember their geometry.

A weak view is `original -> horizontal flip -> scale -> crop` (crops past the edge are padded:
image 0, labels 255). `View` maps points both ways and warps images, label maps and probability
maps between the original image and the view, so SAM can be prompted in ORIGINAL coordinates on a
cached embedding and its masks brought into the view. The strong view is the weak view plus
photometric changes (colour jitter, blur, grayscale) and cutout: same geometry, same labels.

Coordinates are continuous pixels: pixel (i, j) covers [j, j+1) x [i, i+1), its centre is (j+.5, i+.5).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from models.io import UNLABELED


@dataclass(frozen=True)
class View:
    original_size: tuple[int, int]  # (H, W)
    flip: bool
    scale: float
    top: int
    left: int
    size: tuple[int, int]  # (h, w) of the view

    @property
    def scaled_size(self) -> tuple[int, int]:
        h, w = self.original_size
        return max(1, round(h * self.scale)), max(1, round(w * self.scale))

    def _factors(self) -> tuple[float, float]:
        (h, w), (sh, sw) = self.original_size, self.scaled_size
        return sh / h, sw / w

    # -- points -------------------------------------------------------------------------------
    def points_to_view(self, points: np.ndarray) -> np.ndarray:
        """Nx2 (x, y) original -> view coordinates."""
        fy, fx = self._factors()
        x, y = points[:, 0].astype(np.float64), points[:, 1].astype(np.float64)
        if self.flip:
            x = self.original_size[1] - x
        return np.column_stack([x * fx - self.left, y * fy - self.top])

    def points_to_original(self, points: np.ndarray) -> np.ndarray:
        fy, fx = self._factors()
        x = (points[:, 0] + self.left) / fx
        y = (points[:, 1] + self.top) / fy
        if self.flip:
            x = self.original_size[1] - x
        return np.column_stack([x, y])

    # -- dense maps ----------------------------------------------------------------------------
    def _crop(self, t: torch.Tensor, fill: float) -> torch.Tensor:
        """Crop ...xSHxSW to ...xhxw at (top, left), padding with `fill` outside."""
        sh, sw = t.shape[-2:]
        h, w = self.size
        out = torch.full((*t.shape[:-2], h, w), fill, dtype=t.dtype)
        r0, c0 = max(self.top, 0), max(self.left, 0)
        r1, c1 = min(self.top + h, sh), min(self.left + w, sw)
        if r1 > r0 and c1 > c0:
            out[..., r0 - self.top : r1 - self.top, c0 - self.left : c1 - self.left] = t[..., r0:r1, c0:c1]
        return out

    def _uncrop(self, t: torch.Tensor, fill: float) -> torch.Tensor:
        """Inverse of _crop: ...xhxw -> ...xSHxSW with `fill` where the view did not reach."""
        sh, sw = self.scaled_size
        h, w = self.size
        out = torch.full((*t.shape[:-2], sh, sw), fill, dtype=t.dtype)
        r0, c0 = max(self.top, 0), max(self.left, 0)
        r1, c1 = min(self.top + h, sh), min(self.left + w, sw)
        if r1 > r0 and c1 > c0:
            out[..., r0:r1, c0:c1] = t[..., r0 - self.top : r1 - self.top, c0 - self.left : c1 - self.left]
        return out

    def image_to_view(self, image: np.ndarray) -> np.ndarray:
        """HxWx3 uint8 -> hxwx3 uint8 (bilinear)."""
        t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float()[None]
        if self.flip:
            t = t.flip(-1)
        t = F.interpolate(
            t, size=self.scaled_size, mode="bilinear", align_corners=False, antialias=self.scale < 1
        )
        return self._crop(t[0], 0.0).round().clamp(0, 255).byte().permute(1, 2, 0).numpy()

    def labels_to_view(self, labels: np.ndarray, fill: int = UNLABELED) -> np.ndarray:
        """HxW class map -> hxw (nearest)."""
        t = torch.from_numpy(np.ascontiguousarray(labels)).float()[None, None]
        if self.flip:
            t = t.flip(-1)
        t = F.interpolate(t, size=self.scaled_size, mode="nearest-exact")
        return self._crop(t[0, 0], float(fill)).to(torch.uint8).numpy()

    def labels_to_original(self, labels: np.ndarray, fill: int = UNLABELED) -> np.ndarray:
        """hxw view class map -> HxW original (nearest); `fill` where the view does not reach."""
        t = self._uncrop(torch.from_numpy(np.ascontiguousarray(labels)).float(), float(fill))[None, None]
        t = F.interpolate(t, size=self.original_size, mode="nearest-exact")[0, 0]
        if self.flip:
            t = t.flip(-1)
        return t.to(torch.uint8).numpy()

    def probs_to_original(self, probs: torch.Tensor) -> torch.Tensor:
        """Cxhxw view probabilities -> CxHxW original (bilinear); 0 where the view does not reach."""
        t = self._uncrop(probs.float().cpu(), 0.0)[None]
        t = F.interpolate(t, size=self.original_size, mode="bilinear", align_corners=False)[0]
        return t.flip(-1) if self.flip else t


def random_view(
    original_size: tuple[int, int],
    crop: tuple[int, int],
    rng: np.random.Generator,
    base_scale: float = 1.0,
    scale_range: tuple[float, float] = (0.75, 1.25),
    flip_p: float = 0.5,
) -> View:
    """Weak augmentation: random flip, scale (base_scale x U(scale_range)) and crop of size `crop`."""
    scale = base_scale * float(rng.uniform(*scale_range))
    flip = bool(rng.uniform() < flip_p)
    h, w = original_size
    sh, sw = max(1, round(h * scale)), max(1, round(w * scale))
    top = int(rng.integers(0, max(sh - crop[0], 0) + 1))
    left = int(rng.integers(0, max(sw - crop[1], 0) + 1))
    return View(original_size, flip, scale, top, left, crop)


def center_view(original_size: tuple[int, int], scale: float) -> View:
    """The whole image at `scale`, no flip (evaluation)."""
    h, w = original_size
    return View(original_size, False, scale, 0, 0, (max(1, round(h * scale)), max(1, round(w * scale))))


def strong_augment(image: np.ndarray, rng: np.random.Generator, cutout_frac: float = 0.3) -> np.ndarray:
    """Photometric strong augmentation + cutout on an HxWx3 uint8 view (geometry unchanged)."""
    x = image.astype(np.float32)
    x = x * rng.uniform(0.6, 1.4)  # brightness
    mean = x.mean()
    x = (x - mean) * rng.uniform(0.6, 1.4) + mean  # contrast
    gray = x.mean(axis=2, keepdims=True)
    x = gray + (x - gray) * rng.uniform(0.5, 1.5)  # saturation
    if rng.uniform() < 0.2:
        x = np.repeat(x.mean(axis=2, keepdims=True), 3, axis=2)
    if rng.uniform() < 0.5:
        from scipy.ndimage import gaussian_filter

        x = gaussian_filter(x, sigma=(rng.uniform(0.1, 1.5), rng.uniform(0.1, 1.5), 0))
    h, w = image.shape[:2]
    ch, cw = int(h * cutout_frac * rng.uniform(0.5, 1)), int(w * cutout_frac * rng.uniform(0.5, 1))
    r, c = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    x[r : r + ch, c : c + cw] = 127.0
    return np.clip(x, 0, 255).round().astype(np.uint8)
