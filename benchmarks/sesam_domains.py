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

from rich.progress import track
from tables import markdown_table, write_table

from models.engine import EngineConfig, build_engine, read_image
from models.io import read_label_png
from models.labels.sesam import SeSAMLabeler, SeSAMOptions
from training.datasets import CamVid
from training.metrics import AddedLabelQuality, ConfusionMatrix
from training.protocols import derive

ROOT = Path(__file__).resolve().parents[1]
CAMVID = ROOT.parent / "shared" / "data" / "camvid"
DEFAULT_VARIANTS = (
    "{}",
    '{"exclude_conflicts": true}',
    '{"negatives": 1}',
    '{"negatives": 4}',
    '{"exclude_conflicts": true, "negatives": 4}',
)


def pct(v: float) -> str:
    return "-" if v != v else f"{100 * v:.1f}"


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
    images = {s.stem: read_image(s.image) for s in samples}
    gts = {s.stem: read_label_png(s.label) for s in samples}
    recordings = sorted({s.stem.split("_")[0] for s in samples})
    count = {r: sum(s.stem.startswith(r) for s in samples) for r in recordings}
    lines = []
    for kind in args.kinds:
        weaks = {s.stem: derive(kind, gts[s.stem], dataset.ignore_index, 0, s.stem) for s in samples}
        for variant in args.variants:
            labeler = SeSAMLabeler(engine, SeSAMOptions(**json.loads(variant)))
            scores = {
                r: (
                    ConfusionMatrix(dataset.num_classes, dataset.ignore_index),
                    AddedLabelQuality(dataset.ignore_index),
                )
                for r in recordings
            }
            for s in track(samples, description=f"{kind} {variant}", transient=True):
                pred = labeler.refine(images[s.stem], weaks[s.stem]).labels
                conf, added = scores[s.stem.split("_")[0]]
                conf.update(pred, gts[s.stem])
                added.update(weaks[s.stem].sparse_map(), pred, gts[s.stem])
            for r in recordings:
                conf, added = scores[r]
                cells = [kind, variant, f"{r} ({count[r]})", pct(conf.miou()), pct(conf.coverage())]
                lines.append([*cells, pct(added.precision()), pct(added.recall())])
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
