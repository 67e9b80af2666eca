"""A scripted PromptableSegmenter for tests: known candidates per object, known scores."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from models.engine import CachedSegmenter, ImageHandle, Predictions, Prompt
from models.engine.lowres import low_res_to_mask


@dataclass(frozen=True)
class Canvas:
    original_size: tuple[int, int]


class ScriptedSegmenter(CachedSegmenter):
    """For a prompt on object k it returns [part, whole, too large] of that object, scored
    [0.95, 0.80, 0.60] so that SAM's own best score prefers the part. With multimask=False it
    answers one mask, the whole object (SAM's single-output token, not the best of the three)."""

    name = "scripted"

    def __init__(self, objects: list[np.ndarray]) -> None:
        super().__init__()
        self.objects = objects
        self.seen: list[list[Prompt]] = []

    def _encode(self, images):
        self.stats.encoder_calls += 1
        self.stats.images_encoded += len(images)
        return [Canvas(img.shape[:2]) for img in images]

    def _payload_nbytes(self, payload) -> int:
        return 64

    def _which(self, prompt: Prompt, size) -> int:
        if prompt.points is not None:
            x, y = prompt.points[0]
            probe = np.zeros(size, bool)
            probe[int(y), int(x)] = True
        elif prompt.box is not None:
            x0, y0, x1, y1 = prompt.box
            probe = np.zeros(size, bool)
            probe[int((y0 + y1) / 2), int((x0 + x1) / 2)] = True
        else:
            probe = low_res_to_mask(prompt.mask_logits, size)
        hits = [int((probe & o).sum()) for o in self.objects]
        return int(np.argmax(hits))

    def candidates(self, k: int) -> np.ndarray:
        obj = self.objects[k]
        rows, cols = np.flatnonzero(obj.any(1)), np.flatnonzero(obj.any(0))
        part = np.zeros_like(obj)
        part[rows[0] : (rows[0] + rows[-1]) // 2 + 1, cols[0] : (cols[0] + cols[-1]) // 2 + 1] = True
        part &= obj
        huge = ndi.binary_dilation(obj, iterations=12)
        return np.stack([part, obj, huge])

    def _decode(self, handle: ImageHandle, prompts: list[Prompt], multimask: bool) -> Predictions:
        self.seen.append(prompts)
        self.stats.decoder_calls += 1
        masks = np.stack([self.candidates(self._which(p, handle.original_size)) for p in prompts])
        n = len(prompts)
        iou = np.tile(np.array([0.95, 0.80, 0.60], np.float32), (n, 1))
        if not multimask:
            masks, iou = masks[:, 1:2], iou[:, 1:2]
        c = masks.shape[1]
        stab = np.full((n, c), 0.9, np.float32)
        return Predictions(masks, iou, stab, np.zeros((n, c, 256, 256), np.float32))


class ObjectClicks(CachedSegmenter):
    """A click inside an object answers that object (its mask as every candidate), elsewhere
    nothing; `scores(x, width)` gives each answer's (IoU, stability), 0.9 and 0.9 by default."""

    name = "object-clicks"

    def __init__(self, objects: list[np.ndarray]) -> None:
        super().__init__()
        self.objects = objects

    def scores(self, x: float, width: int) -> tuple[object, object]:
        return 0.9, 0.9

    def _encode(self, images):
        self.stats.encoder_calls += 1
        return [tuple(i.shape[:2]) for i in images]

    def _payload_nbytes(self, payload) -> int:
        return 8

    def _payload_size(self, payload):
        return payload

    def _decode(self, handle, prompts, multimask):
        h, w = handle.original_size
        out = Predictions.zeros(len(prompts), (h, w), multimask)
        for i, p in enumerate(prompts):
            x, y = p.points[0]
            hit = [o for o in self.objects if o[int(y), int(x)]]
            out.masks[i] = hit[0] if hit else np.zeros((h, w), bool)
            out.iou[i], out.stability[i] = self.scores(x, w)
        return out
