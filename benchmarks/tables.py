"""Result tables of the benchmarks: markdown rows, written atomically under a one-paragraph note."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from rich.console import Console

from models.io import atomic_write_text


def markdown_table(head: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """The lines of a markdown table: the header, its rule, one line per row of cells."""
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return lines + ["| " + " | ".join(cells) + " |" for cells in rows]


def write_table(path: str | Path, note: str, lines: list[str], console: Console | None = None) -> None:
    """Write `note`, a blank line and the table to `path` atomically; print the table."""
    atomic_write_text(path, note + "\n\n" + "\n".join(lines) + "\n")
    (console or Console()).print("\n".join(lines))
