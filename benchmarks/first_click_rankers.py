"""How much of the classical prior's first click is lost to ranking its three candidates, and whether
any cheap ranking rule recovers it across domains. Train splits only (the sets of prior_cv.py:
Penn-Fudan, COCO-mini, CamVid things); the prior runs at its defaults.

One positive click at each train instance's interior-most pixel gives three candidates (the
potentials above `click_thresholds`: core, middle, most likely). Each row answers one of them by a
rule and reports mean IoU (mIoU@1) per dataset:

- the default (the walk's expected IoU), the oracle (the best of the three against the truth: the
  ceiling of any ranking), and always the same candidate;
- single cues: SAM's stability score, boundary strength (how weak the pixel affinities across the
  candidate's boundary are), saliency contrast (the candidate's boundary-connectivity saliency minus
  a ring around it);
- an area cap: the most likely candidate unless it covers more than a share of the image, then the
  next smaller one (a flood guard);
- a linear quality head: ridge regression of each candidate's true IoU on the features above (plus
  area, border share, potentials inside and around, candidate index), fitted on all three datasets
  ("fitted on all three": in-domain) and leave-one-dataset-out ("fitted on the other two": the
  estimate for a domain it was not fitted on).

Run: `python benchmarks/first_click_rankers.py [--every 3]`; writes
benchmarks/results/first_click_rankers.md, and the per-candidate features (for trying other rules)
to runs/first_click_candidates.json.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
from prior_cv import embedded_instances, train_sets
from rich.console import Console
from scipy import ndimage as ndi
from tables import markdown_table, write_table

from models.engine import Prompt
from models.engine.classical import ClassicalPrior
from models.io import atomic_write_text
from training.interactive import interior_point, mask_iou

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "first_click_rankers"
FEATURES = ROOT / "runs" / "first_click_candidates.json"
AREA_CAPS = (0.1, 0.15, 0.2)
RIDGE = 1.0  # the head's L2 penalty on standardised features (0.01-1 give the same picks here)

Candidate = dict[str, float]
Rule = Callable[[list[Candidate]], int]


def candidate_features(engine: ClassicalPrior, handle, truth: np.ndarray) -> list[Candidate]:
    """The three first-click candidates of one instance: their features and true IoU."""
    payload = handle.payload
    x, y = interior_point(truth)
    prompt = Prompt(points=[[x + 0.5, y + 0.5]], labels=[1])
    out = engine.predict(handle, [prompt])
    clicks = engine.clicks(payload, prompt, None)
    potentials = engine.pixel_potentials(
        payload, prompt, clicks, engine.potentials(payload, prompt, clicks, None)
    )
    salient = (1 - payload.background_probability(engine.options.saliency_sigma))[payload.graph.labels]
    h, w = truth.shape
    border = np.zeros((h, w), bool)
    border[[0, -1]] = border[:, [0, -1]] = True
    rows = []
    for j in range(out.masks.shape[1]):
        m = out.masks[0, j]
        area = int(m.sum())
        ring = ndi.binary_dilation(m, iterations=max(3, int(0.1 * np.sqrt(max(area, 1))))) & ~m
        across = np.concatenate(
            [payload.horizontal[m[:, 1:] != m[:, :-1]], payload.vertical[m[1:] != m[:-1]]]
        )

        def mean(values: np.ndarray, where: np.ndarray) -> float:
            return float(values[where].mean()) if where.any() else 0.0

        rows.append(
            {
                "iou": mask_iou(m, truth),
                "index": j,
                "expected_iou": float(out.iou[0, j]),
                "stability": float(out.stability[0, j]),
                "area": area / (h * w),
                "border": float(m[border].mean()),
                "affinity_across": float(across.mean()) if across.size else 1.0,
                "salient_in": mean(salient, m),
                "salient_ring": mean(salient, ring),
                "potential_in": mean(potentials, m),
                "potential_ring": mean(potentials, ring),
            }
        )
    return rows


def collect(every: int) -> dict[str, list[list[Candidate]]]:
    out = {}
    for name, samples in train_sets(every).items():
        engine = ClassicalPrior(cache_bytes=2 * 1024**3)
        out[name] = [candidate_features(engine, h, t) for h, t in embedded_instances(engine, samples, name)]
    return out


def head_features(c: Candidate) -> list[float]:
    return [
        1.0,
        c["expected_iou"],
        c["stability"],
        float(np.log(c["area"] + 1e-5)),
        c["border"],
        c["affinity_across"],
        c["salient_in"],
        c["salient_ring"],
        c["potential_in"],
        c["potential_ring"],
        float(c["index"] == 1),
        float(c["index"] == 2),
    ]


def fit_head(data: dict[str, list[list[Candidate]]], names: list[str]) -> Rule:
    """Ridge regression of true IoU on `head_features`, each dataset weighted equally."""
    xs, ys = [], []
    for n in names:
        weight = 1 / np.sqrt(len(data[n]))
        xs += [np.array(head_features(c)) * weight for obj in data[n] for c in obj]
        ys += [c["iou"] * weight for obj in data[n] for c in obj]
    a, b = np.array(xs), np.array(ys)
    mu, sd = a.mean(0), a.std(0) + 1e-9
    mu[0], sd[0] = 0.0, 1.0  # the intercept column stays as it is and is not penalised
    z = (a - mu) / sd
    penalty = RIDGE * np.diag([0.0] + [1.0] * (z.shape[1] - 1))
    coef = np.linalg.solve(z.T @ z + penalty, z.T @ b)
    return lambda cands: int(np.argmax([((np.array(head_features(c)) - mu) / sd) @ coef for c in cands]))


def by_key(key: str, sign: float = 1.0) -> Rule:
    return lambda cands: int(np.argmax([sign * c[key] for c in cands]))


def always(j: int) -> Rule:
    return lambda cands: j


def area_cap(cap: float) -> Rule:
    def rule(cands: list[Candidate]) -> int:
        for j in sorted(range(len(cands)), key=lambda k: -cands[k]["area"]):
            if cands[j]["area"] <= cap:
                return j
        return int(np.argmin([c["area"] for c in cands]))

    return rule


def score(data: dict[str, list[list[Candidate]]], rule: Rule | dict[str, Rule]) -> dict[str, float]:
    return {
        n: float(
            np.mean([objs[(rule[n] if isinstance(rule, dict) else rule)(objs)]["iou"] for objs in data[n]])
        )
        for n in data
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--every", type=int, default=3, help="every n-th Penn-Fudan train image")
    args = parser.parse_args()
    data = collect(args.every)
    names = list(data)
    FEATURES.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(FEATURES, json.dumps(data) + "\n")
    rows: dict[str, Rule | dict[str, Rule]] = {
        "expected IoU (the default)": by_key("expected_iou"),
        "oracle: best of the three (ceiling)": by_key("iou"),
        **{f"always the {k}": always(j) for j, k in enumerate(("core", "middle", "most likely"))},
        "stability": by_key("stability"),
        "boundary strength": by_key("affinity_across", -1.0),
        "saliency contrast": lambda cands: int(
            np.argmax([c["salient_in"] - c["salient_ring"] for c in cands])
        ),
        **{f"area cap {cap}": area_cap(cap) for cap in AREA_CAPS},
        "linear head, fitted on all three": fit_head(data, names),
        "linear head, fitted on the other two": {
            n: fit_head(data, [m for m in names if m != n]) for n in names
        },
    }
    table, report = [], {}
    for row, rule in rows.items():
        result = score(data, rule)
        report[row] = result
        table.append([row, *(f"{result[n]:.3f}" for n in names), f"{np.mean(list(result.values())):.3f}"])
    counts = ", ".join(f"{n} {len(v)}" for n, v in data.items())
    note = (
        f"First click on the train splits ({counts} objects), classical prior at its defaults (not SAM): "
        "mIoU@1 when each rule picks one of the three candidates. `python benchmarks/first_click_rankers.py`."
    )
    head = ["rule", *(f"mIoU@1 {n}" for n in names), "mean"]
    write_table(OUT.with_suffix(".md"), note, markdown_table(head, table), Console())


if __name__ == "__main__":
    main()
