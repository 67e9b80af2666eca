"""Choosing the classical prior's settings on Penn-Fudan TRAIN (val only reports, elsewhere).

Each row changes the named settings of `models.engine.classical.ClassicalOptions` and runs both
protocols on the train split: simulated clicks (`benchmarks/clicks.py`'s protocol, 20-click cap) and
tight box -> mask (`benchmarks/box2mask.py`). The click settings are chosen by the mean of mIoU@1..20
(the area under the click curve), the box settings by mean box IoU. Rows already measured are read
back from the JSON (the sweep resumes); `--fresh` measures again.

The box-alone and first-click settings (issue 28) are chosen across three datasets' train splits by
`benchmarks/prior_cv.py` instead; the rows stored in classical_sweep.json were measured before them.

Run: `python benchmarks/classical_sweep.py [--rows NAME ...] [--limit-images N]`; writes
benchmarks/results/classical_sweep.md and .json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from box2mask import tight_box
from clicks import load
from rich.console import Console
from rich.progress import track
from tables import markdown_table, write_table

from models.engine import Prompt, read_image
from models.engine.classical import ClassicalPrior
from models.io import atomic_write_text
from training.interactive import mask_iou, simulate_clicks, summarize

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "classical_sweep"

# name -> settings changed from the defaults (one or two at a time around them)
ROWS: dict[str, dict] = {
    "defaults": {},
    "border seeds, no background prior": {"border_background": True, "background_prior": 0.0},
    "background_prior 0.0003": {"background_prior": 0.0003},
    "background_prior 0.003": {"background_prior": 0.003},
    "thresholds 0.7, 0.5, 0.3": {"thresholds": [0.7, 0.5, 0.3]},
    "no pixel refinement": {"pixel_refine": False},
    "pixel_beta 8": {"pixel_beta": 8.0},
    "edge_weight 4": {"edge_weight": 4.0},
    "scale 40": {"scale": 40},
    "mask_weight 0.03": {"mask_weight": 0.03},
    "flip_share 0.5": {"flip_share": 0.5},
    "box_weight 0.1": {"box_weight": 0.1},
    "box_color_share 0.6": {"box_color_share": 0.6},
    "box_refits 0": {"box_refits": 0},
}
# settings read by one protocol only: a row changing only these skips the other protocol
BOX_ONLY = {"box_weight", "box_color_share", "box_spread", "box_refits", "color_bins"}
CLICKS_ONLY = {
    "mask_weight",
    "border_background",
    "background_prior",
    "click_radius",
    "clicked_pull",
    "flip_share",
}


def measure(options: dict, samples: list, images: dict) -> dict:
    """Click metrics (unless only box settings changed) and box IoU (unless only click settings did)."""
    engine = ClassicalPrior(options)
    clicks, boxes = (
        not set(options) <= BOX_ONLY or not options,
        not set(options) <= CLICKS_ONLY or not options,
    )
    runs, box_ious = [], []
    for s in track(samples, description=json.dumps(options), transient=True):
        handle = engine.embed([images[s.stem]])[0]
        if clicks:
            runs += [simulate_clicks(engine, handle, truth, 20) for truth in s.masks]
        if boxes and s.masks:
            out = engine.predict(handle, [Prompt(box=tight_box(m)) for m in s.masks])
            box_ious += [mask_iou(out.masks[i, int(np.argmax(out.iou[i]))], t) for i, t in enumerate(s.masks)]
    out: dict = {"box_iou": float(np.mean(box_ious)) if box_ious else None}
    if runs:
        curve = np.array([(r.ious + [r.ious[-1]] * 20)[:20] for r in runs]).mean(0)
        out |= {**summarize([r.ious for r in runs], (1, 5, 20), 20), "click_auc": float(curve.mean())}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", nargs="+", default=list(ROWS))
    parser.add_argument("--limit-images", type=int, default=None)
    parser.add_argument("--every", type=int, default=3, help="every n-th train image (3: a third of train)")
    parser.add_argument("--fresh", action="store_true")
    args = parser.parse_args()
    unknown = [r for r in args.rows if r not in ROWS]
    if unknown:
        parser.error(f"--rows: unknown {unknown}; choose from {list(ROWS)}")

    store = OUT.with_suffix(".json")
    results = {} if args.fresh or not store.exists() else json.loads(store.read_text())
    samples = load("pennfudan", "train", args.limit_images)[:: args.every]
    images = {s.stem: read_image(s.image) for s in samples}
    key = f"{len(samples)} images"
    for name in args.rows:
        if results.get(name, {}).get("images") == key:
            continue
        results[name] = {"images": key, "settings": ROWS[name], **measure(ROWS[name], samples, images)}
        atomic_write_text(store, json.dumps(results, indent=1) + "\n")
        Console().print(name, results[name])

    head = ["row", "settings", "mIoU@1", "mIoU@5", "mIoU@20", "NoC@85", "click AUC", "box IoU"]
    table = []
    for name, r in results.items():
        cells = [name, json.dumps(r["settings"]) if r["settings"] else "-"]
        if "click_auc" in r:
            cells += [f"{r[k]:.3f}" for k in ("miou@1", "miou@5", "miou@20")]
            cells += [f"{r['noc@85']:.1f}", f"{r['click_auc']:.3f}"]
        else:
            cells += ["-"] * 5
        cells.append("-" if r["box_iou"] is None else f"{r['box_iou']:.3f}")
        table.append(cells)
    first = next(iter(results.values()))
    note = (
        f"Penn-Fudan train ({first['images']}), classical prior settings one at a time around the "
        "defaults; clicks: cap 20, multimask on the first click; box: tight box, best-scored candidate. "
        "'-': the protocol does not read the changed setting."
    )
    write_table(OUT.with_suffix(".md"), note, markdown_table(head, table))


if __name__ == "__main__":
    main()
