"""Students trained on CamVid train, scored on CamVid val: supervised vs weak vs FixMatch vs SeSAM.

Every run uses the same student, iteration budget, batch, crop and learning rate; weak labels are
derived from the dense labels by `training.protocols` (seed 0); SeSAM's engine is the classical
prior (no SAM weights here). WvF = mIoU / supervised mIoU. Students start from random weights (no
pretrained backbones can be downloaded here), so absolute numbers are far below the paper's.

Run: `python benchmarks/train_camvid.py [--iterations 400] [--kinds scribbles points]`; writes
benchmarks/results/train_camvid.md and keeps each run under runs/compare/ (a finished run of the
same mode, labels, student and budget is reported again, not re-trained; after editing the
config, pass --fresh). With --ship, the SeSAM
scribbles student is also written (fp16) to models/weights/ for the service.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from models.students import load_student, save_student
from models.weak import atomic_write
from training.data import WeakDataset
from training.datasets import CAMVID_CLASSES
from training.trainer import TrainConfig, Trainer

ROOT = Path(__file__).resolve().parents[1]
CAMVID = ROOT.parent / "shared" / "data" / "camvid"
SHIPPED = ROOT / "models" / "weights" / "camvid_student.pt"


def run(mode: str, kind: str, args: argparse.Namespace) -> dict:
    out = ROOT / "runs" / "compare" / f"{mode}_{kind}"
    if args.fresh and out.exists():
        shutil.rmtree(out)
    cfg = TrainConfig.from_yaml(
        ROOT / "configs" / "camvid_sesam_scribbles.yaml",
        [
            f"mode={mode}",
            f"kind={kind}",
            f"iterations={args.iterations}",
            f"out_dir={out}",
            f"eval_every={args.iterations}",
            f"student={args.student}",
            f"quiet={str(args.quiet).lower()}",
            f"camvid_root={CAMVID}",
        ],
    )
    summary_path = out / "summary.json"
    if summary_path.is_file():  # a finished run of this budget: report it instead of re-running
        summary = json.loads(summary_path.read_text())
        same = {"iterations": args.iterations, "mode": mode, "kind": kind, "student": args.student}
        if all(summary.get(k) == v for k, v in same.items()):
            if summary.get("val_per_class_iou") is None:  # written before summaries carried it
                trainer = Trainer(cfg, train_ds=_tiny_placeholder(cfg))
                metrics = trainer.evaluate(load_student(out / "student.pt")[0])
                summary["val_per_class_iou"] = [
                    None if np.isnan(v) else float(v) for v in metrics["per_class_iou"]
                ]
                atomic_write(summary_path, lambda tmp: Path(tmp).write_text(json.dumps(summary, indent=1)))
            return summary
    return Trainer(cfg).train()


def _tiny_placeholder(cfg: TrainConfig) -> WeakDataset:
    """One training image: evaluating a finished run needs the val set, not the train set."""
    return WeakDataset.from_camvid(cfg.camvid_root, "train", cfg.kind, cfg.weak_seed, limit=1)


def per_class_lines(results: dict[tuple[str, str], dict]) -> list[str]:
    """A markdown table: one row per run, one column per CamVid class."""
    head = ["labels", "mode", *CAMVID_CLASSES]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (mode, kind), r in results.items():
        values = r.get("val_per_class_iou") or [None] * len(CAMVID_CLASSES)
        cells = ["-" if v is None else f"{100 * v:.1f}" for v in values]
        lines.append("| " + " | ".join([kind, mode, *cells]) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=400)
    parser.add_argument("--kinds", nargs="+", default=["scribbles", "points"])
    parser.add_argument("--modes", nargs="+", default=["weak", "fixmatch", "sesam"])
    parser.add_argument("--student", default="fpn-mobilenetv2")
    parser.add_argument("--fresh", action="store_true", help="delete earlier runs instead of resuming them")
    parser.add_argument(
        "--ship", action="store_true", help="write the sesam/scribbles student to models/weights"
    )
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "train_camvid.md"))
    args = parser.parse_args()

    results = {("supervised", "dense"): run("supervised", "scribbles", args)}
    for kind in args.kinds:
        for mode in args.modes:
            results[(mode, kind)] = run(mode, kind, args)
    full = results[("supervised", "dense")]["val_miou"]
    head = ("labels", "mode", "val mIoU %", "WvF", "s / iter")
    table = Table(title=f"CamVid val, {args.student}, {args.iterations} iterations each, classical prior")
    for col in head:
        table.add_column(col)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (mode, kind), r in results.items():
        cells = [
            kind,
            mode,
            f"{100 * r['val_miou']:.1f}",
            f"{r['val_miou'] / full:.2f}",
            f"{r['seconds_per_iter']:.2f}",
        ]
        table.add_row(*cells)
        lines.append("| " + " | ".join(cells) + " |")
    Console(width=140).print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        f"CamVid train -> val, student {args.student}, {args.iterations} iterations, batch 4, crop 160x224 "
        "at half resolution, AdamW lr 5e-4, random init, classical prior for SAM, "
        "student_view both (FixMatch proper).\n\n"
        + "\n".join(lines)
        + "\n\nPer-class val IoU %:\n\n"
        + "\n".join(per_class_lines(results))
        + "\n"
    )
    if args.ship and ("sesam", "scribbles") in results:
        model, meta = load_student(ROOT / "runs" / "compare" / "sesam_scribbles" / "student.pt")
        SHIPPED.parent.mkdir(parents=True, exist_ok=True)
        meta.pop("name", None)
        meta.pop("num_classes", None)
        save_student(
            SHIPPED, model, args.student, 11, extra=meta | {"class_names": list(CAMVID_CLASSES)}, half=True
        )
        Console().print(f"shipped {SHIPPED} ({SHIPPED.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
