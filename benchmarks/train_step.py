"""Seconds per training iteration: FixMatch (baseline) vs SeSAM with SAM every M=1 and M=4 iterations.

Same student, data, batch and crop for all; the engine (classical prior) embeds every image once
before timing, so the SeSAM rows pay only for prompting, decoding and selection. "First epoch"
includes SeSAM's step 1 (initial masks from the weak labels), which does not depend on the teacher
and is computed once per image; "steady" is the next iterations, as in the rest of a long run.
The paper reports 0.81 s/iter for SeSAM vs 0.24 for FixMatch on a GPU (ratio 3.4).

FixMatch and SeSAM are timed with the same `student_view` ("both", the default: FixMatch proper,
two student passes; "strong": one pass), so the ratio compares like with like.

Run: `python benchmarks/train_step.py [--iterations 16] [--students segformer-b0 fpn-mobilenetv2]
[--student-views both strong]`; prints the table and writes benchmarks/results/train_step.md.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from models.io import atomic_write
from training.data import WeakDataset
from training.trainer import TrainConfig, Trainer

STUDENT_VIEWS = ("both", "strong", "weak")

ROOT = Path(__file__).resolve().parents[1]
CAMVID = ROOT.parent / "shared" / "data" / "camvid"


def time_mode(
    mode: str, sam_every: int, ds: WeakDataset, student: str, view: str, args: argparse.Namespace
) -> tuple[float, float, int]:
    """Mean s/iter over the first epoch and over the next `iterations` (steady state)."""
    with tempfile.TemporaryDirectory() as out:
        cfg = TrainConfig(
            mode=mode,
            student=student,
            camvid_root=str(CAMVID),
            kind=args.kind,
            iterations=10**6,
            batch_size=args.batch_size,
            sam_every=sam_every,
            student_view=view,
            out_dir=out,
            quiet=True,
            resume=False,
            eval_every=10**9,
            checkpoint_every=10**9,
        )
        trainer = Trainer(cfg, train_ds=ds, val_ds=None)
        trainer.prepare_sam()
        epoch = len(ds) // args.batch_size

        def run(start: int, count: int) -> float:
            begin = time.perf_counter()
            for it in range(start, start + count):
                trainer.step(it)
            return (time.perf_counter() - begin) / count

        first = run(0, epoch)
        steady = run(epoch, args.iterations)
        calls = trainer.engine.stats.encoder_calls if trainer.engine is not None else 0
        return first, steady, calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--students", nargs="+", default=["segformer-b0", "fpn-mobilenetv2"])
    parser.add_argument("--student-views", nargs="+", default=["both", "strong"], choices=STUDENT_VIEWS)
    parser.add_argument("--kind", default="scribbles")
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "train_step.md"))
    args = parser.parse_args()
    ds = WeakDataset.from_camvid(CAMVID, "train", args.kind, limit=args.images)
    title = f"s / iteration, batch {args.batch_size}, {args.kind}, {len(ds)} images, CPU (2 cores)"
    table = Table(title=title)
    columns = (
        "student",
        "student view",
        "mode",
        "SAM every M",
        "first epoch s/iter",
        "x fixmatch",
        "steady s/iter",
        "x fixmatch",
        "encoder calls (images)",
    )
    for col in columns:
        table.add_column(col)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for student in args.students:
        for view in args.student_views:
            results = {
                (mode, m): time_mode(mode, m, ds, student, view, args)
                for mode, m in [("fixmatch", 1), ("sesam", 1), ("sesam", 4)]
            }
            base_first, base_steady, _ = results[("fixmatch", 1)]
            for (mode, m), (first, steady, calls) in results.items():
                cells = [
                    student,
                    view,
                    mode,
                    "-" if mode == "fixmatch" else str(m),
                    f"{first:.3f}",
                    f"{first / base_first:.2f}",
                    f"{steady:.3f}",
                    f"{steady / base_steady:.2f}",
                    "-" if mode == "fixmatch" else f"{calls} ({len(ds)})",
                ]
                table.add_row(*cells)
                lines.append("| " + " | ".join(cells) + " |")
    Console(width=170).print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/train_step.py " + " ".join(
        [f"--iterations {args.iterations}", f"--images {args.images}", f"--kind {args.kind}"]
    )
    text = f"`{command}` ({title}; classical prior; one run per row).\n\n" + "\n".join(lines) + "\n"
    atomic_write(out, lambda tmp: Path(tmp).write_text(text))


if __name__ == "__main__":
    main()
