"""WISH instance students on Penn-Fudan: supervised vs tags / points / boxes, equal-budget mixes, ablations.

Every row trains the same student (`m2f-r18`: Mask2Former with a ResNet-18, random init), with the
same iterations, batch, input side and learning rate, on Penn-Fudan train (136 images; every fifth
sorted image is val), and reports COCO mask AP / AP50 on Penn-Fudan val (34 images, 84 people) as
mean ± std over seeds (each seed changes the initial weights, the batches and the protocols'
draws). The engine is the classical prior (no SAM weights here); the prompt latents come from a
seeded random SAM prompt encoder. Weak labels are derived from the masks by `training.budget`.

Rows:
- supervised: dense masks on every image (the upper bound);
- tags / points / boxes: that kind on every train image (costs 136 / 816 / 1632 tag units);
- at one budget zeta = 136 (tags on every image, the paper's protocol: Eq. 21, 1:6:12):
  points@136 (22 images), boxes@136 (11), tags+points (76 tags, 10 points), tags+boxes (76, 5);
- at zeta = 816 (points on every image), where boxes alone already teach something: boxes@816
  (68 images) against tags+boxes@816 (72 tags + 62 boxes);
- ablations as the paper's Table 4, on `--ablation-base` labels: no L_prompt, the SAM level fixed
  to 1 / 2 / 3 instead of the min over the three, no L_self.

Why Penn-Fudan: its people are large (a from-scratch student learns them within a CPU budget),
while CamVid things are mostly poles and signs tens of pixels wide. One class is always present,
so image tags carry no class contrast for the CAM: the tags rows show what tags alone can do when
the CAM has nothing to contrast (docs/wish.md discusses it).

Run: `python benchmarks/train_wish.py [--iterations 400] [--seeds 0 1 2] [--workers 2] [--rows ...]`.
Runs live under runs/wish/<row>_seed<n>/ and a finished run is reported again, not re-trained (the
benchmark is resumable: rerun it after an interruption). Writes benchmarks/results/train_wish.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from rich.console import Console

from benchmarks.tables import markdown_table, write_table

ROOT = Path(__file__).resolve().parents[1]
PENNFUDAN = ROOT.parent / "shared" / "data" / "pennfudan"
BUDGET = 136  # tags on every Penn-Fudan train image

# row -> (what the row is, settings)
ROWS: dict[str, tuple[str, dict[str, str]]] = {
    "supervised": ("dense masks, 136 images", {"mode": "supervised-instance"}),
    "tags": ("tags, 136 images (cost 136)", {"labels": "tags"}),
    "points": ("points, 136 images (cost 816)", {"labels": "points"}),
    "boxes": ("boxes, 136 images (cost 1632)", {"labels": "boxes"}),
    "points@136": ("points, 22 images (cost 132)", {"labels": "points", "budget": str(BUDGET)}),
    "boxes@136": ("boxes, 11 images (cost 132)", {"labels": "boxes", "budget": str(BUDGET)}),
    "tags+points@136": (
        "76 tags + 10 points (cost 136)",
        {"labels": "mix", "label_counts": "[76,10,0]", "budget": str(BUDGET)},
    ),
    "tags+boxes@136": (
        "76 tags + 5 boxes (cost 136)",
        {"labels": "mix", "label_counts": "[76,0,5]", "budget": str(BUDGET)},
    ),
    # a budget where boxes alone already teach something: 6 x 136 (points on every image)
    "boxes@816": ("boxes, 68 images (cost 816)", {"labels": "boxes", "budget": str(6 * BUDGET)}),
    "tags+boxes@816": (
        "72 tags + 62 boxes (cost 816)",
        {"labels": "mix", "label_counts": "[72,0,62]", "budget": str(6 * BUDGET)},
    ),
}
ABLATIONS: dict[str, tuple[str, dict[str, str]]] = {
    "no L_prompt": ("prompt head off (cost and loss)", {"use_prompt": "false"}),
    "SAM level 1": ("candidate 1 always", {"sam_level": "1"}),
    "SAM level 2": ("candidate 2 always", {"sam_level": "2"}),
    "SAM level 3": ("candidate 3 always", {"sam_level": "3"}),
    "no L_self": ("L_self off", {"use_self": "false"}),
}


def all_rows(base: str) -> dict[str, tuple[str, dict[str, str]]]:
    rows = dict(ROWS)
    for name, (what, settings) in ABLATIONS.items():
        rows[f"{base}: {name}"] = (what, dict(ROWS[base][1]) | settings)
    return rows


def run_dir(row: str, seed: int) -> Path:
    safe = row.replace(": ", "-").replace(" ", "_").replace("+", "_").replace("@", "_at")
    return ROOT / "runs" / "wish" / f"{safe}_seed{seed}"


def run(row: str, settings: dict[str, str], seed: int, args: argparse.Namespace) -> dict:
    out = run_dir(row, seed)
    summary = out / "summary.json"
    if summary.exists():
        return json.loads(summary.read_text())
    overrides = dict(settings) | {
        "data_root": str(PENNFUDAN),
        "seed": str(seed),
        "label_seed": str(seed),
        "iterations": str(args.iterations),
        "warmup_iterations": str(args.warmup),
        "input_side": str(args.input_side),
        "eval_every": str(args.iterations),
        "out_dir": str(out),
        "quiet": "true",
    }
    command = [
        sys.executable,
        "-m",
        "sesam.cli",
        "train",
        "--config",
        str(ROOT / "configs" / "pennfudan_wish.yaml"),
    ]
    for key, value in overrides.items():
        command += ["--set", f"{key}={value}"]
    env = os.environ | {"OMP_NUM_THREADS": str(args.threads), "BENTOML_DO_NOT_TRACK": "true"}
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "log.txt", "a") as log:
        done = subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"{row} seed {seed} failed; see {out / 'log.txt'}")
    return json.loads(summary.read_text())


def mean_std(values: list[float]) -> str:
    v = 100 * np.asarray(values, dtype=float)
    return f"{v.mean():.1f} ± {v.std():.1f}" if len(v) > 1 else f"{v.mean():.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--iterations", type=int, default=400)
    parser.add_argument("--warmup", type=int, default=100, help="WISH's L_cam-only warm-up (iterations)")
    parser.add_argument("--input-side", type=int, default=192)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--workers", type=int, default=2, help="runs at once (each on --threads threads)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--ablation-base", default="points", choices=sorted(ROWS))
    parser.add_argument("--rows", nargs="+", default=None, help="only these rows (names as printed)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "train_wish.md"))
    args = parser.parse_args()
    rows = all_rows(args.ablation_base)
    names = args.rows or list(rows)
    unknown = sorted(set(names) - set(rows))
    if unknown:
        parser.error(f"unknown rows {unknown}; choose from {list(rows)}")
    jobs = [(name, seed) for name in names for seed in args.seeds]
    started = time.time()
    results: dict[tuple[str, int], dict] = {}
    with ThreadPoolExecutor(args.workers) as pool:
        futures = {pool.submit(run, name, rows[name][1], seed, args): (name, seed) for name, seed in jobs}
        for future in futures:
            name, seed = futures[future]
            results[(name, seed)] = future.result()
            val = results[(name, seed)]["val"]
            print(
                f"{name} seed {seed}: AP {100 * val['AP']:.1f} AP50 {100 * val['AP50']:.1f} ({time.time() - started:.0f} s)"
            )
    table = []
    for name in names:
        runs = [results[(name, s)] for s in args.seeds]
        first = runs[0]
        table.append(
            [
                name,
                rows[name][0],
                mean_std([r["val"]["AP"] for r in runs]),
                mean_std([r["val"]["AP50"] for r in runs]),
                " / ".join(f"{100 * r['val']['AP50']:.1f}" for r in runs),
                f"{np.mean([r['seconds_per_iter'] for r in runs]):.2f}",
                str(first.get("engine") or "-"),
            ]
        )
    head = ["row", "labels", "mask AP", "AP50", "AP50 per seed", "s/iter", "engine"]
    note = (
        f"Penn-Fudan val (34 images, 84 people), COCO mask AP x 100, mean ± std over seeds {args.seeds}; "
        f"student m2f-r18 (Mask2Former, ResNet-18, random init), {args.iterations} iterations, batch 4, "
        f"input side {args.input_side}, lr 1e-4, WISH warm-up {args.warmup} iterations; engine = the "
        "classical prior (no SAM weights), prompt latents from a seeded random SAM prompt encoder. "
        f"Ablations on the `{args.ablation_base}` row. Written by benchmarks/train_wish.py."
    )
    write_table(args.out, note, markdown_table(head, table), Console())


if __name__ == "__main__":
    main()
