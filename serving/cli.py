"""`sesam serve`: run the BentoML service (the same as `make serve`)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

SERVICE = "serving.service:SegmentationService"


def serve_command(host: str, port: int) -> list[str]:
    """The `bentoml serve` command line for this project's service (used by the CLI and the tests)."""
    return [sys.executable, "-m", "bentoml", "serve", SERVICE, "--host", host, "--port", str(port)]


def run_serve(args: argparse.Namespace) -> int:
    env = dict(os.environ, BENTOML_DO_NOT_TRACK="true")
    for flag, name in (
        ("backend", "SESAM_BACKEND"),
        ("sam_type", "SESAM_SAM_TYPE"),
        ("sam_checkpoint", "SESAM_SAM_CHECKPOINT"),
    ):
        value = getattr(args, flag)
        if value:
            env[name] = value
    return subprocess.call(serve_command(args.host, args.port), env=env)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("serve", help="serve the HTTP API with BentoML")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=3000)
    p.add_argument("--backend", default=None, help="auto (default), classical or torch")
    p.add_argument("--sam-type", default=None)
    p.add_argument("--sam-checkpoint", default=None)
    p.set_defaults(func=run_serve)
