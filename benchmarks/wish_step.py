"""What a WISH step costs beside a supervised-instance step (same model, batch and images).

Both recipes are prepared on the same Penn-Fudan train images (embedding and SAM's point / box
candidates happen once, up front, and are not timed); then `--steps` optimisation steps after the
warm-up are timed in one process, alternating nothing else. The WISH rows run with the engine in
the loop where the labels need it (tags -> points every M = 4 steps, decoder only), so their mean
includes those refreshes. The baseline is supervised-instance (Mask2Former on dense masks).

Run: `python benchmarks/wish_step.py [--steps 24] [--images 24]`; writes benchmarks/results/wish_step.md.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.tables import markdown_table, write_table
from training.trainer import InstanceTrainConfig, InstanceTrainer

ROOT = Path(__file__).resolve().parents[1]
PENNFUDAN = ROOT.parent / "shared" / "data" / "pennfudan"

ROWS = {
    "supervised-instance (baseline)": ["mode=supervised-instance"],
    "wish points": ["labels=points"],
    "wish boxes": ["labels=boxes"],
    "wish tags": ["labels=tags"],
    "wish mix (1/3 each)": ["labels=mix", "label_counts=[8,8,8]"],
}


def time_steps(overrides: list[str], args: argparse.Namespace) -> np.ndarray:
    cfg = InstanceTrainConfig.from_yaml(
        ROOT / "configs" / "pennfudan_wish.yaml",
        [
            *overrides,
            f"data_root={PENNFUDAN}",
            f"train_limit={args.images}",
            "val_limit=1",
            f"input_side={args.input_side}",
            "warmup_iterations=0",
            "resume=false",
            "quiet=true",
            f"out_dir={ROOT / 'runs' / 'wish_step'}",
        ],
    )
    recipe = InstanceTrainer(cfg).recipe
    recipe.prepare()
    for it in range(args.skip):
        recipe.step(it)
    seconds = []
    for it in range(args.skip, args.skip + args.steps):
        t0 = time.perf_counter()
        recipe.step(it)
        seconds.append(time.perf_counter() - t0)
    return np.asarray(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=24, help="timed steps per row (a multiple of M = 4)")
    parser.add_argument("--skip", type=int, default=4, help="untimed steps first")
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--input-side", type=int, default=192)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "wish_step.md"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    measured = {name: time_steps(overrides, args) for name, overrides in ROWS.items()}
    base = measured["supervised-instance (baseline)"].mean()
    rows = [
        [name, f"{s.mean():.3f}", f"{np.median(s):.3f}", f"{s.max():.3f}", f"{s.mean() / base:.2f}x"]
        for name, s in measured.items()
    ]
    note = (
        f"Seconds per optimisation step, {args.steps} steps after {args.skip}, batch 4, input side "
        f"{args.input_side}, m2f-r18, {args.threads} threads, {args.images} Penn-Fudan train images; "
        "engine = the classical prior. Ratio = mean / the supervised-instance mean, measured in this run. "
        "Written by benchmarks/wish_step.py."
    )
    write_table(
        args.out, note, markdown_table(["recipe", "mean s", "median s", "max s", "vs supervised"], rows)
    )


if __name__ == "__main__":
    main()
