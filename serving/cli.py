"""`sesam serve` (the BentoML service, as `make serve`), `sesam refine --endpoint URL` and
`sesam segment --endpoint URL`.

`register` runs after `models.jobs.cli` registered `sesam refine`; it adds the remote options to that
parser and routes runs with `--endpoint` to `serving.remote`, so the models package never imports
serving.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
from types import FrameType

from models.config import bounded

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
        ("config", "SESAM_CONFIG"),
    ):
        value = getattr(args, flag)
        if value:
            env[name] = value
    if args.sam_type:  # the server would ignore it on a prior: one line here, before it starts
        from models.jobs.cli import check_sam_type_flag
        from serving.config import ServiceConfig

        check_sam_type_flag(ServiceConfig.load(env).engine)
    return supervise(serve_command(args.host, args.port), env)


def supervise(command: list[str], env: dict[str, str], grace_s: float = 30.0) -> int:
    """Run the server in its own process group and answer with its exit status. SIGINT and SIGTERM
    are forwarded to it; whatever is left of the group after `grace_s` (or after the server exits)
    is killed, so no worker outlives `sesam serve`."""
    proc = subprocess.Popen(command, env=env, start_new_session=True)
    received: list[int] = []

    def forward(signum: int, _frame: FrameType | None) -> None:
        received.append(signum)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while True:
            try:
                code = proc.wait(timeout=grace_s if received else None)
                break
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # stragglers of the group (workers), if any
    if received and code in (0, -signal.SIGTERM, -signal.SIGINT):
        return 128 + received[0] if code < 0 else 0
    return code if code >= 0 else 128 - code


def register(subparsers: argparse._SubParsersAction) -> None:
    from models.engine.factory import ENGINE_BACKENDS  # here: importing serving.cli stays light

    p = subparsers.add_parser("serve", help="serve the HTTP API with BentoML")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=3000)
    p.add_argument("--backend", default=None, help=f"auto (default) or one of {', '.join(ENGINE_BACKENDS)}")
    p.add_argument("--sam-type", default=None)
    p.add_argument("--sam-checkpoint", default=None)
    p.add_argument("--config", default=None, help="service YAML (engine: / service: sections)")
    p.set_defaults(func=run_serve)
    refine = subparsers.choices.get("refine")
    if refine is not None:
        add_remote_refine(refine)
    segment = subparsers.choices.get("segment")
    if segment is not None:
        add_remote_options(segment, run_remote_segment)


def add_remote_refine(parser: argparse.ArgumentParser) -> None:
    """`sesam refine --endpoint URL`: the same command, run through a served /refine."""
    add_remote_options(parser, run_remote_refine)


def add_remote_options(parser: argparse.ArgumentParser, remote) -> None:
    """`--endpoint URL` and friends on a folder command: runs with it go to `remote(args)`."""
    g = parser.add_argument_group("through a running service")
    g.add_argument("--endpoint", default=None, help="service URL, e.g. http://127.0.0.1:3000")
    g.add_argument("--api-key", default=None, help="bearer key (default: $SESAM_API_KEY)")
    g.add_argument("--concurrency", type=bounded(int, 1, 256), default=4, help="requests in flight (4)")
    g.add_argument(
        "--retries",
        type=bounded(int, 0, 20),
        default=4,
        help="retries on connection errors and 500/502/503/504, at most 30 s apart (4)",
    )
    g.add_argument(
        "--timeout",
        type=bounded(float, 1),
        default=300.0,
        help="seconds to wait for one answer before it counts as a failed try (300; the server's own "
        "deadline for /refine is 120 s)",
    )
    local = parser.get_default("func")

    def run(args: argparse.Namespace) -> int:
        if args.endpoint is not None and not args.endpoint.strip():
            raise ValueError("--endpoint is empty (an unset variable?); leave it out to run in-process")
        if args.endpoint and getattr(args, "ray", None):
            raise ValueError("--endpoint and --ray: choose one (the service scales itself)")
        return remote(args) if args.endpoint else local(args)

    parser.set_defaults(func=run)


def run_remote_refine(args: argparse.Namespace) -> int:
    from models.jobs.cli import labeler_options, refine_run_from_args, report_refine_summary, stage_weak_args
    from serving.client import SesamClient
    from serving.remote import refine_folder_remote

    args.backend_name = "remote"  # the server applies its own backend's defaults
    stage_weak_args(args)  # an export is read here; the server gets schema weak labels
    run = refine_run_from_args(args, labeler_options(args))
    api_key = args.api_key or os.environ.get("SESAM_API_KEY") or None
    with SesamClient(args.endpoint, api_key=api_key, timeout_s=args.timeout, retries=args.retries) as client:
        summary = refine_folder_remote(run, client, concurrency=args.concurrency, quiet=args.quiet)
    return report_refine_summary(summary)


def run_remote_segment(args: argparse.Namespace) -> int:
    from models.jobs.cli import report_summary, segment_run_from_args
    from serving.client import SesamClient
    from serving.remote import segment_folder_remote

    run = segment_run_from_args(args)
    api_key = args.api_key or os.environ.get("SESAM_API_KEY") or None
    with SesamClient(args.endpoint, api_key=api_key, timeout_s=args.timeout, retries=args.retries) as client:
        summary = segment_folder_remote(run, client, concurrency=args.concurrency, quiet=args.quiet)
    return report_summary(summary, "segment")
