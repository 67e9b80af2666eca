"""Weak labels -> dense labels on CamVid: raw weak labels vs naive SAM-style prompting vs SeSAM.

For points, scribbles and coarse masks derived by `training.protocols` (seed 0), every method runs
on each engine of `--backends` (default: the weight-free classical prior and the previous prior,
`classical-regions`, in the same run; pass --backends torch --sam-checkpoint ... for SAM). Metrics: mIoU over the 11 classes with unlabeled pixels counted wrong, coverage (labelled
share of valid pixels), and precision / recall of the labels refinement ADDED. The baseline is the
raw weak labels themselves, scored the same way.

Run: `python benchmarks/refine_camvid.py [--split val] [--limit N] [--backends classical ...]`;
writes benchmarks/results/refine_camvid.md. Settings are chosen on train (`prior_scales.py`); val
only reports.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import track
from rich.table import Table
from tables import markdown_table

from models.engine import EngineConfig, PromptableSegmenter, build_engine, read_image
from models.engine.factory import SAM_BACKENDS
from models.io import atomic_write_text, read_label_png
from models.labels import build_labeler
from training.datasets import CamVid, Sample
from training.metrics import AddedLabelQuality, ConfusionMatrix
from training.protocols import derive

ROOT = Path(__file__).resolve().parents[1]
CAMVID = ROOT.parent / "shared" / "data" / "camvid"
KINDS = ("points", "scribbles", "coarse")
METHODS = ("raw", "naive", "sesam")


def fmt(v: float) -> str:
    return "-" if v != v else f"{100 * v:.1f}"


def load_split(root: str | Path, split: str) -> tuple[CamVid, list[Sample]]:
    dataset = CamVid(Path(root), split)
    return dataset, dataset.samples()


def score_refinement(
    engine: PromptableSegmenter,
    dataset: CamVid,
    samples: list[Sample],
    kinds: tuple[str, ...] = KINDS,
    methods: tuple[str, ...] = METHODS,
    seed: int = 0,
    quiet: bool = False,
    options: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """One row per (weak kind, method): mIoU, coverage, added precision / recall, seconds per image.
    `options`: the labelers' options (default: their own)."""
    images = {s.stem: read_image(s.image) for s in samples}
    gts = {s.stem: read_label_png(s.label) for s in samples}
    rows = []
    for kind in kinds:
        weaks = {s.stem: derive(kind, gts[s.stem], dataset.ignore_index, seed, s.stem) for s in samples}
        for method in methods:
            labeler = None if method == "raw" else build_labeler(method, engine, **(options or {}))
            conf = ConfusionMatrix(dataset.num_classes, dataset.ignore_index)
            added = AddedLabelQuality(dataset.ignore_index)
            seconds = 0.0
            for s in track(samples, description=f"{kind:9s} {method:5s}", transient=True, disable=quiet):
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
    return rows


HEAD = (
    "weak kind",
    "method",
    "engine",
    "mIoU %",
    "coverage %",
    "added precision %",
    "added recall %",
    "s / image",
)


def row_cells(r: dict[str, Any]) -> list[str]:
    return [
        r["kind"],
        r["method"],
        r.get("engine", "-"),
        fmt(r["miou"]),
        fmt(r["coverage"]),
        fmt(r["precision"]),
        fmt(r["recall"]),
        f"{r['seconds']:.2f}",
    ]


def markdown(rows: list[dict[str, Any]], head: tuple[str, ...] = HEAD, cells=row_cells) -> list[str]:
    return markdown_table(head, (cells(r) for r in rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=str(CAMVID))
    parser.add_argument("--split", default="val")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backends", nargs="+", default=["classical", "classical-regions"])
    parser.add_argument("--classical-scales", default=None, help="classical-regions: fine,medium,coarse")
    parser.add_argument(
        "--classical-options",
        type=json.loads,
        default=None,
        help="classical: options of the prior as JSON, e.g. '{\"click_color_weight\": 0}' (the engine column "
        "then names them)",
    )
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=list(KINDS))
    parser.add_argument("--sam-type", default="vit_b")
    parser.add_argument("--sam-checkpoint", default=None)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "refine_camvid.md"))
    args = parser.parse_args()

    dataset, samples = load_split(args.root, args.split)
    samples = samples[: args.limit]
    rows: list[dict[str, Any]] = []
    for i, backend in enumerate(args.backends):  # the checkpoint goes to the SAM backends only
        engine = build_engine(
            EngineConfig(
                backend=backend,
                sam_type=args.sam_type,
                sam_checkpoint=args.sam_checkpoint if backend in SAM_BACKENDS else None,
                cache_bytes=2 * 1024**3,
                classical_scales=args.classical_scales if backend == "classical-regions" else None,
                classical=(args.classical_options or {}) if backend == "classical" else {},
            )
        )
        name = engine.name
        if backend == "classical" and args.classical_options:
            name = f"{name} {json.dumps(args.classical_options)}"
        methods = METHODS if i == 0 else tuple(m for m in METHODS if m != "raw")  # raw: no engine
        for r in score_refinement(
            engine, dataset, samples, tuple(args.kinds), methods=methods, seed=args.seed
        ):
            rows.append({**r, "engine": "-" if r["method"] == "raw" else name})
    rows.sort(key=lambda r: (KINDS.index(r["kind"]), METHODS.index(r["method"])))
    console = Console(width=160)
    table = Table(title=f"CamVid {args.split} ({len(samples)} images)")
    for col in HEAD:
        table.add_column(col, justify="left" if col in ("weak kind", "method", "engine") else "right")
    for r in rows:
        table.add_row(*row_cells(r))
    console.print(table)
    note = (
        f"CamVid {args.split}, {len(samples)} images, engines {', '.join(f'`{b}`' for b in args.backends)} "
        f"in one run, weak labels seed {args.seed}. `classical` is the weight-free prior (a seeded random "
        "walk), `classical-regions` the previous one (regions selected whole); neither is SAM. mIoU counts "
        "unlabeled pixels as wrong; 'added' = pixels unlabeled in the weak input and labelled after."
    )
    atomic_write_text(args.out, note + "\n\n" + "\n".join(markdown(rows)) + "\n")
    console.print(f"written {args.out}")


if __name__ == "__main__":
    main()
