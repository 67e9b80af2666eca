"""Engine vs the official SamPredictor loop: one 480x360 image, 30 prompts.

Baseline: segment-anything's own loop, `set_image` then one `predict` per prompt.
Engine:   `embed` (content-hash cache) then ONE `predict` with all 30 prompts (batched per layout).
Warm:     the same image again, so the embedding comes from the cache (no encoder call).

Run: `python benchmarks/engine.py [--models tiny vit_b] [--repeats 3]`. Weights are random (seeded);
speed does not depend on weights. Prints a table with a ratio column against the loop.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from segment_anything import SamPredictor
from timing import median_seconds

from models.engine import Prompt, read_image
from models.engine.modeling import build_sam
from models.engine.sam_torch import SamEngine

CAMVID = Path(__file__).resolve().parents[2] / "shared" / "data" / "camvid"


def load_image() -> np.ndarray:
    """A real CamVid val frame (480x360) when present, else a seeded synthetic one."""
    val = CAMVID / "val.txt"
    if val.is_file():
        stem = val.read_text().split()[0]
        return read_image(CAMVID / "images" / "val" / f"{stem}.jpg")
    return np.random.default_rng(0).integers(0, 255, (360, 480, 3), dtype=np.uint8)


def make_prompts(h: int, w: int, n: int = 30, seed: int = 0) -> list[Prompt]:
    """A third single clicks, a third positive+negative click pairs, a third boxes."""
    rng = np.random.default_rng(seed)
    prompts = []
    for i in range(n):
        if i % 3 == 0:
            prompts.append(Prompt(points=[[rng.uniform(0, w), rng.uniform(0, h)]], labels=[1]))
        elif i % 3 == 1:
            pts = np.column_stack([rng.uniform(0, w, 2), rng.uniform(0, h, 2)])
            prompts.append(Prompt(points=pts, labels=[1, 0]))
        else:
            x0, y0 = rng.uniform(0, w / 2), rng.uniform(0, h / 2)
            prompts.append(Prompt(box=[x0, y0, x0 + rng.uniform(20, w / 2), y0 + rng.uniform(20, h / 2)]))
    return prompts


def official_loop(predictor: SamPredictor, prompts: list[Prompt]) -> list[tuple]:
    out = []
    for p in prompts:
        out.append(
            predictor.predict(point_coords=p.points, point_labels=p.labels, box=p.box, multimask_output=True)
        )
    return out


def bench_model(sam_type: str, repeats: int) -> list[dict]:
    image = load_image()
    prompts = make_prompts(*image.shape[:2])
    sam = build_sam(sam_type)
    torch.set_grad_enabled(False)

    predictor = SamPredictor(sam)
    enc_loop, _ = median_seconds(lambda: predictor.set_image(image), 1)
    official_loop(predictor, prompts[:2])  # warm-up
    dec_loop, loop_out = median_seconds(lambda: official_loop(predictor, prompts), repeats)

    engine = SamEngine(sam, name=f"sam-{sam_type}")
    enc_engine, handles = median_seconds(lambda: engine.embed([image]), 1)
    engine.predict(handles[0], prompts[:2])  # warm-up
    calls_before = engine.stats.decoder_calls
    dec_engine, engine_out = median_seconds(lambda: engine.predict(handles[0], prompts), repeats)
    decoder_calls = (engine.stats.decoder_calls - calls_before) // repeats

    encoder_calls = engine.stats.encoder_calls
    enc_warm, warm_handles = median_seconds(lambda: engine.embed([image.copy()]), 1)
    dec_warm, _ = median_seconds(lambda: engine.predict(warm_handles[0], prompts), repeats)
    assert engine.stats.encoder_calls == encoder_calls, "a cached image must not be re-encoded"

    max_diff = max(float(np.abs(engine_out.low_res_logits[i] - o[2]).max()) for i, o in enumerate(loop_out))
    iou_diff = max(float(np.abs(engine_out.iou[i] - o[1]).max()) for i, o in enumerate(loop_out))
    rows = [
        dict(
            model=sam_type,
            method="official loop (set_image + 30x predict)",
            enc=enc_loop,
            dec=dec_loop,
            enc_calls=1,
            dec_calls=len(prompts),
        ),
        dict(
            model=sam_type,
            method="engine (embed + 1 predict)",
            enc=enc_engine,
            dec=dec_engine,
            enc_calls=1,
            dec_calls=decoder_calls,
        ),
        dict(
            model=sam_type,
            method="engine, warm cache",
            enc=enc_warm,
            dec=dec_warm,
            enc_calls=0,
            dec_calls=decoder_calls,
        ),
    ]
    for row in rows:
        row["dec_ratio"] = dec_loop / row["dec"]
        row["total_ratio"] = (enc_loop + dec_loop) / (row["enc"] + row["dec"])
        row["diff"] = f"{max_diff:.1e} / {iou_diff:.1e}" if row is not rows[0] else "baseline"
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["tiny", "vit_b"])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    console = Console(width=220)
    table = Table(title=f"30 prompts on one 480x360 image, CPU, {torch.get_num_threads()} threads")
    for col in (
        "model",
        "method",
        "encoder s",
        "decoder s",
        "total s",
        "decoder x loop",
        "total x loop",
        "encoder calls",
        "decoder calls",
        "max |diff| logits / IoU",
    ):
        table.add_column(col, justify="left" if col in ("model", "method") else "right")
    for sam_type in args.models:
        console.print(f"[dim]benchmarking {sam_type} ...[/dim]")
        for r in bench_model(sam_type, args.repeats):
            table.add_row(
                r["model"],
                r["method"],
                f"{r['enc']:.3f}",
                f"{r['dec']:.3f}",
                f"{r['enc'] + r['dec']:.3f}",
                f"{r['dec_ratio']:.2f}",
                f"{r['total_ratio']:.2f}",
                str(r["enc_calls"]),
                str(r["dec_calls"]),
                r["diff"],
            )
    console.print(table)


if __name__ == "__main__":
    main()
