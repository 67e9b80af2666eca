"""Lanes: bounded pools of worker threads with a bounded queue and a deadline per request.

A lane runs blocking work (a decode, a student forward) off the event loop. At most `slots`
requests compute at once and at most `queue` more wait; one more is refused at once with 503 and
`Retry-After` (nothing queues without bound). Every request carries a deadline from its arrival:
waiting counts against it, and the work itself runs under `models.runtime.deadline.deadline`, so labelers
and decoders stop at their next chunk once it passes (504). The expensive work (image encodings,
/refine) does not run in a lane of this process at all but in the `HeavyLane` service, a second
process at lower CPU priority (docs/serving.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

import anyio
import anyio.to_thread

from models.runtime.deadline import DeadlineExceeded, deadline
from serving.errors import ApiError

T = TypeVar("T")


class Lane:
    """`slots` requests compute at once, `queue` more wait, the rest get 503 with Retry-After."""

    def __init__(self, name: str, slots: int, queue: int, retry_after_s: int = 2) -> None:
        self.name = name
        self.slots = int(slots)
        self.queue = int(queue)
        self.retry_after_s = int(retry_after_s)
        self._limiter: anyio.CapacityLimiter | None = None  # made on the event loop's first use
        self.waiting = 0
        self.running = 0
        self.refused = 0
        self.timed_out = 0

    @property
    def limiter(self) -> anyio.CapacityLimiter:
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(self.slots)
        return self._limiter

    def busy(self, why: str) -> ApiError:
        self.refused += 1
        return ApiError(
            503,
            f"busy: {why}; retry after {self.retry_after_s} s",
            None,
            {"Retry-After": str(self.retry_after_s)},
        )

    async def run(self, func: Callable[..., T], *args: Any, budget_s: float, **kwargs: Any) -> T:
        """`func(*args, **kwargs)` on a worker thread of this lane, within `budget_s` seconds of now."""
        start = time.monotonic()
        if self.running >= self.slots and self.waiting >= self.queue:
            raise self.busy(f"the {self.name} lane has {self.running} running and {self.waiting} waiting")
        self.waiting += 1
        try:
            with anyio.fail_after(budget_s):
                await self.limiter.acquire()
        except TimeoutError:
            self.timed_out += 1
            raise self.busy(f"no {self.name} slot freed within the {budget_s:g} s deadline") from None
        finally:
            self.waiting -= 1
        self.running += 1
        try:
            left = budget_s - (time.monotonic() - start)
            if left <= 0:
                raise DeadlineExceeded(f"deadline of {budget_s:g} s passed while waiting")
            return await anyio.to_thread.run_sync(partial(within, left, func, *args, **kwargs))
        except DeadlineExceeded as exc:
            self.timed_out += 1
            raise ApiError(504, f"deadline exceeded: {exc}") from None
        finally:
            self.running -= 1
            self.limiter.release()

    def info(self) -> dict[str, int | str]:
        return {
            "slots": self.slots,
            "queue": self.queue,
            "running": self.running,
            "waiting": self.waiting,
            "refused": self.refused,
            "timed_out": self.timed_out,
        }


def within(budget_s: float, func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """`func` under a cooperative deadline of `budget_s` seconds (checked between chunks)."""
    with deadline(budget_s):
        return func(*args, **kwargs)
