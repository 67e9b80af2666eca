"""The engine's working side: what a 16-megapixel image costs the classical priors, and what the
working side does to their answers.

Cost: the largest Penn-Fudan photo (1017 px wide, real detail up to that size) upscaled to
4896x3264 is embedded and answers five prompts (three clicks, a click session of three clicks, a
box) at working sides 640, 800, 1024, 1280 (`--full` adds no reduction at all, minutes and
gigabytes). Each run is a fresh process: wall seconds of embed and predict, and peak resident
memory (`ru_maxrss`) against the process's memory before the embed (Python, torch, the image).

Quality: Penn-Fudan val, a tight ground-truth box per instance -> the best-scored candidate (as
`benchmarks/box2mask.py`), at the images' own size (long side 320-1017) and upscaled 3x (the ground
truth nearest-upscaled), per working side. At their own size every image fits in 1024, so 1024
and no reduction answer the same (tests/test_bounded_work.py checks it bit for bit).

Run: `python benchmarks/working_side.py [--sides 640 800 1024 1280] [--full] [--part cost|quality|all]`;
writes benchmarks/results/working_side.md.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from tables import markdown_table, write_table

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
BIG = (3264, 4896)  # (H, W): 16 megapixels


def rss_mib() -> float:
    """Current resident memory of this process, MiB (Linux /proc)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def big_photo(path: Path) -> None:
    """The largest Penn-Fudan image upscaled to 16 MP (Lanczos), saved as .npy for the children."""
    pngs = sorted((DATA / "pennfudan" / "PNGImages").glob("*.png"))
    largest = max(pngs, key=lambda p: Image.open(p).size[0] * Image.open(p).size[1])
    img = Image.open(largest).convert("RGB").resize((BIG[1], BIG[0]), Image.Resampling.LANCZOS)
    np.save(path, np.asarray(img))


def child(image_path: str, backend: str, side: int) -> None:
    """One measurement in this fresh process; prints a JSON line."""
    from models.engine import EngineConfig, Prompt, build_engine

    image = np.load(image_path)
    if backend == "sam-tiny":  # the seeded test SAM: SAM's costs without weights
        config = EngineConfig(backend="torch", sam_type="tiny", working_side=side)
    else:
        config = EngineConfig(backend=backend, working_side=side)
    engine = build_engine(config)
    h, w = image.shape[:2]
    prompts = [
        Prompt(points=[[0.30 * w, 0.55 * h]], labels=[1]),
        Prompt(points=[[0.60 * w, 0.40 * h]], labels=[1]),
        Prompt(points=[[0.15 * w, 0.85 * h]], labels=[1]),
        Prompt(points=[[0.30 * w, 0.55 * h], [0.32 * w, 0.35 * h], [0.45 * w, 0.6 * h]], labels=[1, 1, 0]),
        Prompt(box=[0.2 * w, 0.2 * h, 0.5 * w, 0.9 * h]),
    ]
    before = rss_mib()
    start = time.perf_counter()
    handle = engine.embed([image])[0]
    embedded = time.perf_counter()
    out = engine.predict(handle, prompts)
    done = time.perf_counter()
    assert out.masks.shape == (len(prompts), 3, h, w)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "embed_s": embedded - start,
                "predict_s": done - embedded,
                "baseline_mib": before,
                "peak_mib": peak,
                "working": list(getattr(handle.payload, "working_size", (h, w))),
            }
        )
    )


def cost(sides: list[int], full: bool, backends: list[str]) -> list[str]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "big.npy"
        big_photo(path)
        for backend in backends:
            for side in [*sides, *([0] if full else [])]:
                cmd = [sys.executable, __file__, "--child", str(path), backend, str(side)]
                proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=True)
                r = json.loads(proc.stdout.strip().splitlines()[-1])
                print(backend, side, r, flush=True)
                rows.append(
                    [
                        backend,
                        str(side) if side else "none (full size)",
                        "x".join(str(v) for v in reversed(r["working"])),
                        f"{r['embed_s']:.2f}",
                        f"{r['predict_s']:.2f}",
                        f"{r['embed_s'] + r['predict_s']:.2f}",
                        f"{r['peak_mib']:.0f}",
                        f"{r['peak_mib'] - r['baseline_mib']:.0f}",
                    ]
                )
    head = ["backend", "working side", "encoded at", "embed s", "predict s (5 prompts)", "total s"]
    head += ["peak RSS MiB", "over baseline MiB"]
    return markdown_table(head, rows)


def quality(sides: list[int], backends: list[str], limit: int | None) -> list[str]:
    from box2mask import tight_box
    from clicks import load

    from models.engine import EngineConfig, Prompt, build_engine, read_image
    from models.engine.base import upsample_nearest
    from training.interactive import mask_iou

    samples = load("pennfudan", "val", limit)
    rows = []
    for backend in backends:
        for scale in (1, 3):
            for side in [*sides, 0]:
                if scale == 3 and side == 0:
                    continue  # a minute or more per image: the cost table shows why
                if scale == 1 and side > 1024:
                    continue  # every image fits: the same as none
                engine = build_engine(EngineConfig(backend=backend, working_side=side))
                ious, seconds = [], []
                for s in samples:
                    image = read_image(s.image)
                    masks = list(s.masks)
                    if scale != 1:
                        size = (image.shape[0] * scale, image.shape[1] * scale)
                        image = np.asarray(
                            Image.fromarray(image).resize(size[::-1], Image.Resampling.LANCZOS)
                        )
                        masks = [upsample_nearest(m, size) for m in masks]
                    start = time.perf_counter()
                    handle = engine.embed([image])[0]
                    out = engine.predict(handle, [Prompt(box=tight_box(m)) for m in masks])
                    seconds.append(time.perf_counter() - start)
                    ious += [
                        mask_iou(out.masks[i, int(np.argmax(out.iou[i]))], m) for i, m in enumerate(masks)
                    ]
                label = "own size (320-1017)" if scale == 1 else "3x (960-3051)"
                rows.append(
                    [
                        backend,
                        label,
                        str(side) if side else "none",
                        str(len(ious)),
                        f"{np.mean(ious):.4f}",
                        f"{np.median(seconds):.2f}",
                    ]
                )
                print(rows[-1], flush=True)
    head = ["backend", "Penn-Fudan val at", "working side", "objects", "box IoU", "s / image (median)"]
    return markdown_table(head, rows)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sides", nargs="+", type=int, default=[640, 800, 1024, 1280])
    parser.add_argument(
        "--backends",
        nargs="+",
        default=["classical", "classical-regions"],
        help="also: sam-tiny (seeded SAM)",
    )
    parser.add_argument("--quality-backends", nargs="+", default=["classical"])
    parser.add_argument("--full", action="store_true", help="also no reduction (slow, gigabytes)")
    parser.add_argument("--part", default="all", choices=["cost", "quality", "all"])
    parser.add_argument("--limit-images", type=int, default=None)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "working_side.md"))
    args = parser.parse_args()
    lines: list[str] = []
    if args.part in ("cost", "all"):
        lines += ["A 16 MP image (4896x3264, a Penn-Fudan photo upscaled), one fresh process per row:", ""]
        lines += [*cost(args.sides, args.full, args.backends), ""]
    if args.part in ("quality", "all"):
        lines += ["Penn-Fudan val, tight box -> best-scored candidate, per working side:", ""]
        lines += [*quality(args.sides, args.quality_backends, args.limit_images), ""]
    note = (
        "The engine's working side (`engine.working_side`): images with a longer side are reduced to it "
        "before encoding. 2 shared CPU cores; compare rows of one run."
    )
    write_table(args.out, note, lines)


if __name__ == "__main__":
    main()
