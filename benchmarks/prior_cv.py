"""Choosing the classical prior's box and first-click settings by cross-validation over the TRAIN
splits of three datasets: Penn-Fudan, COCO-mini and CamVid (its "thing" instances). Val only reports.

Box -> mask (`--protocol box`): every train instance's tight box goes through the walk once (the
walk does not read the settings chosen here); then every setting of `BOX_GRID` scores the three
candidates (`ClassicalPrior.box_candidates`: the walk above the two `box_thresholds`, the filled
box) and answers the best-scored one. A setting is chosen on two datasets and reported on the third
(leave one dataset out), and the default on all three; the rule: the highest mean over datasets of
mean box IoU among the settings that are at or above the filled box at every COCO object size of
every dataset (sizes with at least `MIN_OBJECTS` objects), else the one with the smallest shortfall.

First click (`--protocol click`): one positive click at each train instance's interior-most pixel
(`training.interactive`), the best-scored of three candidates, for each row of `CLICK_ROWS`; the
row with the highest mean mIoU@1 over the three datasets is the default. With `--sessions` the old
defaults and the chosen row also run full 20-click sessions on the Penn-Fudan train third, reported
beside it (mIoU@20 and NoC are not part of the rule; docs/engine.md weighs them).

Later clicks (`--protocol session`): full 20-click sessions (previous logits fed back, multimask on
the first click; `training.interactive.simulate_clicks`) on every train instance of the three splits,
for each row of `SESSION_ROWS` (the settings later clicks read: the pull towards the last answer,
`click_mask_weight`, and when a contradicting click flips its whole region, `flip_share`; the
previous defaults are the "before" row); the row with the highest mean mIoU@20 over the three
datasets is the default. Each row's sessions are stored under runs/prior_cv_sessions/ as they
finish, so a stopped run resumes and `--rows` splits the rows over processes (a stored row is read
back only if it ran with the row's settings; delete that folder after changing the prior's code:
the code itself is not checked).

Run: `python benchmarks/prior_cv.py [--protocol box click session] [--sessions] [--rows NAME ...]`;
writes benchmarks/results/prior_cv.md and .json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from box2mask import tight_box
from clicks import DATA, load
from rich.console import Console
from rich.progress import track
from tables import markdown_table

from models.engine import Prompt
from models.engine.classical import ClassicalOptions, ClassicalPrior
from models.engine.walker import expected_iou
from models.io import atomic_write_text
from training.datasets import CamVidThings, coco_size
from training.interactive import interior_point, mask_iou, simulate_clicks, summarize
from training.samples import InstanceSample

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "prior_cv"
SIZES = ("small", "medium", "large")
MIN_OBJECTS = 10  # a size with fewer objects in a dataset is reported, not held to the floor
OLD_THRESHOLDS = (0.85, 0.7, 0.5)  # the prior's candidates for a box before the box candidate

BOX_GRID = {
    "box_thresholds": [(0.5, 0.3), (0.4, 0.3), (0.4, 0.2)],
    "box_trust_side": [32.0, 48.0, 64.0, 96.0],
    "box_trust_fill": [0.5, 0.6, 0.7],
    "box_fill_prior": [0.5, 0.6, 0.7],
}
# name -> settings changed from the defaults, for the first click; the rows from before the
# saliency term keep it off (click_saliency 0), as they ran then (with click_color_weight 0 it
# does nothing, so those rows need no switch)
NO_SALIENCY = {"click_saliency": 0.0}
# every row from before the seventh pass ran without refits (`click_refits` 0, pinned below so that
# they reproduce now that the default refits twice)
NO_REFITS = {"click_refits": 0}
_EARLIER_CLICK_ROWS: dict[str, dict] = {
    "candidates 0.7, 0.5, 0.3": {
        "click_color_weight": 0.0,
        "click_thresholds": (0.7, 0.5, 0.3),
    },
    "colour 0.0005": {"click_color_weight": 0.0005, **NO_SALIENCY},
    "colour 0.001": {"click_color_weight": 0.001, **NO_SALIENCY},
    "colour 0.0015": {"click_color_weight": 0.0015, **NO_SALIENCY},
    "colour 0.001, background 0.002": {
        "click_color_weight": 0.001,
        "click_background_prior": 0.002,
        **NO_SALIENCY,
    },
    "colour 0.002, background 0.002": {
        "click_color_weight": 0.002,
        "click_background_prior": 0.002,
        **NO_SALIENCY,
    },
    "colour 0.001, candidates 0.9, 0.75, 0.6": {
        "click_color_weight": 0.001,
        "click_thresholds": (0.9, 0.75, 0.6),
        **NO_SALIENCY,
    },
    **{
        f"colour 0.001, saliency {share} (sigma {sigma})": {
            "click_color_weight": 0.001,
            "click_saliency": share,
            "saliency_sigma": float(sigma),
        }
        for share in (0.3, 0.5, 0.7)
        for sigma in (10, 20, 30)
    },
    # the candidates were chosen before the objectness terms (thresholds row above); again with them
    **{
        f"colour 0.001, saliency 0.5 (sigma 30), candidates {', '.join(map(str, ts))}": {
            "click_color_weight": 0.001,
            "click_saliency": 0.5,
            "saliency_sigma": 30.0,
            "click_thresholds": ts,
        }
        for ts in ((0.8, 0.6, 0.4), (0.7, 0.5, 0.3))
    },
}
CLICK_ROWS: dict[str, dict] = {
    **{name: {**setting, **NO_REFITS} for name, setting in _EARLIER_CLICK_ROWS.items()},
    # issue 28, seventh pass: the objectness colour models refitted on the objectness walk's own
    # answer (GrabCut's refit, as boxes do), at the chosen saliency share and beside it
    **{
        f"colour 0.001, saliency {share} (sigma 30), refits {n}": {
            "click_color_weight": 0.001,
            "click_saliency": share,
            "saliency_sigma": 30.0,
            "click_refits": n,
        }
        for share, n in ((0.5, 1), (0.5, 2), (0.3, 1), (0.7, 1))
    },
}


# name -> settings changed from the defaults, for the clicks after the first (`--protocol session`);
# chosen in the third pass, their first click without refits (as they ran)
SESSION_ROWS: dict[str, dict] = {
    name: {**setting, **NO_REFITS}
    for name, setting in {
        "before: pull 0.01, flip_share 1": {"click_mask_weight": 0.01, "flip_share": 1.0},
        "pull 0.003": {"click_mask_weight": 0.003, "flip_share": 1.0},
        "pull 0.03": {"click_mask_weight": 0.03, "flip_share": 1.0},
        "pull 0.1": {"click_mask_weight": 0.1, "flip_share": 1.0},
        "flip_share 0.5": {"click_mask_weight": 0.01, "flip_share": 0.5},
        "flip_share 0.25": {"click_mask_weight": 0.01, "flip_share": 0.25},
        "pull 0.03, flip_share 0.5": {"click_mask_weight": 0.03, "flip_share": 0.5},
    }.items()
}
SESSION_STORE = ROOT / "runs" / "prior_cv_sessions"


def row_cells(row: str, settings: dict, chosen: str) -> list[str]:
    """A table row's first two cells: its name (marked if chosen) and its settings."""
    return [row + (" (chosen)" if row == chosen else ""), json.dumps(settings) if settings else "-"]


def session_file(row: str) -> Path:
    """Where a session row's results are stored."""
    return SESSION_STORE / (re.sub(r"[^A-Za-z0-9.]+", "_", row).strip("_") + ".json")


def stored_with(path: Path, settings: dict) -> bool:
    """Whether a session row is stored, run with `settings` (compared as JSON: tuples are lists)."""
    return path.exists() and json.loads(path.read_text())["settings"] == json.loads(json.dumps(settings))


def train_sets(every: int) -> dict[str, list[InstanceSample]]:
    """The three train splits: Penn-Fudan (every `every`-th image), COCO-mini train2017 (every
    other image) and CamVid's thing instances (every 4 * `every`-th train image)."""
    return {
        "pennfudan": load("pennfudan", "train", None)[::every],
        "coco_mini": load("coco_mini", "train", None)[::2],
        "camvid": [s for s in CamVidThings(DATA / "camvid", "train").samples()[:: 4 * every] if s.masks],
    }


# -- box -> mask ---------------------------------------------------------------------------------


def embedded_instances(engine: ClassicalPrior, samples: list[InstanceSample], description: str):
    """(image handle, HxW truth) per instance of the samples, each image embedded once."""
    for s in track(samples, description=description, transient=True):
        if s.masks:
            handle = engine.embed([s.load_image()])[0]
            yield from ((handle, truth) for truth in s.masks)


def walk_boxes(engine: ClassicalPrior, samples: list[InstanceSample]) -> list[dict]:
    """Per instance: the walk's potentials inside its tight box, the truth there, its size."""
    out = []
    for handle, truth in embedded_instances(engine, samples, "box walks"):
        payload = handle.payload
        box = tight_box(truth)
        prompt = Prompt(box=box)
        x = engine.potentials(payload, prompt, [], None)
        y = engine.pixel_potentials(payload, prompt, [], x)
        x0, y0, x1, y1 = box
        out.append(
            {
                "y": y[y0:y1, x0:x1].astype(np.float32),
                "truth": truth[y0:y1, x0:x1],
                "size": coco_size(truth),
            }
        )
    return out


def score_box(engine: ClassicalPrior, objects: list[dict], options: ClassicalOptions | None) -> list[float]:
    """IoU of the best-scored candidate per object (options None: the old rule, the best by the
    walk's expected IoU of the candidates above OLD_THRESHOLDS)."""
    out = []
    for o in objects:
        y, truth = o["y"], o["truth"]
        if options is None:
            masks = [y > t for t in OLD_THRESHOLDS]
            best = masks[int(np.argmax([expected_iou(y, None, m) for m in masks]))]
        else:
            engine.options = options
            candidates, scores = engine.box_candidates(y, np.array([0, 0, y.shape[1], y.shape[0]]))
            best = candidates[int(np.argmax(scores))]
        out.append(mask_iou(best, truth))
    return out


def by_size(objects: list[dict], ious: list[float]) -> dict[str, float | None]:
    out: dict[str, float | None] = {"all": float(np.mean(ious))}
    for size in SIZES:
        group = [v for o, v in zip(objects, ious) if o["size"] == size]
        out[size] = float(np.mean(group)) if group else None
    return out


def shortfall(result: dict, floor: dict, counts: dict) -> float:
    """The largest amount a (dataset, size) with enough objects falls below the filled box (0: none)."""
    worst = 0.0
    for name, sizes in result.items():
        for size in SIZES:
            if counts[name][size] >= MIN_OBJECTS:
                worst = max(worst, floor[name][size] - sizes[size])
    return worst


def choose(
    results: list[tuple[dict, dict]], names: list[str], floor: dict, counts: dict
) -> tuple[dict, dict]:
    """The setting with the highest mean box IoU over `names` among those at or above the filled
    box at every size there, else the one with the smallest shortfall."""

    return max(results, key=lambda item: rule_key(item, names, floor, counts))


def rule_key(item: tuple[dict, dict], names: list[str], floor: dict, counts: dict) -> tuple[float, float]:
    """(minus the shortfall below the filled box, the mean box IoU) over `names`: larger is better."""
    _, result = item
    part = {n: result[n] for n in names}
    return (-round(shortfall(part, floor, counts), 3), float(np.mean([part[n]["all"] for n in names])))


def box_protocol(sets: dict[str, list[InstanceSample]], report: dict) -> list[str]:
    engine = ClassicalPrior()
    base = engine.options
    objects = {}
    for name, samples in sets.items():
        start = time.perf_counter()
        objects[name] = walk_boxes(engine, samples)
        Console().print(f"{name}: {len(objects[name])} boxes walked in {time.perf_counter() - start:.0f} s")
    counts = {n: {s: int(sum(o["size"] == s for o in objs)) for s in SIZES} for n, objs in objects.items()}
    for n in counts:
        counts[n]["all"] = len(objects[n])
    floor = {n: by_size(objs, [float(o["truth"].mean()) for o in objs]) for n, objs in objects.items()}
    old = {n: by_size(objs, score_box(engine, objs, None)) for n, objs in objects.items()}
    results = []
    keys = list(BOX_GRID)
    for values in track(list(itertools.product(*BOX_GRID.values())), description="box settings"):
        setting = dict(zip(keys, values))
        options = replace(base, **setting).validate()
        results.append(
            (setting, {n: by_size(objs, score_box(engine, objs, options)) for n, objs in objects.items()})
        )
    names = list(objects)
    chosen, on_all = choose(results, names, floor, counts)
    ranked = sorted(results, key=lambda item: rule_key(item, names, floor, counts), reverse=True)
    held_out = {}
    for name in names:
        others = [n for n in names if n != name]
        setting, result = choose(results, others, floor, counts)
        held_out[name] = {"setting": setting, "result": result[name]}
    report["box"] = {
        "counts": counts,
        "filled_box": floor,
        "old": old,
        "chosen": {"setting": chosen, "result": on_all},
        "held_out": held_out,
        "grid": BOX_GRID,
        "top": [{"setting": st, "result": r} for st, r in ranked[:6]],
    }

    def cells(values: dict) -> list[str]:
        return [f"{values[k]:.3f}" if values[k] is not None else "-" for k in ("all", *SIZES)]

    rows = []
    for name in names:
        rows.append([name, "filled box", "-", *cells(floor[name])])
        rows.append([name, "old prior (walk only)", "-", *cells(old[name])])
        rows.append([name, "chosen on all three", json.dumps(chosen), *cells(on_all[name])])
        rows.append(
            [
                name,
                "chosen on the other two",
                json.dumps(held_out[name]["setting"]),
                *cells(held_out[name]["result"]),
            ]
        )
    for setting, result in ranked[:6]:
        rows.append(
            [
                "runner-up",
                f"mean {np.mean([result[n]['all'] for n in names]):.3f}, "
                f"shortfall {shortfall(result, floor, counts):.3f}",
                json.dumps(setting),
                *(f"{result[n]['all']:.3f}" for n in names),
                "",
            ]
        )
    count_text = "; ".join(
        f"{n}: {counts[n]['all']} ({', '.join(f'{s} {counts[n][s]}' for s in SIZES)})" for n in names
    )
    head = ["train split", "answer", "settings", "all", *SIZES]
    note = (
        f"Box -> mask on the train splits ({count_text} objects), mean mask IoU of the best-scored "
        f"candidate over {len(results)} settings of {', '.join(keys)}. 'chosen on the other two': the "
        "setting leave-one-dataset-out chooses without this dataset, scored on it (the spread of a "
        "setting across domains). The rule: highest mean over datasets among the settings at or above "
        f"the filled box at every size with >= {MIN_OBJECTS} objects. 'runner-up' rows: the best six "
        "settings on all three, their 'all' IoU per dataset in the all / small / medium columns in "
        "dataset order (pennfudan, coco_mini, camvid). The walk runs once per box with the default "
        "settings (its pixel band follows the default box_thresholds)."
    )
    return [note, "", *markdown_table(head, rows)]


# -- first click ---------------------------------------------------------------------------------


def first_clicks(engine: ClassicalPrior, samples: list[InstanceSample]) -> list[tuple]:
    """Per instance: (handle, truth, x, y) with its interior-most pixel as the click."""
    return [(h, truth, *interior_point(truth)) for h, truth in embedded_instances(engine, samples, "embed")]


def click_protocol(sets: dict[str, list[InstanceSample]], report: dict, sessions: bool) -> list[str]:
    """mIoU@1 of every row on every train split; the row with the highest mean over the splits is
    chosen; with `sessions`, the old defaults and the chosen row also run 20-click sessions on the
    Penn-Fudan train objects (mIoU@20 must hold)."""
    engine = ClassicalPrior(cache_bytes=8 * 1024**3)
    base = engine.options
    items = {name: first_clicks(engine, samples) for name, samples in sets.items()}
    rows = {}
    for row, setting in {"old defaults": OLD_CLICK, **CLICK_ROWS}.items():
        engine.options = replace(base, **setting).validate()
        result = {}
        start = time.perf_counter()
        for name, objs in items.items():
            ious = []
            for handle, truth, x, y in objs:
                out = engine.predict(handle, [Prompt(points=[[x + 0.5, y + 0.5]], labels=[1])])
                ious.append(mask_iou(out.masks[0, int(np.argmax(out.iou[0]))], truth))
            result[name] = float(np.mean(ious))
        result["ms"] = 1000 * (time.perf_counter() - start) / sum(len(v) for v in items.values())
        rows[row] = {"settings": setting, **result}
        Console().print(row, result)
    names = list(items)
    chosen = max((r for r in rows if r != "old defaults"), key=lambda r: np.mean([rows[r][n] for n in names]))
    if sessions:
        for row in ("old defaults", chosen):
            engine.options = replace(base, **rows[row]["settings"]).validate()
            runs = [simulate_clicks(engine, handle, truth, 20) for handle, truth, _, _ in items["pennfudan"]]
            rows[row]["pennfudan sessions"] = summarize([r.ious for r in runs], (1, 5, 20), 20)
            Console().print(row, rows[row]["pennfudan sessions"])
    report["click"] = {"rows": rows, "chosen": chosen}
    table = []
    for row, r in rows.items():
        cells = row_cells(row, r["settings"], chosen)
        cells += [f"{r[n]:.3f}" for n in names]
        cells += [
            f"{np.mean([r[n] for n in names]):.3f}",
            f"{min(r[n] for n in names):.3f}",
            f"{r['ms']:.0f}",
        ]
        s = r.get("pennfudan sessions")
        cells += [f"{s['miou@20']:.3f}", f"{s['noc@85']:.1f}", f"{s['noc@90']:.1f}"] if s else ["-"] * 3
        table.append(cells)
    head = ["row", "settings", *(f"mIoU@1 {n}" for n in names), "mean", "worst", "ms / click"]
    head += ["Penn-Fudan mIoU@20", "NoC@85", "NoC@90"]
    counts = ", ".join(f"{n} {len(objs)}" for n, objs in items.items())
    note = (
        f"First click on the train splits ({counts} objects): one positive click at the interior-most "
        "pixel, the best-scored of three candidates, mean IoU; the row with the highest mean over the "
        "three is chosen. Sessions (the old defaults and the chosen row): 20 clicks, previous logits fed "
        "back, on the Penn-Fudan train objects."
    )
    return [note, "", *markdown_table(head, table)]


OLD_CLICK: dict = {"click_color_weight": 0.0, **NO_REFITS}  # the prior before the objectness term


# -- later clicks --------------------------------------------------------------------------------


def session_protocol(
    sets: dict[str, list[InstanceSample]], report: dict, only: list[str] | None
) -> list[str] | None:
    """20-click sessions of the defaults and every `SESSION_ROWS` row on the three train splits; the
    row with the highest mean mIoU@20 is chosen. Rows already stored are read back, not rerun;
    `only` runs just those rows. None until every row is stored (then the table)."""
    rows_all = SESSION_ROWS
    unknown = set(only or []) - set(rows_all)
    if unknown:
        raise SystemExit(f"--rows: no such session row {sorted(unknown)}; choose from {list(rows_all)}")
    SESSION_STORE.mkdir(parents=True, exist_ok=True)
    engine = ClassicalPrior(cache_bytes=8 * 1024**3)
    base = engine.options
    items: dict[str, list[tuple]] | None = None
    for row in only or rows_all:
        path = session_file(row)
        if stored_with(path, rows_all[row]):
            continue
        if items is None:
            items = {name: first_clicks(engine, samples) for name, samples in sets.items()}
        engine.options = replace(base, **rows_all[row]).validate()
        result: dict[str, dict] = {"settings": rows_all[row]}
        start = time.perf_counter()
        for name, objs in items.items():
            runs = [
                simulate_clicks(engine, handle, truth, 20)
                for handle, truth, _, _ in track(objs, description=f"{row}: {name}", transient=True)
            ]
            result[name] = summarize([r.ious for r in runs], (1, 5, 20), 20)
        result["minutes"] = (time.perf_counter() - start) / 60
        atomic_write_text(path, json.dumps(result, indent=1) + "\n")
        Console().print(row, result)
    stored = {r: session_file(r) for r in rows_all}
    missing = [r for r, p in stored.items() if not stored_with(p, rows_all[r])]
    if missing:
        Console().print(f"sessions still to run: {missing}")
        return None
    rows = {r: json.loads(p.read_text()) for r, p in stored.items()}
    names = list(sets)
    chosen = max(rows, key=lambda r: np.mean([rows[r][n]["miou@20"] for n in names]))
    report["session"] = {"rows": rows, "chosen": chosen}
    table = []
    for row, r in rows.items():
        cells = row_cells(row, r["settings"], chosen)
        cells += [f"{r[n]['miou@20']:.3f}" for n in names]
        cells += [f"{np.mean([r[n]['miou@20'] for n in names]):.3f}"]
        cells += [f"{np.mean([r[n][k] for n in names]):.3f}" for k in ("miou@1", "miou@5")]
        cells += [f"{np.mean([r[n][k] for n in names]):.1f}" for k in ("noc@85", "noc@90")]
        cells += [" / ".join(f"{r[n]['noc@90']:.1f}" for n in names)]
        table.append(cells)
    head = ["row", "settings", *(f"mIoU@20 {n}" for n in names), "mean mIoU@20"]
    head += ["mean mIoU@1", "mean mIoU@5", "mean NoC@85", "mean NoC@90", "NoC@90 per dataset"]
    counts = ", ".join(f"{n} {next(iter(rows.values()))[n]['objects']}" for n in names)
    note = (
        f"Later clicks on the train splits ({counts} objects): 20-click sessions, the next click at the "
        "centre of the largest error, previous logits fed back, multimask on the first click only; the "
        "row with the highest mean mIoU@20 over the three datasets is chosen."
    )
    return [note, "", *markdown_table(head, table)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--protocol", nargs="+", default=["box", "click"], choices=["box", "click", "session"]
    )
    parser.add_argument("--every", type=int, default=3, help="every n-th Penn-Fudan train image")
    parser.add_argument("--sessions", action="store_true", help="clicks: also 20-click sessions")
    parser.add_argument(
        "--rows", nargs="+", help="session: run only these rows (to split them over processes)"
    )
    args = parser.parse_args()
    sets = train_sets(args.every)
    report: dict = {}
    sections: dict[str, list[str]] = {}
    if "box" in args.protocol:
        sections["box"] = box_protocol(sets, report)
    if "click" in args.protocol:
        sections["click"] = click_protocol(sets, report, args.sessions)
    if "session" in args.protocol:
        section = session_protocol(sets, report, args.rows)
        if section is not None:
            sections["session"] = section
    if sections:
        write_results(report, sections)


def write_results(report: dict, sections: dict[str, list[str]]) -> None:
    """Merge this run's protocols into the stored results (read now, not at start: another run may
    have written its own protocols meanwhile) and rewrite the table file."""
    store = OUT.with_suffix(".json")
    merged = json.loads(store.read_text()) if store.exists() else {}
    stored = json.loads(merged.pop("_sections", "{}"))
    merged.update(report)
    stored.update(sections)
    merged["_sections"] = json.dumps(stored)
    atomic_write_text(store, json.dumps(merged, indent=1) + "\n")
    text = "\n\n".join("\n".join(stored[k]) for k in ("box", "click", "session") if k in stored)
    atomic_write_text(OUT.with_suffix(".md"), text + "\n")
    Console().print(text)


if __name__ == "__main__":
    main()
