"""What every backend shares: input conversion, the content-hash embedding cache, validation, counters.

A backend implements three hooks: `_encode` (a list of HxWx3 uint8 images -> payloads, in as few
encoder calls as it can), `_payload_nbytes`, and `_decode` (one payload + validated prompts ->
Predictions). SAM backends share `BatchedDecoder._decode`, which groups prompts by layout and only
asks the backend to decode one group (`_decode_group_into`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from models.engine.cache import DEFAULT_CACHE_BYTES, EmbeddingCache, content_key
from models.engine.types import EngineStats, ImageHandle, Predictions, Prompt
from models.engine.validation import as_rgb_uint8, validate_prompts


class CachedSegmenter(ABC):
    """Base of every PromptableSegmenter backend."""

    name: str = "base"

    def __init__(
        self,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        max_prompts: int | None = None,
        cache: EmbeddingCache | None = None,
    ) -> None:
        self.cache = cache if cache is not None else EmbeddingCache(cache_bytes)
        self.max_prompts = max_prompts
        self.stats = EngineStats()

    @property
    def namespace(self) -> str:
        """Distinguishes cache keys of different models that might share one cache."""
        return self.name

    # -- hooks -----------------------------------------------------------------------------
    @abstractmethod
    def _encode(self, images: list[np.ndarray]) -> list[Any]: ...

    @abstractmethod
    def _payload_nbytes(self, payload: Any) -> int: ...

    @abstractmethod
    def _decode(self, handle: ImageHandle, prompts: list[Prompt], multimask: bool) -> Predictions: ...

    # -- the contract ------------------------------------------------------------------------
    def embed(self, images: Sequence[np.ndarray]) -> list[ImageHandle]:
        """Embed images (any layout `as_rgb_uint8` accepts); cached ones cost no encoder call."""
        if isinstance(images, np.ndarray) and images.ndim in (2, 3) and images.dtype != object:
            raise ValueError("images: expected a sequence of images; wrap a single image in a list")
        arrays = [as_rgb_uint8(img, f"images[{i}]") for i, img in enumerate(images)]
        keys = [content_key(a, self.namespace) for a in arrays]
        payloads: dict[str, Any] = {}
        todo: dict[str, np.ndarray] = {}
        for key, arr in zip(keys, arrays):
            if key in payloads or key in todo:
                continue
            cached = self.cache.get(key)
            if cached is None:
                self.stats.cache_misses += 1
                todo[key] = arr
            else:
                self.stats.cache_hits += 1
                payloads[key] = cached
        if todo:
            for key, payload in zip(todo, self._encode(list(todo.values()))):
                self.cache.put(key, payload, self._payload_nbytes(payload))
                payloads[key] = payload
        return [
            ImageHandle(k, (a.shape[0], a.shape[1]), self.name, payloads[k]) for k, a in zip(keys, arrays)
        ]

    def lookup(self, key: str) -> ImageHandle | None:
        payload = self.cache.peek(key)
        if payload is None:
            return None
        return ImageHandle(key, self._payload_size(payload), self.name, payload)

    def _payload_size(self, payload: Any) -> tuple[int, int]:
        return tuple(payload.original_size)

    def predict(
        self, image: ImageHandle | np.ndarray, prompts: Sequence[Prompt], multimask: bool = True
    ) -> Predictions:
        """Masks for every prompt on one image; see `Predictions` for shapes."""
        handle = image if isinstance(image, ImageHandle) else self.embed([image])[0]
        if handle.backend != self.name:
            raise ValueError(f"image handle comes from backend {handle.backend!r}, not {self.name!r}")
        prompts = list(prompts) if not isinstance(prompts, Prompt) else prompts
        validate_prompts(prompts, handle.original_size, self.max_prompts)
        if not prompts:
            return Predictions.empty(handle.original_size, multimask)
        return self._decode(handle, prompts, multimask)

    def info(self) -> dict[str, Any]:
        return {"backend": self.name, "stats": self.stats.as_dict(), "cache": self.cache.info()}


class BatchedDecoder(CachedSegmenter):
    """A backend with a real batched decoder (SAM in torch, ONNX Runtime, TensorRT, Triton).

    Prompts with the same layout (number of points, box or not) give the same token count and go
    through the decoder together, `decode_batch` at a time; a backend implements one such call.
    """

    decode_batch: int = 64

    @abstractmethod
    def _decode_group_into(
        self, payload: Any, prompts: list[Prompt], multimask: bool, out: Predictions, idx: list[int]
    ) -> None:
        """Decode prompts of one layout and write rows `idx` of every array of `out`."""

    def _decode(self, handle: ImageHandle, prompts: list[Prompt], multimask: bool) -> Predictions:
        groups: dict[tuple[int, bool], list[int]] = defaultdict(list)
        for i, prompt in enumerate(prompts):
            groups[(prompt.num_points, prompt.box is not None)].append(i)
        out = Predictions.zeros(len(prompts), handle.original_size, multimask)
        for indices in groups.values():
            for start in range(0, len(indices), self.decode_batch):
                idx = indices[start : start + self.decode_batch]
                self._decode_group_into(handle.payload, [prompts[i] for i in idx], multimask, out, idx)
                self.stats.decoder_calls += 1
                self.stats.prompts_decoded += len(idx)
        return out


def stability_score(logits: torch.Tensor | np.ndarray, threshold: float = 0.0, offset: float = 1.0):
    """SAM's stability: IoU of the mask thresholded at threshold+offset vs threshold-offset.

    logits: ...xHxW (a torch tensor or a numpy array; the answer has the same type, float32). 0
    where even the loose mask is empty.
    """
    inner = (logits > threshold + offset).sum((-1, -2))
    outer = (logits > threshold - offset).sum((-1, -2))
    if isinstance(logits, torch.Tensor):
        return (inner / outer.clamp(min=1)).float()
    return (inner / np.maximum(outer, 1)).astype(np.float32)
