"""Batch jobs local vs Ray Data: images/s of `sesam refine` (SeSAM labeler, classical prior) and
`sesam segment` (the shipped CamVid student) over the same CamVid val images.

Rows: the local path (one process, every core; the baseline), Ray with 1 worker and with 2 workers
(one actor per worker, each holding its own engine or student, 1 CPU each) on a local cluster. The
cluster is started once before timing; actor start-up (importing torch, building the model) is
inside the Ray rows, as a user pays it. This machine has 2 cores: Ray cannot beat the local path
here (the local path already uses both cores, and Ray's own processes share them); the rows show the
overhead, and scale-out is for clusters with more cores and nodes.

Run: `python benchmarks/ray_batch.py [--images 16]`; writes benchmarks/results/ray_batch.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

# run as a script, this file's folder comes first on sys.path
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import ray  # noqa: E402
from rich.console import Console  # noqa: E402

from models.io import atomic_write_text  # noqa: E402
from sesam.cli import main as sesam  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CAMVID = ROOT.parent / "shared" / "data" / "camvid"


def timed(argv: list[str]) -> float:
    t0 = time.perf_counter()
    if sesam(argv) != 0:
        raise SystemExit(f"sesam {' '.join(argv)} failed")
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--work", default=str(ROOT / "runs" / "ray_batch"))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "ray_batch.md"))
    args = parser.parse_args()
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    images = work / "images"
    images.mkdir(parents=True)
    for stem in (CAMVID / "val.txt").read_text().split()[: args.images]:
        shutil.copy(CAMVID / "images" / "val" / f"{stem}.jpg", images)
    weak = work / "weak"
    sesam(["weak", "derive", "--root", str(CAMVID), "--split", "val", "--kind", "scribbles",
           "--out", str(weak), "--limit", str(args.images), "--quiet"])  # fmt: skip
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    jobs = {
        "refine (SeSAM, classical prior)": ["refine", "--images", str(images), "--weak", str(weak),
                                            "--method", "sesam", "--backend", "classical", "--quiet"],
        "segment (shipped student)": ["segment", "--images", str(images), "--quiet"],
    }  # fmt: skip
    rows = []
    for job, argv in jobs.items():
        base = timed([*argv, "--out", str(work / f"{job[:6]}_local")])
        rows.append((job, "local, one process (baseline)", base, base))
        for workers in (1, 2):
            out = work / f"{job[:6]}_ray{workers}"
            seconds = timed([*argv, "--out", str(out), "--ray", "auto", "--ray-workers", str(workers)])
            rows.append((job, f"Ray Data, {workers} worker(s)", seconds, base))
    lines = [
        f"{args.images} CamVid val images, {os.cpu_count()} CPU cores, local Ray cluster started before timing",
        "",
        "| job | path | seconds | images/s | vs local |",
        "|---|---|---|---|---|",
    ]
    for job, path, seconds, base in rows:
        lines.append(
            f"| {job} | {path} | {seconds:.1f} | {args.images / seconds:.2f} | {base / seconds:.2f}x |"
        )
    text = "\n".join(lines) + "\n"
    atomic_write_text(args.out, text)
    Console().print(text)


if __name__ == "__main__":
    main()
