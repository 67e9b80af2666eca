"""Refining a folder of images: resumable, atomic, with progress, overlays and an HTML report.

Layout of `out/`: `<stem>.png` refined class maps (255 = unlabeled), `.meta/<stem>.json` per-image
stats (what makes a run resumable), `summary.json`, and with overlays `overlays/<stem>.png` plus
`report.html`. A failing image is reported and skipped; nothing half-written is left behind.
"""

from __future__ import annotations

import html
import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from models.engine import PromptableSegmenter, read_image
from models.engine.validation import list_images
from models.io import atomic_write, save_json, save_png
from models.progress import progress_bar
from models.refine.common import check_weak_kinds
from models.visualize import label_overlay, side_by_side
from models.weak import WeakLabels, load_weak_labels


@dataclass
class RefineRun:
    images: Path
    weak: Path
    out: Path
    method: str
    num_classes: int | None = None
    overlays: Path | None = None
    report: bool = False
    overwrite: bool = False
    limit: int | None = None
    options: dict[str, Any] = field(default_factory=dict)


# (image HxWx3 uint8, its weak labels, the image file) -> (HxW uint8 label map, stats)
RefineOne = Callable[[np.ndarray, WeakLabels, Path], tuple[np.ndarray, dict[str, Any]]]


def refine_folder(
    run: RefineRun, engine: PromptableSegmenter, labeler: Any, quiet: bool = False
) -> dict[str, Any]:
    """Refine every image that has weak labels in-process; returns (and writes) the summary."""

    def refine_one(image: np.ndarray, weak: WeakLabels, path: Path) -> tuple[np.ndarray, dict[str, Any]]:
        check_weak_kinds(labeler, weak, f"{run.weak / path.stem} (weak labels)")
        result = labeler.refine(image, weak)
        return result.labels, result.stats()

    return process_folder(run, refine_one, getattr(engine, "name", "?"), quiet=quiet)


def process_folder(
    run: RefineRun,
    refine_one: RefineOne,
    engine_name: str,
    quiet: bool = False,
    concurrency: int = 1,
    errors: tuple[type[Exception], ...] = (ValueError,),
) -> dict[str, Any]:
    """The folder loop behind `sesam refine`, whoever refines (in-process or a served endpoint).

    Skips images already refined (resume) unless `run.overwrite`; runs `concurrency` images at a
    time; an image whose refinement raises one of `errors` is reported and skipped.
    """
    if concurrency < 1:
        raise ValueError(f"--concurrency must be >= 1, got {concurrency}")
    stems = list_images(run.images)
    if not stems:
        raise ValueError(f"--images {run.images}: no images found")
    if not run.weak.is_dir():
        raise ValueError(f"--weak {run.weak}: not a folder")
    items = list(stems.items())[: run.limit] if run.limit else list(stems.items())
    meta_dir = run.out / ".meta"
    overlays = run.overlays or (run.out / "overlays" if run.report else None)

    def done(stem: str) -> bool:
        return (run.out / f"{stem}.png").exists() and (meta_dir / f"{stem}.json").exists()

    todo = [(stem, path) for stem, path in items if run.overwrite or not done(stem)]
    skipped = len(items) - len(todo)

    def work(stem: str, path: Path) -> None:
        image = read_image(path)
        weak = load_weak_labels(run.weak, stem, image.shape[:2], run.num_classes)
        t0 = time.perf_counter()
        labels, stats = refine_one(image, weak, path)
        stats = stats | {"seconds": round(time.perf_counter() - t0, 3), "weak_kinds": weak.kinds()}
        save_png(labels, run.out / f"{stem}.png")
        if overlays is not None:
            picture = side_by_side([label_overlay(image, weak.sparse_map()), label_overlay(image, labels)])
            save_png(picture, overlays / f"{stem}.png")
        save_json(stats, meta_dir / f"{stem}.json")

    failures: dict[str, str] = {}
    started = time.perf_counter()
    progress = progress_bar(f"refine {run.method}", disable=quiet)
    with progress, ThreadPoolExecutor(concurrency) as pool:
        task = progress.add_task("refine", total=len(items), info="")
        progress.advance(task, skipped)
        futures = {pool.submit(work, stem, path): stem for stem, path in todo}
        for future in as_completed(futures):
            stem = futures[future]
            try:
                future.result()
            except errors as exc:
                failures[stem] = str(exc)
                progress.console.print(f"[red]{stem}: {exc}")
            progress.update(task, advance=1, info=stem)
    per_image = {}
    for stem, _ in items:
        meta = meta_dir / f"{stem}.json"
        if meta.exists() and stem not in failures:
            per_image[stem] = json.loads(meta.read_text())
    summary = {
        "method": run.method,
        "options": run.options,
        "engine": engine_name,
        "images": len(items),
        "refined": len(todo) - len(failures),
        "skipped_existing": skipped,
        "failed": len(failures),
        "failures": failures,
        "seconds": round(time.perf_counter() - started, 2),
        "mean_labelled_fraction": float(np.mean([m["labelled_fraction"] for m in per_image.values()]))
        if per_image
        else None,
        "per_image": per_image,
    }
    save_json(summary, run.out / "summary.json")
    if run.report and overlays is not None:
        write_report(run.out / "report.html", summary, overlays, run.out)
    return summary


def write_report(path: Path, summary: dict[str, Any], overlays: Path, base: Path) -> None:
    """An HTML page: per image the weak labels and the refined labels drawn over it, with stats."""
    rows = []
    for stem, meta in summary["per_image"].items():
        picture = overlays / f"{stem}.png"
        try:
            src = picture.relative_to(base).as_posix()
        except ValueError:
            src = picture.resolve().as_uri()
        rows.append(
            f"<tr><td><b>{html.escape(stem)}</b><br>labelled {meta['labelled_fraction']:.1%}<br>"
            f"instances {meta['instances']}<br>prompts {meta['prompts']}<br>decoder calls {meta['decoder_calls']}"
            f"<br>{meta['seconds']} s</td><td><img src='{html.escape(src)}' loading='lazy'></td></tr>"
        )
    failures = "".join(
        f"<li><b>{html.escape(k)}</b>: {html.escape(v)}</li>" for k, v in summary["failures"].items()
    )
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>sesam refine: {html.escape(summary["method"])}</title>
<style>body{{font-family:sans-serif;margin:2em}} td{{vertical-align:top;padding:6px}} img{{max-width:960px}}
table{{border-collapse:collapse}} tr{{border-bottom:1px solid #ddd}}</style></head><body>
<h1>Refined labels: {html.escape(summary["method"])} ({html.escape(summary["engine"])})</h1>
<p>{summary["refined"]} refined, {summary["skipped_existing"]} already done, {summary["failed"]} failed,
{summary["seconds"]} s. Left: weak labels; right: refined labels (unlabeled pixels show the image).</p>
{"<h2>Failures</h2><ul>" + failures + "</ul>" if failures else ""}
<table>{"".join(rows)}</table></body></html>"""

    atomic_write(path, lambda tmp: Path(tmp).write_text(page))
