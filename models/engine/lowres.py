"""Conversions between full-size binary masks and SAM's 256x256 low-res logits.

SAM's low-res masks live in its padded frame: the image's longest side scaled to 256, the rest
padded at the bottom/right. These helpers let a plain mask be used as a `Prompt(mask_logits=...)`.
SAM 2 keeps its own frame (the image stretched to 256x256): `engine_mask_logits` asks the engine.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from models.engine.types import LOW_RES

MASK_LOGIT = 8.0  # magnitude given to inside / outside when a binary mask becomes logits


def low_res_shape(size: tuple[int, int]) -> tuple[int, int]:
    """(h, w) the image occupies inside the 256x256 frame."""
    h, w = size
    scale = LOW_RES / max(h, w)
    return max(1, int(h * scale + 0.5)), max(1, int(w * scale + 0.5))


def low_res_pixels(size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of the pixels of an image of `size` at the centres of the low-res cells it
    occupies: sampling an HxW map there gives its low-res view."""
    h, w = size
    ch, cw = low_res_shape((h, w))
    rows = np.minimum(((np.arange(ch) + 0.5) * h / ch).astype(int), h - 1)
    cols = np.minimum(((np.arange(cw) + 0.5) * w / cw).astype(int), w - 1)
    return rows, cols


def mask_to_low_res(mask: np.ndarray, value: float = MASK_LOGIT) -> np.ndarray:
    """HxW bool -> 1x256x256 float32 logits (+value inside, -value outside and in the padding)."""
    ch, cw = low_res_shape(mask.shape)
    t = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None]
    small = F.interpolate(t, size=(ch, cw), mode="area")[0, 0].numpy()
    out = np.full((1, LOW_RES, LOW_RES), -value, dtype=np.float32)
    out[0, :ch, :cw] = np.where(small >= 0.5, value, -value)
    return out


def engine_mask_logits(engine: object, mask: np.ndarray) -> np.ndarray:
    """HxW bool -> a 1x256x256 mask prompt in `engine`'s low-res frame: its `mask_logits` when it has
    one (SAM 2), else SAM 1's padded frame (`mask_to_low_res`; the classical priors read that too)."""
    own = getattr(engine, "mask_logits", None)
    return own(mask) if callable(own) else mask_to_low_res(mask)


def upsample_low_res(logits: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """256x256 (or 1x256x256) logits -> HxW float32 logits of an image of `size` (H, W): the
    image's part of the padded frame, bilinearly resized."""
    ch, cw = low_res_shape(size)
    crop = torch.from_numpy(np.asarray(logits, dtype=np.float32).reshape(LOW_RES, LOW_RES)[:ch, :cw].copy())
    return F.interpolate(crop[None, None], size=size, mode="bilinear", align_corners=False)[0, 0].numpy()


def low_res_to_mask(logits: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """256x256 (or 1x256x256) logits -> HxW bool mask of an image of `size` (H, W)."""
    return upsample_low_res(logits, size) > 0


def low_res_to_probability(logits: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """256x256 (or 1x256x256) logits -> HxW float32 in [0, 1]: 0.5 + logits / (2 MASK_LOGIT), clipped.

    The classical prior writes its potentials this way, so they come back unchanged; SAM's logits
    (tens in magnitude) and `mask_to_low_res` masks come back as 0 / 1.
    """
    return np.clip(0.5 + upsample_low_res(logits, size) / (2 * MASK_LOGIT), 0.0, 1.0)
