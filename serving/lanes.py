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

import threading
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


class DecodeCost:
    """What one prompt's decode costs on this server, learned from the decodes it serves, so that
    a /predict whose prompts cannot finish within its deadline is refused before it starts.

    Per prompt, seconds = `fixed` + `per_mpx` x the megapixels of the image's masks (the decoder
    itself, then the full-size masks); `fixed` is measured on the warm-up's small image with the
    prompts batched as the engine batches them (a lower bound: a single click costs more),
    `per_mpx` from every decoded chunk since (a running mean weighted towards recent chunks,
    `weight`).
    Thread-safe: lane workers report while requests read."""

    def __init__(self, weight: float = 0.2) -> None:
        self.fixed = 0.0
        self.per_mpx = 0.0
        self.weight = weight
        self._seen = False
        self._lock = threading.Lock()

    def calibrate(self, seconds_per_prompt: float) -> None:
        """The warm-up's cost per prompt on its small image: the part that does not grow with size."""
        with self._lock:
            self.fixed = max(0.0, seconds_per_prompt)

    def observe(self, seconds: float, prompts: int, pixels: int) -> None:
        """A decode of `prompts` prompts on an image of `pixels` pixels took `seconds`."""
        if prompts <= 0 or pixels <= 0:
            return
        rate = max(0.0, seconds / prompts - self.fixed) / (pixels / 1e6)
        with self._lock:
            self.per_mpx = rate if not self._seen else (1 - self.weight) * self.per_mpx + self.weight * rate
            self._seen = True

    def seconds(self, prompts: int, pixels: int) -> float:
        """The expected seconds of decoding `prompts` prompts on an image of `pixels` pixels."""
        with self._lock:
            return prompts * (self.fixed + self.per_mpx * pixels / 1e6)

    def refuse_over(self, prompts: int, pixels: int, budget_s: float, field: str = "prompts") -> None:
        """A 413 naming `field` when the expected decode is over `budget_s` (how many would fit)."""
        need = self.seconds(prompts, pixels)
        if need > budget_s:
            each = need / prompts
            fit = max(1, int(budget_s / each)) if each > 0 else prompts
            _refuse(
                field,
                f"{prompts} prompts need about {_over(need, budget_s)} s on this server ({each:.2f} s each on this image)",
                budget_s,
                f"send at most {fit} per request",
            )

    def refuse_labels_over(self, labels: int, budget_s: float, field: str) -> None:
        """A 413 naming `field` when `labels` weak labels, each decoded as at least one prompt, cannot
        be decoded within `budget_s` even at the size-independent cost alone (a lower bound, as for
        grids: nothing that could finish is refused)."""
        each = self.seconds(1, 0)
        if labels * each > budget_s:  # so each > 0
            _refuse(
                field,
                f"{labels} weak labels are at least {labels} prompts, at least {_over(labels * each, budget_s)} s on "
                "this server",
                budget_s,
                f"send at most {max(1, int(budget_s / each))} per request",
            )

    def refuse_grid_over(self, side: int, budget_s: float, field: str) -> None:
        """A 413 naming `field` when a labeler's side x side grid of point prompts cannot be decoded
        within `budget_s` even at the size-independent cost alone (the image's size is not known
        yet: a lower bound, so nothing that could finish is refused)."""
        each = self.seconds(1, 0)
        if side * side * each > budget_s:  # so each > 0
            _refuse(
                field,
                f"a {side}x{side} grid ({side * side} prompts) needs at least {_over(side * side * each, budget_s)} s on "
                "this server",
                budget_s,
                f"use at most {max(1, int((budget_s / each) ** 0.5))} per side",
            )


def _over(seconds: float, budget_s: float) -> str:
    """`seconds` (over `budget_s`) as text that reads over it: whole seconds unless that rounding
    would show the deadline itself or less (120.04 s against 120 s reads "120.04", not "120")."""
    for digits in range(4):
        text = f"{seconds:.{digits}f}"
        if float(text) > budget_s:
            return text
    return repr(seconds)


def _refuse(field: str, need: str, budget_s: float, advice: str) -> None:
    """The 413 of work that cannot finish within its deadline: what it needs, and what would fit."""
    raise ApiError(413, f"{field}: {need}, over the {budget_s:g} s deadline; {advice}", field)
