"""Refining a folder of images: resumable, atomic, with progress, overlays and an HTML report.

Layout of `out/`: `<stem>.png` refined class maps (255 = unlabeled), `.meta/<stem>.json` per-image
stats (what makes a run resumable), `summary.json`, and with overlays `overlays/<stem>.png` plus
`report.html`. A failing image is reported and skipped; nothing half-written is left behind.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from models.engine import PromptableSegmenter, read_image
from models.io import save_json, save_png
from models.jobs.coco import LABEL_STUDIO_PREFIX, write_answer_files
from models.jobs.folders import (
    RayOptions,
    check_claim,
    claim_output,
    overlay_dir,
    overlay_missing,
    resolved,
    run_folder,
    write_summary,
)
from models.jobs.report import write_html_report
from models.jobs.visualize import class_palette, label_overlay, side_by_side
from models.labels.common import check_weak_kinds
from models.labels.schema import WeakLabels, load_weak_labels, save_weak_labels


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
    image_prefix: str = LABEL_STUDIO_PREFIX  # label_studio.json's image URL: this + the file name
    weak_source: Path | None = None  # the labeling tool's export `weak` was staged from, if any


# (image HxWx3 uint8, its weak labels, the image file) -> (HxW uint8 label map, stats)
RefineOne = Callable[[np.ndarray, WeakLabels, Path], tuple[np.ndarray, dict[str, Any]]]


def stage_weak_labels(
    source: Path, weak_format: str, out: Path, overwrite: bool = False
) -> tuple[Path, list[str] | None]:
    """The folder of weak labels a refine run reads, and the class names when the source names them.

    `weak_format` "folder": `source` is already such a folder. Otherwise `source` is a labeling
    tool's export (`models.labels.formats.WEAK_FORMATS`: cvat, coco-boxes, coco-points), read and
    written once as schema files to `out/.weak/` (atomically, per image) beside `out/classes.json`."""
    if weak_format == "folder":
        return source, None
    from models.config import lookup
    from models.labels.formats import WEAK_FORMATS

    if not source.is_file():
        raise ValueError(f"--weak {source}: a {weak_format} export must be a file")
    # a folder whose images came from other weak labels is refused before its staging is replaced
    check_claim(out, {"weak": resolved(source)}, overwrite, keys=["weak"])
    read = lookup(WEAK_FORMATS, weak_format, "weak-label format")(source)
    folder = out / ".weak"
    if folder.is_dir():  # staged afresh: labels of an earlier export must not outlive it
        shutil.rmtree(folder)
    for stem, weak in read.labels.items():
        save_weak_labels(weak, folder, stem)
    meta = {"classes": read.class_names, "category_ids": read.category_ids, "image_ids": read.image_ids}
    save_json(meta | {"source": str(source), "format": weak_format}, out / "classes.json")
    return folder, read.class_names


def refine_folder(
    run: RefineRun, engine: PromptableSegmenter, labeler: Any, quiet: bool = False
) -> dict[str, Any]:
    """Refine every image that has weak labels in-process; returns (and writes) the summary."""
    return process_folder(
        run, lambda: labeler_refine_one(run, labeler), getattr(engine, "name", "?"), quiet=quiet
    )


def labeler_refine_one(run: RefineRun, labeler: Any) -> RefineOne:
    """A labeler as a `RefineOne` (checks that it reads the image's weak-label kinds)."""

    def refine_one(image: np.ndarray, weak: WeakLabels, path: Path) -> tuple[np.ndarray, dict[str, Any]]:
        check_weak_kinds(labeler, weak, f"{run.weak / path.stem} (weak labels)")
        result = labeler.refine(image, weak)
        return result.labels, result.stats()

    return refine_one


def refine_at(
    labeler: Any, image: np.ndarray, weak: WeakLabels, max_side: int | None
) -> tuple[np.ndarray, dict[str, Any]]:
    """Refine at most at `max_side` long side: a larger image and its weak labels are reduced
    first (antialiased image, scaled labels), and the label map comes back nearest-upsampled to
    the image's size. Returns (HxW uint8 labels, the labeler's stats plus `working_size`)."""
    from models.engine.base import reduce_image, upsample_nearest, working_size

    h, w = image.shape[:2]
    size = working_size((h, w), max_side)
    if size == (h, w):
        result = labeler.refine(image, weak)
        return result.labels, result.stats() | {"working_size": [h, w]}
    result = labeler.refine(reduce_image(image, size), weak.rescaled(*size))
    labels = upsample_nearest(result.labels, (h, w))
    return labels, result.stats() | {"working_size": list(size)}


@dataclass
class BuildRefineOne:
    """A picklable `RefineOne` factory: builds the engine and labeler where it runs (a Ray actor)."""

    run: RefineRun
    engine: dict[str, Any]  # EngineConfig fields
    method: str
    options: dict[str, Any]

    def __call__(self) -> RefineOne:
        from models.engine import EngineConfig, build_engine
        from models.labels import build_labeler

        engine = build_engine(EngineConfig(**self.engine))
        return labeler_refine_one(self.run, build_labeler(self.method, engine, **self.options))


@dataclass
class RefineWorker:
    """One image of `sesam refine`: read it and its weak labels, refine, write map, overlay, stats."""

    run: RefineRun
    make_refine_one: Callable[[], RefineOne]
    errors: tuple[type[Exception], ...] = (ValueError,)

    def setup(self) -> None:
        self._refine_one = self.make_refine_one()

    def __call__(self, stem: str, path: Path) -> None:
        run = self.run
        image = read_image(path)
        weak = load_weak_labels(run.weak, stem, image.shape[:2], run.num_classes)
        t0 = time.perf_counter()
        labels, stats = self._refine_one(image, weak, path)
        stats = stats | {"seconds": round(time.perf_counter() - t0, 3), "weak_kinds": weak.kinds()}
        save_png(labels, run.out / f"{stem}.png")
        overlays = overlay_dir(run)
        if overlays is not None:
            picture = side_by_side([label_overlay(image, weak.sparse_map()), label_overlay(image, labels)])
            save_png(picture, overlays / f"{stem}.png")
        save_json(stats, run.out / ".meta" / f"{stem}.json")


def process_folder(
    run: RefineRun,
    make_refine_one: Callable[[], RefineOne],
    engine_name: str,
    quiet: bool = False,
    concurrency: int = 1,
    errors: tuple[type[Exception], ...] = (ValueError,),
    ray: RayOptions | None = None,
) -> dict[str, Any]:
    """The folder loop behind `sesam refine`, whoever refines (in-process, a served endpoint, Ray).

    Skips images already refined (resume) unless `run.overwrite`; runs `concurrency` images at a
    time (or on Ray actors, each building its own refiner with `make_refine_one`); an image whose
    refinement raises one of `errors` is reported and skipped.
    """
    if concurrency < 1:
        raise ValueError(f"--concurrency must be >= 1, got {concurrency}")
    if not run.weak.is_dir():
        raise ValueError(f"--weak {run.weak}: not a folder")
    for folder in (run.out, overlay_dir(run)):  # made now: a folder that cannot be made fails before any work
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
    weak = {"weak": resolved(run.weak_source or run.weak), "num_classes": run.num_classes}
    claim_output(
        run.out, {"method": run.method, "options": run.options, "engine": engine_name} | weak, run.overwrite
    )
    meta_dir = run.out / ".meta"

    def done(stem: str) -> bool:
        outputs = (run.out / f"{stem}.png").exists() and (meta_dir / f"{stem}.json").exists()
        return not run.overwrite and outputs and not overlay_missing(run, stem)

    worker = RefineWorker(run, make_refine_one, errors)
    result = run_folder(run.images, run.limit, done, worker, f"refine {run.method}", quiet, concurrency, ray)

    def mean_labelled(per_image: dict[str, dict[str, Any]]) -> dict[str, Any]:
        fractions = [m["labelled_fraction"] for m in per_image.values()]
        return {"mean_labelled_fraction": float(np.mean(fractions)) if fractions else None}

    header = {"method": run.method, "options": run.options, "engine": engine_name}
    summary = write_summary(run.out, result, header, "refined", ray, mean_labelled)
    overlays = overlay_dir(run)
    tasks = {stem: "semantic" for stem in summary["per_image"]}
    present = write_answer_files(run.out, run.images, tasks, image_prefix=run.image_prefix)
    if run.report and overlays is not None:
        write_report(run.out / "report.html", summary, overlays, present)
    return summary


def write_report(path: Path, summary: dict[str, Any], overlays: Path, present: list[int]) -> None:
    """An HTML page: per image the weak labels and the refined labels drawn over it, with stats, and
    a legend of the classes `present` in the refined maps."""
    rows = [
        (
            stem,
            [
                f"labelled {meta['labelled_fraction']:.1%}",
                f"instances {meta['instances']}",
                f"prompts {meta['prompts']}",
                f"decoder calls {meta['decoder_calls']}",
                f"{meta['seconds']} s",
            ],
            overlays / f"{stem}.png",
        )
        for stem, meta in summary["per_image"].items()
    ]
    intro = (
        f"{summary['refined']} refined, {summary['skipped_existing']} already done, {summary['failed']} failed, "
        f"{summary['seconds']} s. Left: weak labels; right: refined labels (unlabeled pixels show the image)."
    )
    title = f"Refined labels: {summary['method']} ({summary['engine']})"
    write_html_report(path, title, intro, rows, summary["failures"], class_legend(path.parent, present))


def class_legend(out: Path, present: list[int]) -> list[tuple[str, tuple[int, int, int]]]:
    """(name, overlay colour) of each class id in `present`, named by `out/classes.json` when the
    weak labels came from an export, else "class <id>"."""
    meta_path = out / "classes.json"
    names = json.loads(meta_path.read_text()).get("classes", []) if meta_path.exists() else []
    colours = class_palette()
    return [
        (names[c] if c < len(names) else f"class {c}", tuple(int(v) for v in colours[c])) for c in present
    ]
