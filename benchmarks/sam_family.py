"""The SAM family behind one engine, side by side in one run: encoder and decoder time and cache
bytes per image, with SAM 1 ViT-B (the torch backend) as the baseline.

Each engine embeds one 480x360 CamVid val frame `--repeats` times (cache cleared between, median
kept), then decodes one click (multimask) and a batch of 16 clicks in one call (median of
`--repeats`). Weights are random and seeded: speed does not depend on them, so these rows say
nothing about quality. Writes benchmarks/results/sam_family.md.

Run: `python benchmarks/sam_family.py [--engines vit_b sam2.1_hiera_t sam2.1_hiera_b+ efficientvit-sam-l0]
[--repeats 3]`
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine import load_image  # noqa: E402 (benchmarks/ is not a package)
from tables import markdown_table, write_table  # noqa: E402

from models.engine import Prompt  # noqa: E402


def build(name: str):
    """A random-weight engine by name: SAM 1 types through the torch backend, SAM 2.1 through sam2,
    EfficientViT-SAM through the light backend."""
    from models.engine.light_sam import LIGHT_TYPES, LightSamEngine, build_light_sam
    from models.engine.modeling.sam2_build import build_sam2_model, is_sam2_type

    if name in LIGHT_TYPES:
        return LightSamEngine(build_light_sam(name), name=name)
    if is_sam2_type(name):
        from models.engine.sam2_torch import Sam2Engine

        return Sam2Engine(build_sam2_model(name, None, random_seed=0), name=name)
    from models.engine.modeling.build import build_sam
    from models.engine.sam_torch import SamEngine

    torch.manual_seed(0)
    return SamEngine(build_sam(name, None), name=name)  # no checkpoint: random init


def median_s(call, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(name: str, image: np.ndarray, repeats: int) -> dict[str, float]:
    engine = build(name)
    params = sum(p.numel() for p in engine.model.parameters()) / 1e6

    def embed() -> None:
        engine.cache.clear()
        engine.embed([image])

    encode = median_s(embed, repeats)
    handle = engine.embed([image])[0]
    rng = np.random.default_rng(0)
    h, w = image.shape[:2]
    clicks = [Prompt(points=rng.uniform([0, 0], [w, h], (1, 2)), labels=[1]) for _ in range(16)]
    one = median_s(lambda: engine.predict(handle, clicks[:1]), repeats)
    many = median_s(lambda: engine.predict(handle, clicks), repeats)
    return {
        "params": params,
        "encode": encode,
        "one": one,
        "many": many,
        "cache": engine.payload_nbytes(handle.payload) / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--engines", nargs="+", default=["vit_b", "sam2.1_hiera_t", "sam2.1_hiera_b+", "efficientvit-sam-l0"]
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "sam_family.md"))
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    image = load_image()
    results = {}
    for name in args.engines:
        results[name] = measure(name, image, args.repeats)
        print(name, {k: round(v, 3) for k, v in results[name].items()}, flush=True)
    base = results[args.engines[0]]
    rows = [
        [
            name + (" (baseline)" if name == args.engines[0] else ""),
            f"{r['params']:.0f} M",
            f"{1000 * r['encode']:.0f}",
            f"{base['encode'] / r['encode']:.2f}x",
            f"{1000 * r['one']:.0f}",
            f"{1000 * r['many'] / 16:.1f}",
            f"{r['cache']:.0f}",
        ]
        for name, r in results.items()
    ]
    head = [
        "engine (torch, random weights)",
        "params",
        "encoder ms / image",
        "encoder speed vs baseline",
        "decoder ms, 1 click",
        "decoder ms / click, 16 in one call",
        "cache MiB / image",
    ]
    note = (
        f"One 480x360 CamVid val frame; median of {args.repeats}; {torch.get_num_threads()} CPU threads; "
        "seeded random weights (speed only). Decoder times include upsampling the masks to the image and "
        "their stability scores. Compare rows of one run."
    )
    write_table(args.out, note, markdown_table(head, rows))


if __name__ == "__main__":
    main()
