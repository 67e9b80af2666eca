"""Box -> mask: how well an engine turns a tight box into the object's mask.

Each ground-truth instance of Penn-Fudan (`--split val`; `train` chooses settings) and COCO-mini
val2017 (crowd regions left out) gets its tight bounding box as the prompt; the answer is the
engine's best-scored candidate. Floors in the same run: the filled box itself, and plain OpenCV
GrabCut initialised with the box (5 iterations; also with a 10 % margin), the classical reference.
Metric: mean mask IoU over instances.

Run: `python benchmarks/box2mask.py [--datasets pennfudan coco_mini] [--limit-images N]`; writes
benchmarks/results/box2mask.md.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from clicks import load
from rich.console import Console
from rich.progress import track
from tables import markdown_table, write_table

from models.engine import EngineConfig, Prompt, build_engine, read_image
from training.interactive import mask_iou

ROOT = Path(__file__).resolve().parents[1]


def tight_box(mask: np.ndarray) -> list[int]:
    """[x0, y0, x1, y1] with x1, y1 exclusive."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return [int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1]


def filled_box(shape: tuple[int, int], box: list[int]) -> np.ndarray:
    out = np.zeros(shape, bool)
    x0, y0, x1, y1 = box
    out[y0:y1, x0:x1] = True
    return out


def grabcut(image: np.ndarray, box: list[int], margin: float = 0.0, iterations: int = 5) -> np.ndarray:
    """OpenCV GrabCut from a rectangle (optionally grown by `margin` of its size, inside the image)."""
    import cv2

    h, w = image.shape[:2]
    x0, y0, x1, y1 = box
    dx, dy = margin * (x1 - x0), margin * (y1 - y0)
    x0, y0 = max(0, int(x0 - dx)), max(0, int(y0 - dy))
    x1, y1 = min(w, int(np.ceil(x1 + dx))), min(h, int(np.ceil(y1 + dy)))
    if x1 - x0 < 2 or y1 - y0 < 2 or (x1 - x0 >= w and y1 - y0 >= h):
        return filled_box((h, w), [x0, y0, x1, y1])
    mask = np.zeros((h, w), np.uint8)
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    bgr = np.ascontiguousarray(image[..., ::-1])
    try:
        cv2.grabCut(bgr, mask, (x0, y0, x1 - x0, y1 - y0), bgd, fgd, iterations, cv2.GC_INIT_WITH_RECT)
    except cv2.error:  # e.g. no background pixels to model
        return filled_box((h, w), [x0, y0, x1, y1])
    return (mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["pennfudan", "coco_mini"])
    parser.add_argument("--split", default="val")
    parser.add_argument("--engines", nargs="+", default=["classical", "classical-regions"])
    parser.add_argument("--limit-images", type=int, default=None)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "box2mask.md"))
    args = parser.parse_args()
    try:
        import cv2  # noqa: F401

        floors = ["filled box", "grabcut", "grabcut +10% margin"]
    except ImportError:
        floors = ["filled box"]
        Console().print("[yellow]opencv-python-headless is not installed: no GrabCut floor")

    rows = []
    for dataset in args.datasets:
        samples = load(dataset, args.split, args.limit_images)
        scores: dict[str, list[float]] = {m: [] for m in [*args.engines, *floors]}
        seconds: dict[str, list[float]] = {m: [] for m in scores}
        engines = {name: build_engine(EngineConfig(backend=name)) for name in args.engines}
        for s in track(samples, description=dataset, transient=True):
            image = read_image(s.image)
            handles = {name: engine.embed([image])[0] for name, engine in engines.items()}
            boxes = [tight_box(m) for m in s.masks]
            for name, engine in engines.items():
                start = time.perf_counter()
                out = engine.predict(handles[name], [Prompt(box=b) for b in boxes]) if boxes else None
                seconds[name].append((time.perf_counter() - start) / max(1, len(boxes)))
                for i, truth in enumerate(s.masks):
                    scores[name].append(mask_iou(out.masks[i, int(np.argmax(out.iou[i]))], truth))
            for truth, box in zip(s.masks, boxes):
                scores["filled box"].append(mask_iou(filled_box(truth.shape, box), truth))
                for floor, margin in (("grabcut", 0.0), ("grabcut +10% margin", 0.1)):
                    if floor in scores:
                        start = time.perf_counter()
                        scores[floor].append(mask_iou(grabcut(image, box, margin), truth))
                        seconds[floor].append(time.perf_counter() - start)
        for name, values in scores.items():
            label = engines[name].name if name in engines else name
            ms = 1000 * float(np.median(seconds[name])) if seconds[name] else float("nan")
            rows.append((f"{dataset} {args.split}", label, len(values), float(np.mean(values)), ms))

    head = ["dataset", "method", "objects", "mean mask IoU", "ms / box"]
    lines = markdown_table(
        head,
        (
            [dataset, label, str(n), f"{iou:.3f}", "-" if ms != ms else f"{ms:.0f}"]
            for dataset, label, n, iou, ms in rows
        ),
    )
    note = (
        f"Tight ground-truth box -> mask ({args.split} split), best-scored candidate; floors: the filled box and "
        "OpenCV GrabCut (5 iterations). `classical` is the weight-free prior (a seeded random walk), "
        "`classical-regions` the previous one; neither is SAM. Times: medians on this machine."
    )
    write_table(args.out, note, lines)


if __name__ == "__main__":
    main()
