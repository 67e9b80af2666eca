"""Batch refinement through a running service: `sesam refine --endpoint URL ...`.

The output folder is laid out exactly as in-process `sesam refine` writes it (`<stem>.png`,
`.meta/<stem>.json`, `summary.json`, optional overlays and report), so runs are resumable the same
way and the label maps are identical: the server runs the same labeler and returns a lossless PNG.
Requests run with bounded concurrency; the client retries connection errors and 5xx with backoff.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np

from models.engine import read_image
from models.engine.validation import list_images
from models.progress import progress_bar
from models.refine.run import RefineRun, write_report
from models.visualize import label_overlay, side_by_side
from models.weak import load_weak_labels, save_json, save_png
from serving.client import ServiceError, SesamClient
from serving.codec import decode_labels


def _refine_one(client: SesamClient, run: RefineRun, stem: str, path: Path, overlays: Path | None) -> dict:
    image = read_image(path)
    weak = load_weak_labels(run.weak, stem, image.shape[:2], run.num_classes)
    t0 = time.perf_counter()
    answer = client.refine(
        path.read_bytes(), weak, method=run.method, options=run.options, num_classes=run.num_classes
    )
    labels = decode_labels(answer["labels"])
    if labels.shape != image.shape[:2]:
        raise ValueError(f"{stem}: server answered a {labels.shape} map for a {image.shape[:2]} image")
    stats = answer["stats"] | {"seconds": round(time.perf_counter() - t0, 3), "endpoint": client.url}
    save_png(labels, run.out / f"{stem}.png")
    if overlays is not None:
        picture = side_by_side([label_overlay(image, weak.sparse_map()), label_overlay(image, labels)])
        save_png(picture, overlays / f"{stem}.png")
    save_json(stats, run.out / ".meta" / f"{stem}.json")
    return stats


def refine_folder_remote(
    run: RefineRun, client: SesamClient, concurrency: int = 4, quiet: bool = False
) -> dict[str, Any]:
    """Refine every image with weak labels through the service; returns (and writes) the summary."""
    if concurrency < 1:
        raise ValueError(f"--concurrency must be >= 1, got {concurrency}")
    stems = list_images(run.images)
    if not stems:
        raise ValueError(f"--images {run.images}: no images found")
    if not run.weak.is_dir():
        raise ValueError(f"--weak {run.weak}: not a folder")
    if not client.ready():
        raise ValueError(f"--endpoint {client.url}: the service is not reachable or not ready (GET /readyz)")
    items = list(stems.items())[: run.limit] if run.limit else list(stems.items())
    meta_dir = run.out / ".meta"
    overlays = run.overlays or (run.out / "overlays" if run.report else None)
    todo = [
        (stem, path)
        for stem, path in items
        if run.overwrite or not ((run.out / f"{stem}.png").exists() and (meta_dir / f"{stem}.json").exists())
    ]
    skipped = len(items) - len(todo)
    failures: dict[str, str] = {}
    started = time.perf_counter()
    progress = progress_bar(f"refine {run.method} via {client.url}", disable=quiet)
    with progress, ThreadPoolExecutor(concurrency) as pool:
        task = progress.add_task("refine", total=len(items), info="")
        progress.advance(task, skipped)
        futures = {pool.submit(_refine_one, client, run, stem, path, overlays): stem for stem, path in todo}
        for future in as_completed(futures):
            stem = futures[future]
            try:
                future.result()
            except (ValueError, ServiceError) as exc:
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
        "engine": f"endpoint {client.url}",
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
