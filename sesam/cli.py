"""`sesam <command>`: one entry point, subcommands owned by the packages that implement them."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from sesam import __version__

# Packages that contribute subcommands, each exposing register(subparsers).
COMMAND_MODULES = ("models.cli", "training.cli", "export.cli", "serving.cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sesam", description="Weak labels to dense segmentation with SAM.")
    parser.add_argument("--version", action="version", version=f"sesam {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as exc:
        print(f"sesam {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
