"""Interactive segmentation by simulated clicks: mIoU@k and NoC@85/90 with a 20-click cap.

Protocol (`training.interactive`): each ground-truth instance is one object; the first click is
positive at its interior-most pixel, each next click at the interior-most pixel of the largest
error region (positive on a miss, negative on a false alarm); the answer is the engine's
best-scored of 3 candidates at the first click and its single-mask answer after (SAM's own practice;
`--multimask always` keeps picking among 3), and its low-res logits are fed back as the next mask
input. Datasets: Penn-Fudan (`--split val`, every fifth image; settings are chosen on `train`) and
COCO-mini val2017 (crowd regions left out), a second domain.

Rows: every engine named by `--engines` (registered backends with their defaults; `classical` is
the weight-free prior) and, with `--random-walker`, a plain pixel random walker seeded by the
clicks at half resolution (scikit-image), the classical reference. Also reported: how often the
best-scored candidate is truly the best of the three (where the engine chose), how often a click
lowered the IoU, predict ms per click and embed s per image.

Run: `python benchmarks/clicks.py [--datasets pennfudan coco_mini] [--limit-images N]`; writes
benchmarks/results/clicks.md.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import track
from tables import markdown_table, write_table

from models.engine import EngineConfig, build_engine, read_image
from training.datasets import CocoInstances, InstanceSample, PennFudan
from training.interactive import Click, ClickRun, click_session, simulate_clicks, summarize

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
AT = (1, 3, 5, 10, 20)


def load(dataset: str, split: str, limit: int | None) -> list[InstanceSample]:
    if dataset == "pennfudan":
        samples = PennFudan(DATA / "pennfudan", split).samples()
    elif dataset == "coco_mini":
        samples = CocoInstances(DATA / "coco_mini", "val2017" if split == "val" else "train2017").samples()
    else:
        raise ValueError(f"dataset {dataset!r} unknown; choose pennfudan or coco_mini")
    return samples[:limit]


def random_walker_session(
    image: np.ndarray, truth: np.ndarray, max_clicks: int, beta: float = 130.0
) -> ClickRun:
    """The pixel random walker (scikit-image) at half resolution, seeded by the clicks (positive
    seeds label 1, negative label 2; with no negative click yet the image border seeds label 2)."""
    from skimage.segmentation import random_walker
    from skimage.transform import resize

    small = resize(image, (image.shape[0] // 2, image.shape[1] // 2), anti_aliasing=True)

    def answer(clicks: list[Click]) -> tuple[np.ndarray, bool | None]:
        seeds = np.zeros(small.shape[:2], np.int32)
        if all(c.positive for c in clicks):
            seeds[[0, -1], :] = 2
            seeds[:, [0, -1]] = 2
        for c in clicks:
            seeds[min(c.y // 2, seeds.shape[0] - 1), min(c.x // 2, seeds.shape[1] - 1)] = (
                1 if c.positive else 2
            )
        labels = random_walker(small, seeds, beta=beta, mode="cg_j", channel_axis=-1)
        return resize(labels == 1, truth.shape, order=0).astype(bool), None  # one answer, no choice

    return click_session(truth, answer, max_clicks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["pennfudan", "coco_mini"])
    parser.add_argument("--split", default="val", help="pennfudan: val (reports) or train (chooses settings)")
    parser.add_argument("--engines", nargs="+", default=["classical", "classical-regions"])
    parser.add_argument("--random-walker", action="store_true", help="add the pixel random walker (slow)")
    parser.add_argument("--limit-images", type=int, default=None)
    parser.add_argument("--max-clicks", type=int, default=20)
    parser.add_argument("--multimask", default="first", choices=["first", "always"])
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "clicks.md"))
    args = parser.parse_args()

    rows = []
    for dataset in args.datasets:
        samples = load(dataset, args.split, args.limit_images)
        images = {s.stem: read_image(s.image) for s in samples}
        methods = [*args.engines, *(["random-walker"] if args.random_walker else [])]
        for method in methods:
            engine = None if method == "random-walker" else build_engine(EngineConfig(backend=method))
            runs: list[ClickRun] = []
            embed_seconds = []
            for s in track(samples, description=f"{dataset} {method}", transient=True):
                if engine is not None:
                    start = time.perf_counter()
                    handle = engine.embed([images[s.stem]])[0]
                    embed_seconds.append(time.perf_counter() - start)
                for truth in s.masks:
                    if engine is None:
                        runs.append(random_walker_session(images[s.stem], truth, args.max_clicks))
                    else:
                        runs.append(
                            simulate_clicks(engine, handle, truth, args.max_clicks, multimask=args.multimask)
                        )
            scores = summarize([r.ious for r in runs], AT, args.max_clicks)
            picks = [p for r in runs for p in r.picked_best if p is not None]
            seconds = [t for r in runs for t in r.seconds]
            drops = [b < a - 1e-9 for r in runs for a, b in zip(r.ious, r.ious[1:])]
            rows.append(
                {
                    "dataset": f"{dataset} {args.split}",
                    "method": engine.name if engine is not None else method,
                    **scores,
                    "picked_best": float(np.mean(picks)) if picks else float("nan"),
                    "drops": float(np.mean(drops)) if drops else 0.0,
                    "ms_per_click": 1000 * float(np.median(seconds)) if seconds else float("nan"),
                    "embed_s": float(np.median(embed_seconds)) if embed_seconds else float("nan"),
                }
            )
            Console().print(rows[-1])

    at = [k for k in AT if k <= args.max_clicks]
    head = [
        "dataset",
        "method",
        "objects",
        *(f"mIoU@{k}" for k in at),
        "NoC@85",
        "NoC@90",
        "best pick %",
        "IoU drops %",
        "ms / click",
        "embed s",
    ]
    table = []
    for r in rows:
        cells = [r["dataset"], r["method"], str(r["objects"])]
        cells += [f"{r[f'miou@{k}']:.3f}" for k in AT if f"miou@{k}" in r]
        cells += [
            f"{r['noc@85']:.1f}",
            f"{r['noc@90']:.1f}",
            "-" if r["method"] == "random-walker" else f"{100 * r['picked_best']:.0f}",
            f"{100 * r['drops']:.1f}",
            f"{r['ms_per_click']:.0f}",
            "-" if r["embed_s"] != r["embed_s"] else f"{r['embed_s']:.2f}",
        ]
        table.append(cells)
    note = (
        f"Simulated clicks (cap {args.max_clicks}, {args.split} split), previous logits fed back, multimask "
        f"{args.multimask}, each ground-truth instance one object; `classical` is the weight-free prior (a "
        "seeded random walk) and `classical-regions` the previous one, neither is SAM. 'IoU drops': clicks "
        "after which IoU fell. Medians for times, this machine."
    )
    write_table(args.out, note, markdown_table(head, table))


if __name__ == "__main__":
    main()
