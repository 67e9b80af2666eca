"""Start-up failures end the server, fast, with one clear line and a non-zero exit.

`bentoml serve` runs a supervisor (circus) that respawns a worker whose start-up raised, forever:
a broken checkpoint would crash-loop a server that never exits. Here a worker whose models fail to
load writes one line to stderr and to a file the supervisor process named (`SESAM_FATAL_FILE`,
set when the supervisor imported this module), asks the supervisor to stop (SIGTERM), and exits;
the supervisor's exit hook then prints the line again and exits with status 3. A configuration
error is caught earlier, when the supervisor imports the service: status 2.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

FATAL_ENV = "SESAM_FATAL_FILE"
PREFIX = "sesam: start-up failed: "
_watching: int | None = None  # the pid whose exit hook is registered (a fork inherits the value)


def is_worker() -> bool:
    """Whether this process is a BentoML worker (not the `bentoml serve` supervisor)."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    return bool(spec and spec.name.startswith("_bentoml_impl.worker"))


def watch_for_fatal_workers() -> None:
    """In the supervisor: name the fatal file for the workers and exit 3 when one wrote it. A file
    named by another process (inherited from a parent that imported the service too: a notebook, a
    test run) is replaced, else this server's start-up failures would end that parent instead."""
    global _watching
    if is_worker() or _watching == os.getpid():  # a worker, or this process watches already
        return
    _watching = os.getpid()
    path = Path(tempfile.gettempdir()) / f"sesam-fatal-{os.getpid()}"
    path.unlink(missing_ok=True)
    os.environ[FATAL_ENV] = str(path)

    def exit_if_fatal() -> None:
        if path.is_file():
            line = path.read_text().strip()
            path.unlink(missing_ok=True)
            print(line, file=sys.stderr, flush=True)
            os._exit(3)

    atexit.register(exit_if_fatal)


def fail(message: str, code: int = 3) -> None:
    """One line on stderr; in a worker also stop the supervisor; then exit with `code`."""
    line = PREFIX + " ".join(str(message).split())
    fatal = os.environ.get(FATAL_ENV)
    if not is_worker():
        print(line, file=sys.stderr, flush=True)
        raise SystemExit(code)
    if fatal:  # the supervisor prints it as it exits
        with contextlib.suppress(OSError):
            Path(fatal).write_text(line + "\n")
    else:
        print(line, file=sys.stderr, flush=True)
    with contextlib.suppress(OSError):
        os.kill(os.getppid(), signal.SIGTERM)
    os._exit(code)


@contextlib.contextmanager
def guard(what: str) -> Iterator[None]:
    """Run a service's start-up; any exception ends the whole server (see module doc)."""
    try:
        yield
    except Exception as exc:
        fail(f"{what}: {type(exc).__name__}: {exc}")
