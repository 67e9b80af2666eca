"""What the first click's saliency map costs, beside the embedding it rides on (same run, same image).

The classical prior computes boundary connectivity (`walker.boundary_connectivity`) once per image,
at its first first-click prompt, and keeps it with the embedding. Baseline: the prior's embedding
of the same image (Felzenszwalb regions, their graph and the pixel affinities), timed in the same
run. Images: the first `--images` of COCO-mini val and of CamVid val, at their own size and
enlarged to a 1024-pixel long side (the prior's working side), where regions are most numerous.
One thread; the embedding timed once per image, the map as the median of `--repeats` runs.

Run: `python benchmarks/saliency_cost.py`; writes benchmarks/results/saliency_cost.md.
"""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path

import numpy as np
from clicks import DATA, load
from PIL import Image
from tables import markdown_table, write_table
from threadpoolctl import threadpool_limits
from timing import median_seconds

from models.engine.classical import ClassicalOptions, ClassicalPrior
from models.engine.walker import boundary_connectivity
from training.datasets import CamVidThings

ROOT = Path(__file__).resolve().parents[1]


def enlarged(image: np.ndarray, side: int) -> np.ndarray:
    """The image resized so that its longer side is `side` pixels."""
    h, w = image.shape[:2]
    scale = side / max(h, w)
    return np.asarray(Image.fromarray(image).resize((round(w * scale), round(h * scale)), Image.BILINEAR))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5, help="images per dataset")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "saliency_cost.md"))
    args = parser.parse_args()
    sigma = ClassicalOptions().saliency_sigma
    sets = {
        "coco_mini val": [s.load_image() for s in load("coco_mini", "val", args.images)],
        "camvid val": [s.load_image() for s in CamVidThings(DATA / "camvid", "val").samples()[: args.images]],
    }
    rows = []
    with threadpool_limits(1):
        for name, images in sets.items():
            for label, resize in (("own size", None), ("1024 long side", 1024)):
                regions, embed, saliency = [], [], []
                for image in images:
                    image = image if resize is None else enlarged(image, resize)
                    seconds, handles = median_seconds(
                        partial(ClassicalPrior(working_side=None).embed, [image]), 1
                    )
                    graph = handles[0].payload.graph
                    embed.append(seconds)
                    saliency.append(
                        median_seconds(partial(boundary_connectivity, graph, sigma), args.repeats)[0]
                    )
                    regions.append(graph.count)
                ratio = np.array(saliency) / np.array(embed)
                rows.append(
                    [
                        name,
                        label,
                        f"{len(images)}",
                        f"{int(np.median(regions))} ({min(regions)}-{max(regions)})",
                        f"{1000 * np.median(embed):.0f}",
                        f"{1000 * np.median(saliency):.0f} ({1000 * min(saliency):.0f}-{1000 * max(saliency):.0f})",
                        f"{np.median(ratio):.2f} (max {ratio.max():.2f})",
                    ]
                )
    head = [
        "images",
        "size",
        "n",
        "regions, median (range)",
        "embed ms (baseline)",
        "saliency ms",
        "saliency / embed",
    ]
    note = (
        f"The first click's saliency map (boundary connectivity, sigma {sigma:g}) against the prior's "
        "embedding of the same image, one thread, this machine; medians over images (the map's time "
        f"per image the median of {args.repeats} runs). `python benchmarks/saliency_cost.py --images {args.images}`."
    )
    write_table(args.out, note, markdown_table(head, rows))


if __name__ == "__main__":
    main()
