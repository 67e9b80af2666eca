"""Weak labels -> dense labels on CamVid val: raw weak labels vs naive SAM-style prompting vs SeSAM.

For points, scribbles and coarse masks derived by `training.protocols` (seed 0), every method runs
on the same engine (default: the weight-free classical prior; pass --sam-type/--sam-checkpoint for
SAM). Metrics: mIoU over the 11 classes with unlabeled pixels counted wrong, coverage (labelled
share of valid pixels), and precision / recall of the labels refinement ADDED. The baseline is the
raw weak labels themselves, scored the same way.

Run: `python benchmarks/refine_camvid.py [--limit N]`; writes benchmarks/results/refine_camvid.md.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from rich.console import Console
from rich.progress import track
from rich.table import Table

from models.engine import EngineConfig, build_engine, read_image
from models.refine import build_labeler
from models.weak import read_label_png
from training.datasets import CamVid
from training.metrics import AddedLabelQuality, ConfusionMatrix
from training.protocols import derive

ROOT = Path(__file__).resolve().parents[1]
CAMVID = ROOT.parent / "shared" / "data" / "camvid"
KINDS = ("points", "scribbles", "coarse")
METHODS = ("raw", "naive", "sesam")


def fmt(v: float) -> str:
    return "-" if v != v else f"{100 * v:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=str(CAMVID))
    parser.add_argument("--split", default="val")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backend", default="classical")
    parser.add_argument("--sam-type", default="vit_b")
    parser.add_argument("--sam-checkpoint", default=None)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "refine_camvid.md"))
    args = parser.parse_args()

    dataset = CamVid(Path(args.root), args.split)
    samples = dataset.samples()[: args.limit]
    engine = build_engine(
        EngineConfig(
            backend=args.backend,
            sam_type=args.sam_type,
            sam_checkpoint=args.sam_checkpoint,
            cache_bytes=2 * 1024**3,
        )
    )
    images = {s.stem: read_image(s.image) for s in samples}
    gts = {s.stem: read_label_png(s.label) for s in samples}
    rows = []
    for kind in KINDS:
        weaks = {s.stem: derive(kind, gts[s.stem], dataset.ignore_index, args.seed, s.stem) for s in samples}
        for method in METHODS:
            labeler = None if method == "raw" else build_labeler(method, engine)
            conf = ConfusionMatrix(dataset.num_classes, dataset.ignore_index)
            added = AddedLabelQuality(dataset.ignore_index)
            seconds = 0.0
            for s in track(samples, description=f"{kind:9s} {method:5s}", transient=True):
                weak_map = weaks[s.stem].sparse_map()
                t0 = time.perf_counter()
                pred = weak_map if labeler is None else labeler.refine(images[s.stem], weaks[s.stem]).labels
                seconds += time.perf_counter() - t0
                conf.update(pred, gts[s.stem])
                added.update(weak_map, pred, gts[s.stem])
            rows.append(
                dict(
                    kind=kind,
                    method=method,
                    miou=conf.miou(),
                    coverage=conf.coverage(),
                    precision=added.precision(),
                    recall=added.recall(),
                    seconds=seconds / len(samples),
                )
            )

    console = Console(width=160)
    table = Table(title=f"CamVid {args.split} ({len(samples)} images), engine: {engine.name}")
    head = ("weak kind", "method", "mIoU %", "coverage %", "added precision %", "added recall %", "s / image")
    for col in head:
        table.add_column(col, justify="left" if col in ("weak kind", "method") else "right")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [
            r["kind"],
            r["method"],
            fmt(r["miou"]),
            fmt(r["coverage"]),
            fmt(r["precision"]),
            fmt(r["recall"]),
            f"{r['seconds']:.2f}",
        ]
        table.add_row(*cells)
        lines.append("| " + " | ".join(cells) + " |")
    console.print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    note = (
        f"CamVid {args.split}, {len(samples)} images, engine `{engine.name}`, weak labels seed {args.seed}. "
        "mIoU counts unlabeled pixels as wrong; 'added' = pixels unlabeled in the weak input and labelled after."
    )
    out.write_text(note + "\n\n" + "\n".join(lines) + "\n")
    console.print(f"written {out}")


if __name__ == "__main__":
    main()
