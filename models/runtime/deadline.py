"""A cooperative deadline for long work: set it around a request, check it between chunks.

`with deadline(seconds): ...` sets a deadline for the code inside (per thread: a contextvar);
`check_deadline()` raises `DeadlineExceeded` once it has passed. Decoders and labelers call it
between chunks of prompts, so a request past its deadline stops at its next chunk and frees its
worker. Without a deadline set, `check_deadline` costs one lookup and does nothing.
"""

from __future__ import annotations

import contextlib
import contextvars
import time
from collections.abc import Iterator

_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar("sesam_deadline", default=None)


class DeadlineExceeded(TimeoutError):
    """The work ran past the deadline set around it."""


@contextlib.contextmanager
def deadline(seconds: float | None) -> Iterator[None]:
    """Work inside must finish within `seconds` from now (None: no deadline); nested deadlines
    keep the earlier one."""
    if seconds is None:
        yield
        return
    end = time.monotonic() + float(seconds)
    outer = _DEADLINE.get()
    token = _DEADLINE.set(end if outer is None else min(outer, end))
    try:
        yield
    finally:
        _DEADLINE.reset(token)


def remaining() -> float | None:
    """Seconds left before the deadline (negative once past), None when none is set."""
    end = _DEADLINE.get()
    return None if end is None else end - time.monotonic()


def check_deadline() -> None:
    """Raise DeadlineExceeded when the current deadline has passed."""
    end = _DEADLINE.get()
    if end is not None and time.monotonic() > end:
        raise DeadlineExceeded(f"ran {time.monotonic() - end:.1f} s past its deadline")
