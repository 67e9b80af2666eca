"""Students trained on CamVid train, scored on CamVid val: supervised vs weak vs FixMatch vs SeSAM.

Every run uses the same student, iteration budget, batch, crop and learning rate; weak labels are
derived from the dense labels by `training.protocols` (seed 0); SeSAM's engine is the classical
prior (no SAM weights here). WvF = mIoU / supervised mIoU. Students start from random weights (no
pretrained backbones can be downloaded here), so absolute numbers are far below the paper's.

Run: `python benchmarks/train_camvid.py [--iterations 400] [--kinds scribbles points] [--seeds 0 1 2]`;
writes benchmarks/results/train_camvid.md and keeps each run under runs/compare/ (a finished run of
the same budget and settings is reported again, not re-trained; one with other settings stops
with the fields named: pass --fresh). With several seeds a row gives the mean, the standard
deviation and each seed's score. `sesam-pixel` is SeSAM with the paper's plain pixel-mean L_SAM
(`sam_class_balanced: false`; the default averages it per class). With --ship, the seed-0 SeSAM
scribbles student is also written (fp16) to models/students/weights/ for the service.
"""

from __future__ import annotations

import argparse
import json
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from models.io import atomic_write, load_checkpoint
from models.students.semantic import load_student, save_student
from training.datasets import CAMVID_CLASSES
from training.trainer import READ_BY, TrainConfig, Trainer, config_changes

ROOT = Path(__file__).resolve().parents[1]
CAMVID = ROOT.parent / "shared" / "data" / "camvid"
SHIPPED = ROOT / "models" / "students" / "weights" / "camvid_student.pt"


# benchmark rows that are a trainer mode with settings changed: name -> (mode, settings)
VARIANTS: dict[str, tuple[str, dict[str, str]]] = {
    "sesam-pixel": ("sesam", {"sam_class_balanced": "false"}),
    # SeSAM on the previous classical prior (regions selected whole), beside the default prior
    "sesam-regions": ("sesam", {"engine.backend": "classical-regions"}),
}


def run_dir(row: str, kind: str, seed: int) -> Path:
    """runs/compare/<row>_<kind>, with _seed<n> for seeds other than 0."""
    return ROOT / "runs" / "compare" / (f"{row}_{kind}" + (f"_seed{seed}" if seed else ""))


def run(row: str, kind: str, seed: int, args: argparse.Namespace) -> dict:
    mode, settings = VARIANTS.get(row, (row, {}))
    out = run_dir(row, kind, seed)
    if args.fresh and out.exists():
        shutil.rmtree(out)
    cfg = TrainConfig.from_yaml(
        ROOT / "configs" / "camvid_sesam_scribbles.yaml",
        [
            f"mode={mode}",
            f"kind={kind}",
            f"seed={seed}",
            *(f"{k}={v}" for k, v in settings.items()),
            f"iterations={args.iterations}",
            f"out_dir={out}",
            f"eval_every={args.iterations}",
            f"student={args.student}",
            f"quiet={str(args.quiet).lower()}",
            f"camvid_root={CAMVID}",
        ],
    )
    summary_path = out / "summary.json"
    if summary_path.is_file() and finished_with(out, cfg):  # report it instead of re-running
        return json.loads(summary_path.read_text())
    return Trainer(cfg).train()


def finished_with(out: Path, cfg: TrainConfig) -> bool:
    """Whether the run in `out` trained this budget with these settings (the trainer's own resume
    check: any setting the mode reads, bar bookkeeping and data paths)."""
    saved = load_checkpoint(out / "last.pt", "train_state", "training run's last.pt").config
    return saved["iterations"] == cfg.iterations and not config_changes(saved, asdict(cfg), READ_BY)


def mean_per_class(runs: list[dict]) -> list[float | None]:
    """Per-class val IoU averaged over runs (None where no run scored the class)."""
    table = [r.get("val_per_class_iou") or [None] * len(CAMVID_CLASSES) for r in runs]
    means = []
    for values in zip(*table, strict=True):
        scored = [v for v in values if v is not None]
        means.append(float(np.mean(scored)) if scored else None)
    return means


def per_class_lines(results: dict[tuple[str, str], list[dict]]) -> list[str]:
    """A markdown table: one row per benchmark row (mean over its seeds), one column per class."""
    head = ["labels", "mode", *CAMVID_CLASSES]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (row, kind), runs in results.items():
        cells = ["-" if v is None else f"{100 * v:.1f}" for v in mean_per_class(runs)]
        lines.append("| " + " | ".join([kind, row, *cells]) + " |")
    return lines


def score_cell(runs: list[dict]) -> str:
    """'28.8' for one run; 'mean ± std (a / b / c)' over seeds, in mIoU %."""
    scores = [100 * r["val_miou"] for r in runs]
    if len(scores) == 1:
        return f"{scores[0]:.1f}"
    each = " / ".join(f"{v:.1f}" for v in scores)
    return f"{np.mean(scores):.1f} ± {np.std(scores, ddof=1):.1f} ({each})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=400)
    parser.add_argument("--kinds", nargs="+", default=["scribbles", "points"])
    parser.add_argument(
        "--modes",
        nargs="+",
        default=["weak", "fixmatch", "sesam", "sesam-pixel"],
        help=f"trainer modes or {list(VARIANTS)}",
    )
    parser.add_argument(
        "--seeds", nargs="+", type=int, default=[0], help="training seeds (weak labels: seed 0)"
    )
    parser.add_argument("--student", default="fpn-mobilenetv2")
    parser.add_argument("--fresh", action="store_true", help="delete earlier runs instead of resuming them")
    parser.add_argument(
        "--ship", action="store_true", help="write the sesam/scribbles student to models/students/weights"
    )
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "train_camvid.md"))
    args = parser.parse_args()

    results = {("supervised", "dense"): [run("supervised", "scribbles", s, args) for s in args.seeds]}
    for kind in args.kinds:
        for row in args.modes:
            results[(row, kind)] = [run(row, kind, s, args) for s in args.seeds]
    full = np.mean([r["val_miou"] for r in results[("supervised", "dense")]])
    head = ("labels", "mode", "val mIoU %", "WvF", "s / iter")
    seeds = " ".join(map(str, args.seeds))
    table = Table(
        title=f"CamVid val, {args.student}, {args.iterations} iterations each, seeds {seeds}, classical prior"
    )
    for col in head:
        table.add_column(col)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (row, kind), runs in results.items():
        cells = [
            kind,
            row,
            score_cell(runs),
            f"{np.mean([r['val_miou'] for r in runs]) / full:.2f}",
            f"{np.mean([r['seconds_per_iter'] for r in runs]):.2f}",
        ]
        table.add_row(*cells)
        lines.append("| " + " | ".join(cells) + " |")
    Console(width=140).print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    text = (
        f"CamVid train -> val, student {args.student}, {args.iterations} iterations, batch 4, crop 160x224 "
        "at half resolution, AdamW lr 5e-4, random init, classical prior for SAM, "
        f"student_view both (FixMatch proper); training seeds {seeds} (weak labels from seed 0).\n\n"
        + "\n".join(lines)
        + "\n\nPer-class val IoU %:\n\n"
        + "\n".join(per_class_lines(results))
        + "\n"
    )
    atomic_write(out, lambda tmp: Path(tmp).write_text(text))
    if args.ship and ("sesam", "scribbles") in results and 0 in args.seeds:
        model, meta = load_student(run_dir("sesam", "scribbles", 0) / "student.pt")
        SHIPPED.parent.mkdir(parents=True, exist_ok=True)
        meta.pop("name", None)
        meta.pop("num_classes", None)
        save_student(
            SHIPPED, model, args.student, 11, extra=meta | {"class_names": list(CAMVID_CLASSES)}, half=True
        )
        Console().print(f"shipped {SHIPPED} ({SHIPPED.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
