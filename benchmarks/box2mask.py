"""Box -> mask: how well an engine turns a tight box into the object's mask.

Each ground-truth instance gets its tight bounding box as the prompt; the answer is the engine's
best-scored candidate. Data: without `--root`, Penn-Fudan (`--split val`; `train` chooses settings)
and COCO-mini val2017 (crowd regions left out); with `--root DIR --format {coco,folder,pennfudan}`,
a user's dataset (`training.datasets.instance_dataset`); `--limit N` keeps the first N images, or N
drawn with `--seed`. Engines: any registered backend (`--engines`, see `benchmarks/clicks.py`).
Baselines in the same run, by `--baselines` (default: box grabcut grabcut-margin, as before):
`box`, the filled box itself; `grabcut`, plain OpenCV GrabCut initialised with the box (5
iterations; `grabcut-margin` with the box grown by 10 %), the classical reference; `walker`,
scikit-image's plain random walker on the box and a one-pixel ring around it, the ring seeding
background and the box's central fifth (in width and height) seeding the object. Metric: mean mask
IoU over instances, for all and per COCO object size (small < 32^2, medium < 96^2, large >= 96^2
mask pixels).

Run: `python benchmarks/box2mask.py [--datasets pennfudan coco_mini | --root DIR --format F] [--split
S] [--limit N] [--engines ...] [--baselines box grabcut walker]`; writes benchmarks/results/box2mask.md
(with `--root`: box2mask_<folder name>.md).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from clicks import (
    SIZES,
    add_data_arguments,
    build_engines,
    by_size,
    datasets,
    engine_label,
    out_path,
    publish,
    subset_note,
)
from rich.console import Console
from rich.progress import track

from models.engine import Prompt
from training.interactive import mask_iou


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


def walker(image: np.ndarray, box: list[int], beta: float = 130.0) -> np.ndarray:
    """scikit-image's random walker on the box and a one-pixel ring around it (inside the image): the
    ring seeds background, the box's central fifth in width and height (at least a pixel) the object.
    The filled box where the box leaves no ring or is under 3 pixels across."""
    from skimage.segmentation import random_walker

    h, w = image.shape[:2]
    x0, y0, x1, y1 = box
    cx0, cy0, cx1, cy1 = max(0, x0 - 1), max(0, y0 - 1), min(w, x1 + 1), min(h, y1 + 1)
    if x1 - x0 < 3 or y1 - y0 < 3 or (cx1 - cx0, cy1 - cy0) == (x1 - x0, y1 - y0):
        return filled_box((h, w), box)
    seeds = np.full((cy1 - cy0, cx1 - cx0), 2, np.int32)
    seeds[y0 - cy0 : y1 - cy0, x0 - cx0 : x1 - cx0] = 0
    mx, my = (x0 + x1) // 2 - cx0, (y0 + y1) // 2 - cy0
    rx, ry = (x1 - x0) // 10, (y1 - y0) // 10
    seeds[my - ry : my + ry + 1, mx - rx : mx + rx + 1] = 1
    labels = random_walker(image[cy0:cy1, cx0:cx1], seeds, beta=beta, mode="cg_j", channel_axis=-1)
    out = np.zeros((h, w), bool)
    out[cy0:cy1, cx0:cx1] = labels == 1
    return out


# flag -> (the row's method, answer(image, box))
BASELINES = {
    "box": ("filled box", lambda image, box: filled_box(image.shape[:2], box)),
    "grabcut": ("grabcut", lambda image, box: grabcut(image, box, 0.0)),
    "grabcut-margin": ("grabcut +10% margin", lambda image, box: grabcut(image, box, 0.1)),
    "walker": ("random-walker", walker),
}
DEFAULT_BASELINES = ("box", "grabcut", "grabcut-margin")


def choose_baselines(asked: list[str] | None) -> list[str]:
    """--baselines, or the defaults; GrabCut needs opencv-python-headless (an error when asked for,
    left out with a warning by default)."""
    try:
        import cv2  # noqa: F401

        has_cv2 = True
    except ImportError:
        has_cv2 = False
    if asked is not None:
        if not has_cv2 and any(b.startswith("grabcut") for b in asked):
            raise SystemExit("GrabCut needs opencv-python-headless (pip install opencv-python-headless)")
        return list(dict.fromkeys(asked))
    if not has_cv2:
        Console().print("[yellow]opencv-python-headless is not installed: no GrabCut baseline")
    return [b for b in DEFAULT_BASELINES if has_cv2 or not b.startswith("grabcut")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_arguments(parser)
    parser.add_argument(
        "--baselines",
        nargs="*",
        default=None,
        choices=list(BASELINES),
        help=f"default: {' '.join(DEFAULT_BASELINES)}",
    )
    args = parser.parse_args()
    baselines = choose_baselines(args.baselines)
    if not args.engines and not baselines:
        raise SystemExit("nothing to run: name --engines or --baselines")
    engines = build_engines(args)
    data = datasets(args)

    table = []
    for label, samples in data:
        scores: dict[str, list[float]] = {m: [] for m in [*engines, *baselines]}
        seconds: dict[str, list[float]] = {m: [] for m in scores}
        truths = []
        for s in track(samples, description=label):
            image = s.load_image()
            handles = {name: engine.embed([image])[0] for name, engine in engines.items()}
            boxes = [tight_box(m) for m in s.masks]
            truths += s.masks
            for name, engine in engines.items():
                start = time.perf_counter()
                out = engine.predict(handles[name], [Prompt(box=b) for b in boxes]) if boxes else None
                seconds[name].append((time.perf_counter() - start) / max(1, len(boxes)))
                for i, truth in enumerate(s.masks):
                    scores[name].append(mask_iou(out.masks[i, int(np.argmax(out.iou[i]))], truth))
            for truth, box in zip(s.masks, boxes):
                for flag in baselines:
                    start = time.perf_counter()
                    scores[flag].append(mask_iou(BASELINES[flag][1](image, box), truth))
                    seconds[flag].append(time.perf_counter() - start)
        sizes = by_size(truths)
        for size in SIZES:
            for name, values in scores.items():
                method = engine_label(name, engines[name]) if name in engines else BASELINES[name][0]
                timed = size == "all" and name != "box" and seconds[name]
                ms = f"{1000 * np.median(seconds[name]):.0f}" if timed else "-"
                group = [values[i] for i in sizes[size]]
                iou = f"{np.mean(group):.3f}" if group else "-"
                table.append([label, method, size, str(len(group)), iou, ms])

    head = ["dataset", "method", "size", "objects", "mean mask IoU", "ms / box"]
    note = (
        f"Tight ground-truth box -> mask ({args.split} split), best-scored candidate, each ground-truth instance "
        "one object (COCO crowd regions left out); baselines: the filled box, OpenCV GrabCut (5 iterations; "
        "+10% margin: the box grown by 10 %) and scikit-image's random walker (`random-walker`: the box's "
        "one-pixel ring seeds background, its central fifth the object). `classical` is the weight-free prior (a "
        "seeded random walk), `classical-regions` the previous one; neither is SAM. Sizes as COCO's (mask "
        "pixels: small < 32^2, medium < 96^2, large); 'all' is every object. Times: medians on this machine, "
        "on the 'all' rows." + subset_note(args)
    )
    publish(out_path(args, "box2mask"), note, head, table)


if __name__ == "__main__":
    main()
