"""SeSAM's added-label precision per CamVid recording (domain), for SeSAM option variants.

CamVid's train split holds three recordings: 0001TP (dusk), 0006R0 and 0016E5 (daylight; val is all
0016E5, so val alone does not show a change of domain). Every `--stride`-th image of `--split`
(train by default) is refined from weak labels (`training.protocols`, seed 0) by SeSAM on the
weight-free classical prior (not SAM), once per variant of `SeSAMOptions` given as JSON; the first variant (default `{}`, the
paper's rule) is the baseline. Per recording: mIoU (unlabeled counts as wrong), coverage, and the
precision / recall of the labels SeSAM added. Choices are made on train; `--split val` only reports.

Run: `python benchmarks/sesam_domains.py [--kinds points scribbles] [--variants '{}' '{"negatives": 4}']
[--classical-options '{"click_color_weight": 0}'] [--split val]`; writes benchmarks/results/sesam_domains.md.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from refine_camvid import CAMVID, fmt, score_refinement
from tables import markdown_table, write_table

from models.engine import EngineConfig, build_engine
from training.datasets import CamVid

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_VARIANTS = (
    "{}",
    '{"exclude_conflicts": true}',
    '{"negatives": 1}',
    '{"negatives": 4}',
    '{"exclude_conflicts": true, "negatives": 4}',
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=str(CAMVID))
    parser.add_argument(
        "--split",
        default="train",
        choices=["train", "val"],
        help="train (choices are made here) or val (reports only)",
    )
    parser.add_argument("--stride", type=int, default=6, help="every n-th image of the split")
    parser.add_argument(
        "--kinds", nargs="+", default=["points", "scribbles"], choices=["points", "scribbles", "coarse"]
    )
    parser.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS), help="SeSAMOptions as JSON")
    parser.add_argument(
        "--classical-options",
        type=json.loads,
        default={},
        help="options of the prior as JSON (default: its own)",
    )
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "sesam_domains.md"))
    args = parser.parse_args()

    dataset = CamVid(Path(args.root), args.split)
    samples = dataset.samples()[:: args.stride]
    engine = build_engine(
        EngineConfig(backend="classical", cache_bytes=2 * 1024**3, classical=args.classical_options)
    )
    recordings = {
        r: [s for s in samples if s.stem.split("_")[0] == r]
        for r in sorted({s.stem.split("_")[0] for s in samples})
    }
    rows = {}  # (kind, variant, recording) -> score_refinement's row
    for variant in args.variants:
        for r, subset in recordings.items():
            for row in score_refinement(
                engine,
                dataset,
                subset,
                tuple(args.kinds),
                ("sesam",),
                quiet=True,
                options=json.loads(variant),
            ):
                rows[row["kind"], variant, r] = row
    lines = []
    for kind in args.kinds:
        for variant in args.variants:
            for r, subset in recordings.items():
                row = rows[kind, variant, r]
                cells = [kind, variant, f"{r} ({len(subset)})", fmt(row["miou"]), fmt(row["coverage"])]
                lines.append([*cells, fmt(row["precision"]), fmt(row["recall"])])
    head = (
        "weak kind",
        "SeSAM options",
        "recording (images)",
        "mIoU %",
        "coverage %",
        "added precision %",
        "added recall %",
    )
    prior = f" with options {json.dumps(args.classical_options)}" if args.classical_options else ""
    note = (
        f"CamVid {args.split}, stride {args.stride} ({len(samples)} images), by recording; SeSAM on the classical "
        f"prior{prior} (the weight-free default engine, not SAM), weak labels seed 0; `{{}}` is the paper's rule (the "
        f"baseline). `{shlex.join(['python', 'benchmarks/sesam_domains.py', *sys.argv[1:]])}`."
    )
    write_table(args.out, note, markdown_table(head, lines))


if __name__ == "__main__":
    main()
