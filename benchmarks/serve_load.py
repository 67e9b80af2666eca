"""Loopback load on the served API: /segment (the student) and /predict on a cached embedding.

Starts `bentoml serve` four times on free ports: the shipped student from its PyTorch checkpoint
(the baseline: called in-process, one request at a time), the same with adaptive batching
(BentoML's dispatcher in front of the student), and the student's ONNX export run by ONNX Runtime
(`sesam export student`; no batching), and its static int8 graph (calibrated on 32 CamVid train
images; benchmarks/student_int8.py has its accuracy). Each gets the same bounded load: N requests at concurrency
C. Prints req/s, p50, p99 and errors per route; writes benchmarks/results/serve_load.md.

The heavy-neighbour part (`--part neighbour`, also in the default run) starts one more server
(the classical prior) and measures /predict on a cached embedding at concurrency 8 alone (the
baseline), then again while a 16-megapixel /embed and a 4096-point /refine run beside it. It
reports p50/p99 of both, how the heavy requests ended (status, seconds, against their deadline)
and the peak resident memory of each server process (sampled every 50 ms with psutil); writes
benchmarks/results/serve_neighbour.md.

Run: `python benchmarks/serve_load.py [--requests 200] [--concurrency 16] [--backend classical]
[--part all|students|neighbour]`
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from PIL import Image
from rich.console import Console
from rich.table import Table

from models.io import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
CAMVID = ROOT.parent / "shared" / "data" / "camvid"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int, env: dict[str, str]) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "bentoml",
        "serve",
        "serving.service:SegmentationService",
        "--host",
        "127.0.0.1",
    ]
    proc = subprocess.Popen(
        [*cmd, "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("bentoml serve exited before it was ready")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise RuntimeError("bentoml serve was not ready in 300 s")


def stop_server(proc: subprocess.Popen) -> None:
    """Stop a server from `start_server` and whatever is left of its process group."""
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def load(send, requests: int, concurrency: int) -> dict[str, float]:
    """Run `send(i)` `requests` times with `concurrency` threads; latency stats and errors."""
    latencies: list[float] = []
    errors = 0

    def one(i: int) -> None:
        nonlocal errors
        t0 = time.perf_counter()
        try:
            ok = send(i)
        except httpx.HTTPError:
            ok = False
        latencies.append(time.perf_counter() - t0)
        errors += 0 if ok else 1

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(requests)))
    wall = time.perf_counter() - started
    lat = np.asarray(latencies)
    return {
        "req_s": requests / wall,
        "p50_ms": float(np.percentile(lat, 50) * 1000),
        "p99_ms": float(np.percentile(lat, 99) * 1000),
        "errors": errors,
        "wall_s": wall,
    }


def png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def test_images(count: int = 8) -> list[bytes]:
    """CamVid val images (encoded once, as a client would hold them), else seeded noise scenes."""
    if (CAMVID / "val.txt").is_file():
        stems = (CAMVID / "val.txt").read_text().split()[:count]
        return [(CAMVID / "images" / "val" / f"{s}.jpg").read_bytes() for s in stems]
    rng = np.random.default_rng(0)
    return [png(rng.integers(0, 255, (360, 480, 3), dtype=np.uint8)) for _ in range(count)]


def run(
    batching: bool,
    args: argparse.Namespace,
    images: list[bytes],
    student: str | None = None,
    onnx_file: str = "student",
) -> dict[str, dict]:
    port = free_port()
    env = dict(
        os.environ, BENTOML_DO_NOT_TRACK="true", SESAM_BACKEND=args.backend, SESAM_SAM_TYPE=args.sam_type
    )
    env["SESAM_BATCHING"] = "1" if batching else "0"
    if student is not None:
        env["SESAM_STUDENT_CHECKPOINT"] = student
        env["SESAM_STUDENT_ONNX_FILE"] = onnx_file
    env.pop("SESAM_API_KEY", None)
    proc = start_server(port, env)
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=url, timeout=300, limits=httpx.Limits(max_connections=64)) as http:

            def segment(i: int) -> bool:
                files = {"images": ("x.jpg", images[i % len(images)], "image/jpeg")}
                return http.post("/segment", files=files).status_code == 200

            image_id = http.post("/embed", files={"image": ("x.jpg", images[0], "image/jpeg")}).json()[
                "image_id"
            ]
            rng = np.random.default_rng(0)
            clicks = rng.uniform([0, 0], [479, 359], (args.requests, 2)).round(1).tolist()

            def predict(i: int) -> bool:
                body = {
                    "image_id": image_id,
                    "prompts": [{"points": [clicks[i]], "labels": [1]}],
                    "multimask": True,
                }
                return http.post("/predict", json=body).status_code == 200

            for _ in range(4):  # warm-up: first forwards of each model are slow
                segment(0)
                predict(0)
            return {
                "/segment": load(segment, args.requests, args.concurrency),
                "/predict (cached embedding)": load(predict, args.requests, args.concurrency),
            }
    finally:
        stop_server(proc)


def big_image(side: tuple[int, int] = (3264, 4896), mirror: bool = False) -> bytes:
    """A 16-megapixel JPEG: a CamVid image upscaled (or seeded noise without CamVid), mirrored
    on request (another image, so no cache answers it)."""
    if (CAMVID / "val.txt").is_file():
        stem = (CAMVID / "val.txt").read_text().split()[0]
        img = Image.open(CAMVID / "images" / "val" / f"{stem}.jpg").convert("RGB")
    else:
        img = Image.fromarray(np.random.default_rng(1).integers(0, 255, (360, 480, 3), dtype=np.uint8))
    if mirror:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    buf = io.BytesIO()
    img.resize((side[1], side[0]), Image.Resampling.BICUBIC).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def weak_points(n: int, width: int = 480, height: int = 360, classes: int = 11) -> dict:
    rng = np.random.default_rng(0)
    xy = rng.uniform([0, 0], [width - 1, height - 1], (n, 2)).round(1)
    return {
        "points": [{"x": x, "y": y, "class_id": int(i % classes)} for i, (x, y) in enumerate(xy.tolist())]
    }


class RssSampler:
    """Peak RSS per process of a process tree, sampled in a thread."""

    def __init__(self, pid: int, every_s: float = 0.05) -> None:
        import threading

        import psutil

        self.root = psutil.Process(pid)
        self.peak: dict[str, int] = {}
        self.every_s = every_s
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        import psutil

        while not self.stop.is_set():
            try:
                procs = [self.root, *self.root.children(recursive=True)]
            except psutil.Error:
                return
            for p in procs:
                try:
                    cmd = " ".join(p.cmdline())
                    rss = p.memory_info().rss
                except psutil.Error:
                    continue
                name = "supervisor" if p.pid == self.root.pid else _role(cmd)
                self.peak[name] = max(self.peak.get(name, 0), rss)
            self.stop.wait(self.every_s)

    def __enter__(self) -> RssSampler:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def _role(cmd: str) -> str:
    for tag, name in (("sesam-heavy", "heavy lane"), ("sesam-student", "student batcher")):
        if tag in cmd:
            return name
    return "front" if "_bentoml_impl.worker" in cmd else "other"


def neighbour(args: argparse.Namespace, images: list[bytes]) -> list[str]:
    """/predict p50/p99 alone vs beside a 16 MP /embed and a 4096-point /refine; peak RSS."""
    import threading

    port = free_port()
    env = dict(os.environ, BENTOML_DO_NOT_TRACK="true", SESAM_BACKEND="classical", SESAM_BATCHING="0")
    for name in ("SESAM_API_KEY", "SESAM_CONFIG"):
        env.pop(name, None)
    proc = start_server(port, env)
    url = f"http://127.0.0.1:{port}"
    concurrency, requests = 8, args.requests
    rows: list[tuple[str, ...]] = []
    try:
        with (
            httpx.Client(base_url=url, timeout=600, limits=httpx.Limits(max_connections=64)) as http,
            RssSampler(proc.pid) as rss,
        ):
            image_id = http.post("/embed", files={"image": ("x.jpg", images[0], "image/jpeg")}).json()[
                "image_id"
            ]
            rng = np.random.default_rng(0)
            clicks = rng.uniform([0, 0], [479, 359], (100_000, 2)).round(1).tolist()

            def predict(i: int) -> bool:
                body = {"image_id": image_id, "prompts": [{"points": [clicks[i]], "labels": [1]}]}
                return http.post("/predict", json=body).status_code == 200

            for i in range(8):
                predict(i)
            alone = load(predict, requests, concurrency)
            with RssSampler(proc.pid) as embed_rss:  # the 16 MP image alone: its memory
                t0 = time.perf_counter()
                status = http.post(
                    "/embed", files={"image": ("a.jpg", big_image(), "image/jpeg")}
                ).status_code
                embed_alone = (status, time.perf_counter() - t0)
            heavy: dict[str, tuple[int, float]] = {}
            big = big_image(mirror=True)
            weak = json.dumps(weak_points(4096))

            def send_heavy(name: str, route: str, files: dict, data: dict) -> None:
                t0 = time.perf_counter()
                try:
                    status = http.post(route, files=files, data=data).status_code
                except httpx.HTTPError:
                    status = -1
                heavy[name] = (status, time.perf_counter() - t0)

            threads = [
                threading.Thread(
                    target=send_heavy,
                    args=("16 MP /embed", "/embed", {"image": ("big.jpg", big, "image/jpeg")}, {}),
                ),
                threading.Thread(
                    target=send_heavy,
                    args=(
                        "4096-point /refine",
                        "/refine",
                        {"image": ("x.jpg", images[1 % len(images)], "image/jpeg")},
                        {"weak": weak},
                    ),
                ),
            ]
            for t in threads:
                t.start()
            time.sleep(0.5)  # both heavy requests are in the server
            beside = load(predict, requests, concurrency)
            for t in threads:
                t.join()
            info = http.post("/info").json()
        deadline = info["limits"]["request_timeout_s"]
        rows.append(("/predict alone (baseline)", *_cols(alone), "1.00x"))
        rows.append(
            (
                "/predict beside 16 MP /embed + 4096-point /refine",
                *_cols(beside),
                f"{beside['p99_ms'] / alone['p99_ms']:.2f}x",
            )
        )
    finally:
        stop_server(proc)
    header = ("requests", "req/s", "p50 ms", "p99 ms", "errors", "p99 vs alone")
    title = (
        f"/predict on a cached embedding, {requests} requests at concurrency {concurrency}, classical prior, "
        f"{os.cpu_count()} CPU cores"
    )
    lines = [title, "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines += [
        "",
        f"Heavy requests (deadline {deadline} s):",
        "",
        "| request | status | seconds |",
        "|---|---|---|",
    ]
    lines += [f"| {name} | {status} | {secs:.1f} |" for name, (status, secs) in heavy.items()]
    lines += [
        "",
        f"A 16 MP /embed alone: status {embed_alone[0]}, {embed_alone[1]:.1f} s.",
        "",
        "Peak resident memory per server process (whole run; during the 16 MP /embed alone):",
        "",
        "| process | peak RSS MiB, whole run | peak RSS MiB, 16 MP /embed alone |",
        "|---|---|---|",
    ]
    lines += [
        f"| {name} | {peak / 2**20:.0f} | {embed_rss.peak.get(name, 0) / 2**20:.0f} |"
        for name, peak in sorted(rss.peak.items())
    ]
    table = Table(title=title)
    for col in header:
        table.add_column(col)
    for r in rows:
        table.add_row(*r)
    Console().print(table)
    print("\n".join(lines[len(rows) + 4 :]))
    return lines


def _cols(r: dict) -> tuple[str, ...]:
    return (f"{r['req_s']:.2f}", f"{r['p50_ms']:.0f}", f"{r['p99_ms']:.0f}", str(r["errors"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--backend", default="classical")
    parser.add_argument("--sam-type", default="tiny")
    parser.add_argument("--part", choices=("all", "students", "neighbour"), default="all")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "serve_load.md"))
    parser.add_argument(
        "--neighbour-out", default=str(ROOT / "benchmarks" / "results" / "serve_neighbour.md")
    )
    args = parser.parse_args()
    images = test_images()
    if args.part in ("all", "neighbour"):
        atomic_write_text(Path(args.neighbour_out), "\n".join(neighbour(args, images)) + "\n")
        if args.part == "neighbour":
            return
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
    from export.onnx_export import export_student_checkpoint
    from models.students.semantic import SHIPPED_SEMANTIC_STUDENT

    onnx_dir = ROOT / "runs" / "serve_load_student_onnx"
    export_student_checkpoint(SHIPPED_SEMANTIC_STUDENT, onnx_dir)
    from export.quantize import quantize_student
    from models.engine import read_image

    calibration = [
        read_image(CAMVID / "images" / "train" / f"{s}.jpg")
        for s in (CAMVID / "train.txt").read_text().split()[:32]
    ]
    quantize_student(onnx_dir, "static", calibration)  # train images only
    results = {"PyTorch student, no batching (baseline)": run(False, args, images)}
    results["PyTorch student, adaptive batching"] = run(True, args, images)
    results["ONNX Runtime student (export), no batching"] = run(False, args, images, str(onnx_dir))
    results["ONNX Runtime student, static int8 (-0.43 mIoU), no batching"] = run(
        False, args, images, str(onnx_dir), "student_int8"
    )
    title = (
        f"{args.requests} requests at concurrency {args.concurrency}, loopback, backend {args.backend}, "
        f"{os.cpu_count()} CPU cores; /segment on {len(images)} CamVid val images (shipped student)"
    )
    table = Table(title=title)
    header = ("route", "server", "req/s", "p50 ms", "p99 ms", "errors", "speed-up")
    for col in header:
        table.add_column(col)
    lines = [title, "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    base = results["PyTorch student, no batching (baseline)"]
    for route in base:
        for server, by_route in results.items():
            r = by_route[route]
            row = (
                route,
                server,
                f"{r['req_s']:.2f}",
                f"{r['p50_ms']:.0f}",
                f"{r['p99_ms']:.0f}",
                str(r["errors"]),
                f"{r['req_s'] / base[route]['req_s']:.2f}x",
            )
            table.add_row(*row)
            lines.append("| " + " | ".join(row) + " |")
    Console().print(table)
    atomic_write_text(args.out, "\n".join(lines) + "\n")
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
