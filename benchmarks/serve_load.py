"""Loopback load on the served API: /segment (the student) and /predict on a cached embedding.

Starts `bentoml serve` four times on free ports: the shipped student from its PyTorch checkpoint
(the baseline: called in-process, one request at a time), the same with adaptive batching
(BentoML's dispatcher in front of the student), and the student's ONNX export run by ONNX Runtime
(`sesam export student`; no batching), and its static int8 graph (calibrated on 32 CamVid train
images; benchmarks/student_int8.py has its accuracy). Each gets the same bounded load: N requests at concurrency
C. Prints req/s, p50, p99 and errors per route; writes benchmarks/results/serve_load.md.

Run: `python benchmarks/serve_load.py [--requests 200] [--concurrency 16] [--backend classical]`
"""

from __future__ import annotations

import argparse
import io
import json
import os
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
        [*cmd, "--port", str(port)], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
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
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--backend", default="classical")
    parser.add_argument("--sam-type", default="tiny")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "serve_load.md"))
    args = parser.parse_args()
    images = test_images()
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
    from export.onnx_export import export_student_checkpoint
    from models.students import SHIPPED_SEMANTIC_STUDENT

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
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
