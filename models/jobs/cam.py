"""`sesam cam`: a folder of images through a CAM classifier, resumable, with overlays and a report.

Layout of `out/`: `<stem>.npz` (`cams`: CxHxW float16 CAMs normalised to [0, 1] at the image size;
`scores`: C image-level class probabilities), `<stem>.png` the CAM pseudo-labels (the image's tags
from `--weak` when given, else the classes scored >= 0.5; `models.students.cam.cam_pseudo_labels`),
`.meta/<stem>.json`, `summary.json`, and with `--report` overlays plus `report.html`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models.engine import read_image
from models.io import atomic_write, save_json, save_png
from models.jobs.folders import (
    RayOptions,
    claim_output,
    overlay_dir,
    overlay_missing,
    resolved,
    run_folder,
    write_summary,
)
from models.jobs.report import write_html_report
from models.jobs.visualize import label_overlay, side_by_side
from models.labels.schema import load_weak_labels
from models.students.cam import CamPredictor, cam_pseudo_labels


@dataclass
class CamRun:
    images: Path
    out: Path
    checkpoint: Path
    weak: Path | None = None
    threshold: float | None = None  # None: the checkpoint's
    background_class: int | None = None
    overlays: Path | None = None
    report: bool = False
    overwrite: bool = False
    limit: int | None = None


def heat_overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    """HxWx3 image blended with an HxW [0, 1] heat map (dark blue -> red -> yellow)."""
    h = np.clip(heat, 0, 1)[..., None]
    colour = np.concatenate(
        [np.clip(2 * h, 0, 1), np.clip(2 * h - 1, 0, 1), np.clip(1 - 2 * h, 0, 1) * 0.6], -1
    )
    out = (1 - alpha * h) * image.astype(np.float32) + alpha * h * 255 * colour
    return out.clip(0, 255).round().astype(np.uint8)


@dataclass
class CamWorker:
    """One image: CAMs, pseudo-labels, the `.npz`, the overlay and the stats."""

    run: CamRun
    errors: tuple[type[Exception], ...] = (ValueError,)

    def setup(self) -> None:
        self._cams = CamPredictor.cached(self.run.checkpoint)

    def __call__(self, stem: str, path: Path) -> None:
        run = self.run
        image = read_image(path)
        t0 = time.perf_counter()
        cams, scores = self._cams.maps_and_scores(image)
        if run.weak is not None:
            weak = load_weak_labels(run.weak, stem, image.shape[:2], self._cams.num_classes)
            if not weak.tags:
                raise ValueError(f"{run.weak / stem}.json: no tags (sesam cam --weak reads image tags)")
            tags, source = list(weak.tags), "weak"
        else:
            tags, source = [int(c) for c in np.flatnonzero(scores >= 0.5)], "predicted"
        threshold = run.threshold if run.threshold is not None else self._cams.threshold
        labels = cam_pseudo_labels(cams, tags, threshold, run.background_class)

        def write_npz(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                np.savez_compressed(f, cams=cams.numpy().astype(np.float16), scores=scores)

        atomic_write(run.out / f"{stem}.npz", write_npz)
        save_png(labels, run.out / f"{stem}.png")
        stats = {
            "tags": tags,
            "tags_from": source,
            "threshold": threshold,
            "scores": [round(float(s), 4) for s in scores],
            "labelled_fraction": float((labels != 255).mean()),
            "seconds": round(time.perf_counter() - t0, 3),
        }
        overlays = overlay_dir(run)
        if overlays is not None:
            heat = cams[tags].amax(0).numpy() if tags else np.zeros(image.shape[:2])
            picture = side_by_side([heat_overlay(image, heat), label_overlay(image, labels)])
            save_png(picture, overlays / f"{stem}.png")
        save_json(stats, run.out / ".meta" / f"{stem}.json")


def cam_folder(run: CamRun, quiet: bool = False, ray: RayOptions | None = None) -> dict[str, Any]:
    """CAMs for every image of `run.images` (resumable); returns (and writes) the summary."""
    meta_dir = run.out / ".meta"

    def done(stem: str) -> bool:
        outputs = (meta_dir / f"{stem}.json").exists() and (run.out / f"{stem}.npz").exists()
        return not run.overwrite and outputs and not overlay_missing(run, stem)

    if run.weak is not None and not run.weak.is_dir():
        raise ValueError(f"--weak {run.weak}: not a folder")
    CamPredictor.cached(run.checkpoint)  # a bad checkpoint fails here, once, naming the file
    what = {"checkpoint": resolved(run.checkpoint), "threshold": run.threshold, "weak": resolved(run.weak)}
    claim_output(run.out, what | {"background_class": run.background_class}, run.overwrite)
    result = run_folder(run.images, run.limit, done, CamWorker(run), "cam", quiet, 1, ray)
    header = {"checkpoint": str(run.checkpoint), "threshold": run.threshold}
    summary = write_summary(run.out, result, header, "done", ray)
    overlays = overlay_dir(run)
    if run.report and overlays is not None:
        rows = [
            (
                stem,
                [f"tags {meta['tags']} ({meta['tags_from']})", f"labelled {meta['labelled_fraction']:.1%}"],
                overlays / f"{stem}.png",
            )
            for stem, meta in summary["per_image"].items()
        ]
        intro = "Left: the CAM of the image's classes (max over them); right: the CAM pseudo-labels."
        write_html_report(
            run.out / "report.html", f"CAMs: {run.checkpoint.name}", intro, rows, result.failures
        )
    return summary
