from __future__ import annotations

import numpy as np
import pytest

from models.engine import EmbeddingCache, content_key


def test_lru_eviction_by_bytes() -> None:
    cache = EmbeddingCache(max_bytes=100)
    cache.put("a", 1, 40)
    cache.put("b", 2, 40)
    assert cache.get("a") == 1  # a is now most recent
    cache.put("c", 3, 40)  # evicts b
    assert "b" not in cache and cache.get("a") == 1 and cache.get("c") == 3
    assert cache.nbytes == 80 and cache.evictions == 1
    info = cache.info()
    assert info["hits"] == 3 and info["misses"] == 0 and info["entries"] == 2


def test_oversized_entry_is_not_stored() -> None:
    cache = EmbeddingCache(max_bytes=10)
    cache.put("big", 1, 11)
    assert cache.get("big") is None and cache.misses == 1 and cache.nbytes == 0


def test_replacing_a_key_keeps_bytes_right() -> None:
    cache = EmbeddingCache(max_bytes=100)
    cache.put("a", 1, 60)
    cache.put("a", 2, 30)
    assert cache.nbytes == 30 and cache.get("a") == 2


def test_negative_budget() -> None:
    with pytest.raises(ValueError, match="max_bytes must be >= 0"):
        EmbeddingCache(-1)


def test_content_key_depends_on_pixels_shape_and_namespace() -> None:
    a = np.zeros((4, 6, 3), np.uint8)
    assert content_key(a) == content_key(a.copy())
    assert content_key(a) != content_key(a.reshape(6, 4, 3))
    b = a.copy()
    b[0, 0, 0] = 1
    assert content_key(a) != content_key(b)
    assert content_key(a, "sam-vit_b") != content_key(a, "classical")
