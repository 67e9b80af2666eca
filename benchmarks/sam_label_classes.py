"""Which classes SeSAM's in-loop labels cover, against the weak labels they came from.

For each finished `sesam` run (its `last.pt` keeps the latest SAM labels of every refreshed image),
prints per class: the share of SAM-labelled pixels, the share of weak-labelled pixels on the same
images, and the SAM labels' precision against CamVid's dense ground truth. Training images only;
nothing here looks at val. A plain pixel-mean L_SAM weighs classes by the first column.

Run: `python benchmarks/sam_label_classes.py runs/compare/sesam-pixel_points runs/compare/sesam-pixel_scribbles`;
writes benchmarks/results/sam_label_classes.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from models.io import atomic_write, load_checkpoint
from training.data import WeakDataset
from training.datasets import CAMVID_CLASSES
from training.metrics import ConfusionMatrix

ROOT = Path(__file__).resolve().parents[1]
CAMVID = ROOT.parent / "shared" / "data" / "camvid"


def label_classes(run: Path, camvid: Path) -> tuple[str, int, np.ndarray]:
    """(kind, images, rows): rows is n_classes x 3 (SAM share, weak share, SAM precision), in %,
    over the pixels that have ground truth (void excluded)."""
    summary = json.loads((run / "summary.json").read_text())
    if summary.get("mode") != "sesam":
        raise ValueError(f"{run}: mode {summary.get('mode')!r} has no in-loop SAM labels; give a sesam run")
    state = load_checkpoint(run / "last.pt", "train_state", "training run's last.pt").weights
    sam_labels = {int(k): v.numpy() for k, v in state["sam_labels"].items()}
    ds = WeakDataset.from_camvid(camvid, "train", summary["kind"], 0)
    n = len(CAMVID_CLASSES)
    sam, weak = ConfusionMatrix(n), ConfusionMatrix(n)
    for idx, labels in sam_labels.items():
        gt = ds.gt_map(idx)
        sam.update(labels, gt)
        weak.update(ds.weak_map(idx), gt)
    sam_pixels = sam.matrix[:, :n].sum(0)  # per predicted (labelled) class; the last column is unlabelled
    weak_pixels = weak.matrix[:, :n].sum(0)
    precision = np.diag(sam.matrix[:, :n]) / np.maximum(sam_pixels, 1)
    rows = np.stack(
        [100 * sam_pixels / sam_pixels.sum(), 100 * weak_pixels / max(weak_pixels.sum(), 1), 100 * precision],
        axis=1,
    )
    return summary["kind"], len(sam_labels), rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="finished sesam run folders")
    parser.add_argument("--camvid", type=Path, default=CAMVID)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "sam_label_classes.md")
    args = parser.parse_args()
    head = ["class"]
    columns: list[np.ndarray] = []
    for run in args.runs:
        kind, images, rows = label_classes(run, args.camvid)
        head += [f"{kind}: SAM share %", f"{kind}: weak share %", f"{kind}: SAM precision %"]
        columns.append(rows)
        Console().print(f"{run}: SAM labels of {images} training images")
    table = Table(title="Class share of SeSAM's in-loop labels vs the weak labels (CamVid train)")
    for col in head:
        table.add_column(col)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c, name in enumerate(CAMVID_CLASSES):
        cells = [name, *(f"{v:.1f}" for rows in columns for v in rows[c])]
        table.add_row(*cells)
        lines.append("| " + " | ".join(cells) + " |")
    Console(width=160).print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    text = (
        f"SAM labels kept in {', '.join(map(str, args.runs))} (CamVid train, latest refresh per image).\n\n"
    )
    atomic_write(args.out, lambda tmp: Path(tmp).write_text(text + "\n".join(lines) + "\n"))


if __name__ == "__main__":
    main()
