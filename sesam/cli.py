"""`sesam <command>`: one entry point, subcommands owned by the packages that implement them."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from models.runtime.deps import MissingDependency
from sesam import __version__

# Packages that contribute subcommands, each exposing register(subparsers).
COMMAND_MODULES = ("models.jobs.cli", "training.cli", "export.cli", "serving.cli", "sesam.settings")


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
    except KeyboardInterrupt:
        print(f"sesam {args.command}: interrupted (outputs written so far are complete)", file=sys.stderr)
        return 130
    except (ValueError, OSError, MissingDependency) as exc:  # bad input, files, missing extras
        print(f"sesam {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:  # a bug: one line, the traceback on request
        if os.environ.get("SESAM_DEBUG"):
            raise
        print(
            f"sesam {args.command}: unexpected {type(exc).__name__}: {_one_line(exc)} "
            "(set SESAM_DEBUG=1 for the traceback)",
            file=sys.stderr,
        )
        return 1


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror and exc.filename is not None:  # not "[Errno 17] ..."
        given = [n for n in (exc.filename, exc.filename2) if n is not None]
        names = [os.fsdecode(n) if isinstance(n, (str, bytes)) else str(n) for n in given]
        reason = " ".join(exc.strerror.split())
        if isinstance(exc, FileExistsError) and len(names) == 1 and not os.path.isdir(names[0]):
            reason = "already exists and is not a folder"
        return f"{' -> '.join(names)}: {reason}"
    return " ".join(str(exc).split()) or type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
