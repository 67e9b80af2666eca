"""Optional dependencies: one error type for a missing one, naming the extra that installs it."""

from __future__ import annotations

import importlib
from types import ModuleType


class MissingDependency(RuntimeError):
    """An optional package (or the hardware it needs) is missing; the message says what to install."""


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """Import `module` or raise MissingDependency naming the `sesam[extra]` that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependency(
            f"{purpose} needs {module.split('.')[0]}, which is not installed: pip install 'sesam[{extra}]'"
        ) from exc
