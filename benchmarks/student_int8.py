"""int8 students against fp32 on val: accuracy (CamVid mIoU, Penn-Fudan mask AP) and speed.

For each shipped student: PyTorch fp32 (the baseline), ONNX Runtime fp32, ONNX Runtime int8
dynamic, and int8 static (QDQ, calibrated on the first 32 TRAIN images; val only reports). Speed
is seconds per image over the whole val split, one process, this machine's threads.

Run: `python benchmarks/student_int8.py [--limit N]`; writes benchmarks/results/student_int8.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

# run as a script, this file's folder comes first on sys.path and its name would hide the `export` package
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from rich.console import Console  # noqa: E402

from export.onnx_export import export_student_checkpoint  # noqa: E402
from export.quantize import quantize_student  # noqa: E402
from models.engine import read_image  # noqa: E402
from models.io import atomic_write_text  # noqa: E402
from models.students.runtime import load_segmenter  # noqa: E402
from training.datasets import PennFudan  # noqa: E402
from training.evaluate import camvid_pairs, instance_scores, semantic_scores  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
WEIGHTS = ROOT / "models" / "students" / "weights"


def rows_for(checkpoint: Path, work: Path, calibration: list, score) -> list[tuple[str, float, float]]:
    """(runtime, score, seconds per image) for every runtime of one student."""
    export_student_checkpoint(checkpoint, work)
    out = []
    runs = [("PyTorch fp32 (baseline)", checkpoint, {}), ("ONNX Runtime fp32", work, {"runtime": "onnx"})]
    for mode in ("dynamic", "static"):
        runs.append((f"ONNX Runtime int8 {mode}", mode, {}))
    for label, source, kwargs in runs:
        if source in ("dynamic", "static"):
            quantize_student(work, source, calibration if source == "static" else None)
            source, kwargs = work, {"runtime": "onnx", "onnx_file": "student_int8"}
        student = load_segmenter(source, **kwargs)
        t0 = time.perf_counter()
        value, count = score(student)
        out.append((label, value, (time.perf_counter() - t0) / count))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None, help="only the first N val images")
    parser.add_argument("--work", default=str(ROOT / "runs" / "student_int8"))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "student_int8.md"))
    args = parser.parse_args()
    work = Path(args.work)
    lines = [
        "Shipped students, val split; int8 static calibrated on 32 train images. "
        "Seconds per image include pre- and post-processing.",
        "",
        "| student | metric | runtime | score | vs fp32 ONNX | s / image | speed-up vs PyTorch |",
        "|---|---|---|---|---|---|---|",
    ]
    camvid = DATA / "camvid"
    pairs = camvid_pairs(camvid, "val", args.limit)
    calibration = [read_image(image) for _, image, _ in camvid_pairs(camvid, "train", 32)]
    semantic = rows_for(
        WEIGHTS / "camvid_student.pt",
        work / "camvid",
        calibration,
        lambda s: (100 * semantic_scores(s, pairs)["miou"], len(pairs)),
    )
    pf = PennFudan(DATA / "pennfudan", "val")
    samples = pf.samples()[: args.limit]
    calibration = [s.load_image() for s in PennFudan(DATA / "pennfudan", "train").samples()[:32]]
    instance = rows_for(
        WEIGHTS / "pennfudan_student.pt",
        work / "pennfudan",
        calibration,
        lambda s: (100 * instance_scores(s, samples, pf.class_names)["AP"], len(samples)),
    )
    for name, metric, rows in (
        ("CamVid fpn-mobilenetv2", "mIoU %", semantic),
        ("Penn-Fudan m2f-r18", "mask AP %", instance),
    ):
        fp32, base = rows[1][1], rows[0][2]
        for label, value, seconds in rows:
            lines.append(
                f"| {name} | {metric} | {label} | {value:.2f} | {value - fp32:+.2f} | {seconds:.3f} | {base / seconds:.2f}x |"
            )
    text = "\n".join(lines) + "\n"
    atomic_write_text(args.out, text)
    Console().print(text)


if __name__ == "__main__":
    main()
