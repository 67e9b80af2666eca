"""Is the served prior interactive? /embed and one-prompt /predict latency, one client at a time.

For each backend (default: the classical prior and the previous prior, `classical-regions`, in the
same run) starts `bentoml serve` without adaptive batching, then, over loopback:
- /embed of each of `--images` CamVid val images (480x360; every one new to the cache);
- /predict on the first image's cached embedding, one prompt per call, multimask on: `--clicks`
  single positive clicks at seeded random places, then a session of `--clicks` calls whose prompt
  grows by one click each (two positive for one negative, scattered at random: a stress case, real
  clicks sit on one object).
Prints p50 / p99 per route; writes benchmarks/results/interactive_latency.md. Targets of issue 14:
/predict p50 <= 150 ms, /embed p50 <= 1 s on this machine.

Run: `python benchmarks/interactive_latency.py [--backends classical classical-regions]`.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import httpx
import numpy as np
from rich.console import Console
from serve_load import free_port, start_server, test_images
from tables import markdown_table, write_table

ROOT = Path(__file__).resolve().parents[1]


def percentiles(seconds: list[float]) -> tuple[float, float]:
    ms = 1000 * np.asarray(seconds)
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def measure(backend: str, images: list[bytes], clicks: int) -> dict[str, tuple[float, float]]:
    port = free_port()
    env = dict(os.environ, BENTOML_DO_NOT_TRACK="true", SESAM_BACKEND=backend, SESAM_BATCHING="0")
    env.pop("SESAM_API_KEY", None)
    proc = start_server(port, env)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as http:
            embeds, image_ids = [], []
            for data in images:
                t0 = time.perf_counter()
                reply = http.post("/embed", files={"image": ("x.jpg", data, "image/jpeg")})
                embeds.append(time.perf_counter() - t0)
                reply.raise_for_status()
                image_ids.append(reply.json()["image_id"])
            rng = np.random.default_rng(0)
            points = rng.uniform([20, 20], [460, 340], (clicks, 2)).round(1).tolist()
            singles = []
            for point in points:  # one positive click, anywhere
                body = {
                    "image_id": image_ids[0],
                    "prompts": [{"points": [point], "labels": [1]}],
                    "multimask": True,
                }
                t0 = time.perf_counter()
                reply = http.post("/predict", json=body)
                singles.append(time.perf_counter() - t0)
                reply.raise_for_status()
            predicts = []
            for k in range(1, clicks + 1):
                body = {
                    "image_id": image_ids[0],
                    "prompts": [{"points": points[:k], "labels": [int(i % 3 != 2) for i in range(k)]}],
                    "multimask": True,
                }
                t0 = time.perf_counter()
                reply = http.post("/predict", json=body)
                predicts.append(time.perf_counter() - t0)
                reply.raise_for_status()
            return {
                "/embed": percentiles(embeds),
                "/predict, one click": percentiles(singles),
                "/predict, click session": percentiles(predicts),
            }
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", default=["classical", "classical-regions"])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--clicks", type=int, default=40)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "interactive_latency.md"))
    args = parser.parse_args()
    images = test_images(args.images)
    table = []
    for backend in args.backends:
        for route, (p50, p99) in measure(backend, images, args.clicks).items():
            table.append([backend, route, f"{p50:.0f}", f"{p99:.0f}"])
            Console().print(" | ".join(table[-1]))
    note = (
        f"Loopback, one client, no adaptive batching; /embed: {args.images} CamVid val images (480x360, each "
        f"new); /predict on a cached embedding, one prompt, multimask: {args.clicks} single clicks, then a "
        f"session of 1..{args.clicks} scattered clicks. `classical` is the weight-free prior, `classical-regions` the previous one. "
        "2 CPU cores; compare rows of one run."
    )
    write_table(args.out, note, markdown_table(["backend", "route", "p50 ms", "p99 ms"], table))


if __name__ == "__main__":
    main()
