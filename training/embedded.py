"""Training images embedded once by the engine, held by content key within the engine's cache budget.

SAM in the loop decodes many times from embeddings computed once. Holding every image's embedding
in the recipe (an `ImageHandle` keeps its payload alive) would put them outside the cache's byte
budget: 4 MiB per image for SAM ViT, about 42 GB for a VOC-size folder. Here the recipe keeps only
the keys; the engine's LRU cache owns the embeddings and its `cache_bytes` bounds them. When the
set fits the budget (said up front) nothing is ever re-encoded; when it does not, an evicted image
is re-encoded the next time it is needed, and `reencoded` counts those encodings.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from models.engine import EngineConfig, ImageHandle


def engine_config(values: dict[str, Any], device: torch.device) -> EngineConfig:
    """A recipe's engine settings with the training device as SAM's, unless they name a device
    (SAM and the student on one device; the embeddings stay in the cache on it)."""
    return EngineConfig.from_mapping({"device": str(device)} | dict(values), source="engine settings")


class EmbeddedImages:
    """`count` images, loaded by `load(i)`, embedded by `engine` (a `CachedSegmenter`)."""

    def __init__(self, engine, load: Callable[[int], np.ndarray]) -> None:
        self.engine = engine
        self.load = load
        self.keys: dict[int, str] = {}
        self.nbytes = 0  # the embeddings' total size, as the cache counts it
        self.reencoded = 0

    def embed(self, indices: list[int], images: list[np.ndarray] | None = None) -> list[ImageHandle]:
        """Embed images `indices` (given, or loaded) in one engine call; returns their handles for
        immediate use (do not keep them: a handle holds its embedding)."""
        images = images if images is not None else [self.load(i) for i in indices]
        handles = self.engine.embed(images)
        for i, handle in zip(indices, handles, strict=True):
            if i not in self.keys:
                self.nbytes += self.engine.payload_nbytes(handle.payload)
            self.keys[i] = handle.key
        return handles

    @property
    def budget(self) -> int:
        return self.engine.cache.max_bytes

    @property
    def fits(self) -> bool:
        """Whether every embedding fits the engine's cache budget (then nothing is re-encoded)."""
        return self.nbytes <= self.budget

    def budget_note(self) -> str | None:
        """One line when the embeddings exceed the cache budget, else None."""
        if self.fits:
            return None
        gib = 1024**3
        return (
            f"the embeddings of {len(self.keys)} images take {self.nbytes / gib:.2f} GiB, over the engine's "
            f"cache_bytes ({self.budget / gib:.2f} GiB): evicted images are re-encoded when next refined "
            "(raise engine.cache_bytes to keep them all)"
        )

    def handle(self, index: int) -> ImageHandle:
        """Image `index`'s handle from the cache, re-encoding it when it was evicted."""
        key = self.keys[index]
        if self.engine.cache.get(key) is not None:  # touches its recency in the LRU
            return self.engine.lookup(key)
        self.reencoded += 1
        return self.engine.embed([self.load(index)])[0]


def check_reencoding(engine, embedded: EmbeddedImages, calls_after_prepare: int) -> None:
    """SAM in the loop encoded only evicted images, and none at all when every embedding fit."""
    calls = engine.stats.encoder_calls - calls_after_prepare
    assert calls == embedded.reencoded, f"SAM in the loop encoded {calls} times, {embedded.reencoded} evicted"
    assert not embedded.fits or calls == 0, f"SAM in the loop re-encoded {calls} times"
