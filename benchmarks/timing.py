"""The benchmarks' one timer: the median wall time of repeated calls."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any


def median_seconds(fn: Callable[[], Any], repeats: int, warmup: bool = False) -> tuple[float, Any]:
    """(median seconds of `repeats` calls of `fn()`, the last call's result); with `warmup`, one
    untimed call first (first runs of a shape, lazy initialisation)."""
    if warmup:
        fn()
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out
