"""Whether the classical prior's first click could find the object's scale per image: the strength of
its objectness term, fixed for all images and chosen per image. Train splits only (the sets of
prior_cv.py: Penn-Fudan, COCO-mini, CamVid things); NOT SAM.

One positive click at each train instance's interior-most pixel; the prior answers its best-scored
candidate. Rows:

- `click_color_weight` fixed for every image (0: no objectness term; 0.001, the default, equals the
  background prior), and the total pull at the default's ratio of one (both weights 0.0007, both
  0.0015);
- the best weight of the fixed ones per image against the truth: the ceiling of any per-image
  choice of scale;
- a per-image choice learned from the answers' own shape along the weights (ridge regression of
  each weight's IoU on the log area share, border share and expected IoU of every weight's answer),
  fitted on two datasets and scored on the third (leave-one-dataset-out), and fitted on all three.

Besides mIoU@1, each fixed row gives the median of answer area over true area per dataset: below
one the answer holds a part of the object, above one it spreads past it.

Run: `python benchmarks/first_click_scale.py [--every 3]`; writes
benchmarks/results/first_click_scale.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from prior_cv import embedded_instances, train_sets
from rich.console import Console
from tables import markdown_table, write_table

from models.engine import Prompt
from models.engine.classical import ClassicalOptions, ClassicalPrior
from training.interactive import interior_point, mask_iou

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "first_click_scale"
DEFAULT = ClassicalOptions()
WEIGHTS = (0.0, 0.0005, 0.00071, DEFAULT.click_color_weight, 0.0014, 0.002)
RATIO_ONE = (0.0007, 0.0015)  # click_color_weight = click_background_prior
RIDGE = 0.1


def settings() -> dict[str, dict[str, float]]:
    """Row name -> the options it changes."""
    rows = {
        f"weight {w:g}" + (" (default)" if w == DEFAULT.click_color_weight else ""): {"click_color_weight": w}
        for w in WEIGHTS
    }
    for w in RATIO_ONE:
        rows[f"weight = background prior = {w:g}"] = {"click_color_weight": w, "click_background_prior": w}
    return rows


def measure(every: int) -> dict[str, dict[str, np.ndarray]]:
    """Per dataset, per row: N x 5 (IoU, answer area / true area, log area share, border share,
    expected IoU) of the best-scored answer."""
    engines = {row: ClassicalPrior(options=change) for row, change in settings().items()}
    out: dict[str, dict[str, np.ndarray]] = {}
    for name, samples in train_sets(every).items():
        embedder = ClassicalPrior(cache_bytes=2 * 1024**3)  # one embedding per image, every row reads it
        values: dict[str, list[list[float]]] = {row: [] for row in engines}
        for handle, truth in embedded_instances(embedder, samples, name):
            x, y = interior_point(truth)
            prompt = Prompt(points=[[x + 0.5, y + 0.5]], labels=[1])
            for row, engine in engines.items():
                answer = engine.predict(handle, [prompt])
                j = int(np.argmax(answer.iou[0]))
                m = answer.masks[0, j]
                edge = np.concatenate([m[0], m[-1], m[:, 0], m[:, -1]])
                values[row].append(
                    [
                        mask_iou(m, truth),
                        float(m.sum() / truth.sum()),
                        float(np.log(m.mean() + 1e-5)),
                        float(edge.mean()),
                        float(answer.iou[0, j]),
                    ]
                )
        out[name] = {row: np.array(v) for row, v in values.items()}
    return out


def selector(data: dict[str, dict[str, np.ndarray]], names: list[str], rows: list[str]):
    """Ridge regression of each row's IoU on every row's shape features, each dataset weighted
    equally; returns a function of one dataset's features -> the row picked per image."""

    def features(name: str) -> np.ndarray:
        return np.concatenate([data[name][r][:, 2:] for r in rows], axis=1)

    x = np.concatenate([features(n) for n in names])
    y = np.concatenate([np.stack([data[n][r][:, 0] for r in rows], 1) for n in names])
    weight = np.concatenate([np.full(len(data[n][rows[0]]), 1 / len(data[n][rows[0]])) for n in names])
    mu, sd = x.mean(0), x.std(0) + 1e-9
    z = np.c_[np.ones(len(x)), (x - mu) / sd]
    penalty = RIDGE * np.eye(z.shape[1])
    penalty[0, 0] = 0.0
    coef = np.linalg.solve(z.T @ (z * weight[:, None]) + penalty, z.T @ (y * weight[:, None]))
    return lambda name: (np.c_[np.ones(len(features(name))), (features(name) - mu) / sd] @ coef).argmax(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--every", type=int, default=3, help="every n-th Penn-Fudan train image")
    args = parser.parse_args()
    data = measure(args.every)
    names = list(data)
    fixed = [r for r in settings() if r.startswith("weight ") and "=" not in r]
    table = []
    for row in settings():
        scores = [float(data[n][row][:, 0].mean()) for n in names]
        ratios = [f"{np.median(data[n][row][:, 1]):.2f}" for n in names]
        table.append([row, *(f"{s:.3f}" for s in scores), f"{np.mean(scores):.3f}", " / ".join(ratios)])

    def picked(name: str, pick: np.ndarray) -> float:
        stacked = np.stack([data[name][r][:, 0] for r in fixed], 1)
        return float(stacked[np.arange(len(pick)), pick].mean())

    oracle = [float(np.stack([data[n][r][:, 0] for r in fixed], 1).max(1).mean()) for n in names]
    held_out = [picked(n, selector(data, [m for m in names if m != n], fixed)(n)) for n in names]
    in_domain = [picked(n, selector(data, names, fixed)(n)) for n in names]
    for label, scores in (
        ("per image: the best fixed weight (ceiling)", oracle),
        ("per image: learned, fitted on the other two", held_out),
        ("per image: learned, fitted on all three", in_domain),
    ):
        table.append([label, *(f"{s:.3f}" for s in scores), f"{np.mean(scores):.3f}", "-"])
    counts = ", ".join(f"{n} {len(data[n][fixed[0]])}" for n in names)
    note = (
        f"First click on the train splits ({counts} objects), classical prior (not SAM): mIoU@1 of the "
        "best-scored answer as the objectness weight changes, fixed and per image; the last column is "
        "the median answer area over true area. `python benchmarks/first_click_scale.py`."
    )
    head = ["objectness weight", *(f"mIoU@1 {n}" for n in names), "mean", "answer / truth area"]
    write_table(OUT.with_suffix(".md"), note, markdown_table(head, table), Console())


if __name__ == "__main__":
    main()
