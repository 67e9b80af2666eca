"""`sesam segment`: a folder of images through a student, in-process, through a served /segment, or
on Ray; resumable, atomic, with progress, overlays and an HTML report (the layout of `sesam refine`).

Layout of `out/`: `<stem>.png` label maps (semantic students) or `<stem>.json` instances (instance
students: COCO RLE mask, class, score, box per instance), `.meta/<stem>.json` per-image stats (what
makes a run resumable), `summary.json`, and with overlays `overlays/<stem>.png` plus `report.html`.
A failing image is reported and skipped; nothing half-written is left behind.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models.engine import read_image
from models.io import decode_rle, instance_records, save_json, save_png
from models.jobs.coco import LABEL_STUDIO_PREFIX, answer_names, coco_tasks, write_answer_files
from models.jobs.folders import (
    RayOptions,
    claim_output,
    overlay_dir,
    overlay_missing,
    run_folder,
    write_summary,
)
from models.jobs.report import write_html_report
from models.jobs.visualize import label_overlay, overlay_masks, side_by_side


@dataclass
class SegmentRun:
    images: Path
    out: Path
    min_score: float = 0.5  # instance students: instances below this score are not written
    overlays: Path | None = None
    report: bool = False
    overwrite: bool = False
    limit: int | None = None
    image_prefix: str = LABEL_STUDIO_PREFIX  # label_studio.json's image URL: this + the file name


# (image HxWx3 uint8, its file) -> (task, answer, class names): ("semantic", HxW uint8 label map)
# or ("instance", instance records)
SegmentOne = Callable[[np.ndarray, Path], tuple[str, Any, list[str]]]


@dataclass
class LoadStudent:
    """A picklable `SegmentOne` factory: loads the student where it runs (this process, a Ray actor)."""

    source: str
    runtime: str = "auto"
    device: str = "cpu"
    providers: str | None = None
    min_score: float = 0.5
    threads: int | None = None  # intra-op threads (torch and ONNX Runtime); None: the runtime's default

    def __call__(self) -> SegmentOne:
        import torch

        from models.students.runtime import load_segmenter

        if self.threads:  # float sums depend on the thread count: fix it for identical answers
            torch.set_num_threads(self.threads)
        student = load_segmenter(self.source, self.runtime, self.device, self.providers, self.threads)
        return student_segment_one(student, self.min_score)


def student_segment_one(student: Any, min_score: float) -> SegmentOne:
    names = list(student.class_names or [])

    def segment_one(image: np.ndarray, path: Path) -> tuple[str, Any, list[str]]:
        if student.task == "semantic":
            return "semantic", student.segment([image])[0], names
        masks, classes, scores = student.segment([image], top_k=100, min_score=min_score)[0]
        return "instance", instance_records(masks, classes, scores, student.class_names), names

    return segment_one


def output_files(out: Path, stem: str) -> tuple[Path, Path]:
    return out / f"{stem}.png", out / f"{stem}.json"


@dataclass
class SegmentWorker:
    """One image of `sesam segment`: read, segment, write the answer, the overlay and the stats."""

    run: SegmentRun
    make_segment_one: Callable[[], SegmentOne]
    errors: tuple[type[Exception], ...] = (ValueError,)

    def setup(self) -> None:
        self._segment_one = self.make_segment_one()

    def __call__(self, stem: str, path: Path) -> None:
        run = self.run
        image = read_image(path)
        t0 = time.perf_counter()
        task, answer, names = self._segment_one(image, path)
        stats: dict[str, Any] = {
            "task": task,
            "seconds": round(time.perf_counter() - t0, 3),
            "class_names": names,
        }
        png, js = output_files(run.out, stem)
        if task == "semantic":
            save_png(answer, png)
            stats["classes"] = sorted(int(c) for c in np.unique(answer) if c != 255)
            picture = label_overlay(image, answer)
        else:
            h, w = image.shape[:2]
            save_json({"width": w, "height": h, "instances": answer}, js)
            stats["instances"] = len(answer)
            masks = [decode_rle(item["mask"]) for item in answer]
            picture = overlay_masks(image, np.stack(masks) if masks else np.zeros((0, h, w), bool))
        overlays = overlay_dir(run)
        if overlays is not None:
            save_png(side_by_side([image, picture]), overlays / f"{stem}.png")
        save_json(stats, run.out / ".meta" / f"{stem}.json")


def segment_folder(
    run: SegmentRun,
    make_segment_one: Callable[[], SegmentOne],
    student_name: str,
    quiet: bool = False,
    concurrency: int = 1,
    errors: tuple[type[Exception], ...] = (ValueError,),
    ray: RayOptions | None = None,
) -> dict[str, Any]:
    """Segment every image of `run.images` (skipping those done unless `run.overwrite`); returns
    (and writes) the summary."""
    meta_dir = run.out / ".meta"
    claim_output(run.out, {"student": student_name, "min_score": run.min_score}, run.overwrite)

    def done(stem: str) -> bool:
        outputs = output_files(run.out, stem)
        answered = (meta_dir / f"{stem}.json").exists() and any(p.exists() for p in outputs)
        return not run.overwrite and answered and not overlay_missing(run, stem)

    worker = SegmentWorker(run, make_segment_one, errors)
    result = run_folder(run.images, run.limit, done, worker, "segment", quiet, concurrency, ray)
    summary = write_summary(run.out, result, {"student": student_name}, "segmented", ray)
    per_image = summary["per_image"]
    write_answer_files(
        run.out, run.images, coco_tasks(per_image), answer_names(per_image), image_prefix=run.image_prefix
    )
    overlays = overlay_dir(run)
    if run.report and overlays is not None:
        write_segment_report(run.out / "report.html", summary, overlays)
    return summary


def write_segment_report(path: Path, summary: dict[str, Any], overlays: Path) -> None:
    """An HTML page: per image the picture and the student's answer drawn over it, with stats."""
    rows = [
        (
            stem,
            [
                f"instances {meta['instances']}" if "instances" in meta else f"classes {meta.get('classes')}",
                f"{meta['seconds']} s",
            ],
            overlays / f"{stem}.png",
        )
        for stem, meta in summary["per_image"].items()
    ]
    intro = (
        f"{summary['segmented']} segmented, {summary['skipped_existing']} already done, {summary['failed']} failed, "
        f"{summary['seconds']} s. Left: the image; right: the student's label map or instances."
    )
    write_html_report(path, f"Student answers: {summary['student']}", intro, rows, summary["failures"])
