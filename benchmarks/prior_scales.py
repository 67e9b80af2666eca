"""Choose the previous prior's (`classical-regions`) Felzenszwalb scales on CamVid TRAIN (val only reports).

The rule, fixed before the sweep ran: among the candidate scale triples, keep those whose SeSAM
added-label precision is >= 85 % for every weak kind (points, scribbles, coarse), and pick the one
with the highest mean SeSAM mIoU over the three kinds. Scored on a seeded random subset of the
train split (`--images`, default 120 of 367), weak labels derived by protocol with seed 0.

Run: `python benchmarks/prior_scales.py`; writes benchmarks/results/prior_scales.md (atomically,
after every candidate, so an interrupted sweep resumes where it stopped).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from refine_camvid import CAMVID, KINDS, fmt, load_split, score_refinement
from rich.console import Console
from tables import markdown_table, write_table

from models.engine import EngineConfig, build_engine
from models.io import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
CANDIDATES = (
    "60,200,600",  # the defaults before this sweep (chosen by looking at val)
    "30,100,300",
    "45,150,450",
    "90,300,900",
    "120,400,1200",
    "60,150,400",
    "40,200,800",
    "60,300,1000",
)
MIN_PRECISION = 0.85


def choose(results: dict[str, list[dict]]) -> str | None:
    """The rule in the module docstring; None when no candidate keeps the precision floor."""
    eligible = {
        scales: float(np.mean([r["miou"] for r in rows]))
        for scales, rows in results.items()
        if all(r["precision"] >= MIN_PRECISION for r in rows)
    }
    return max(eligible, key=eligible.get) if eligible else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=str(CAMVID))
    parser.add_argument("--images", type=int, default=120, help="train images scored (seeded subset)")
    parser.add_argument("--candidates", nargs="*", default=list(CANDIDATES))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "prior_scales.md"))
    args = parser.parse_args()

    dataset, samples = load_split(args.root, "train")
    pick = np.random.default_rng(0).choice(len(samples), size=min(args.images, len(samples)), replace=False)
    samples = [samples[i] for i in sorted(pick)]
    state_path = Path(args.out).with_suffix(".json")
    results: dict[str, list[dict]] = json.loads(state_path.read_text()) if state_path.exists() else {}
    console = Console(width=160)
    for scales in args.candidates:
        if scales in results:
            continue
        engine = build_engine(
            EngineConfig(backend="classical-regions", classical_scales=scales, cache_bytes=2 * 1024**3)
        )
        results[scales] = score_refinement(engine, dataset, samples, methods=("sesam",), quiet=True)
        atomic_write_text(state_path, json.dumps(results, indent=1))
        console.print(scales, [(r["kind"], fmt(r["miou"]), fmt(r["precision"])) for r in results[scales]])

    best = choose(results)
    head = ["scales", *(f"{k} mIoU / prec %" for k in KINDS), "mean mIoU %", "eligible"]
    table = []
    for scales, rows in results.items():
        by_kind = {r["kind"]: r for r in rows}
        cells = [f"**{scales}**" if scales == best else scales]
        cells += [f"{fmt(by_kind[k]['miou'])} / {fmt(by_kind[k]['precision'])}" for k in KINDS]
        cells += [fmt(float(np.mean([r["miou"] for r in rows])))]
        cells += ["yes" if all(r["precision"] >= MIN_PRECISION for r in rows) else "no"]
        table.append(cells)
    note = (
        f"CamVid train, {len(samples)} images (seeded subset), SeSAM on the classical prior, weak labels "
        f"seed 0. Rule: highest mean SeSAM mIoU among scales with added precision >= "
        f"{MIN_PRECISION:.0%} on every kind. Chosen: **{best}**."
    )
    write_table(args.out, note, markdown_table(head, table), console)
    console.print(f"chosen: {best}; written {args.out}")


if __name__ == "__main__":
    main()
