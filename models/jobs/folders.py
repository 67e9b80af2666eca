"""Running a per-image job over a folder: in this process (threads) or scaled out on Ray Data.

A job is an `ImageWorker`: a picklable object that builds its model in `setup()` (once per thread
pool, or once per Ray actor: one engine or student per worker, one GPU each where there are GPUs)
and then handles one image per call, writing its outputs atomically itself. Both executors feed the
same workers the same images, so outputs are byte-identical, and both report a failing image
instead of stopping. Resume is the caller's: it passes only the images not done yet.

Ray is optional (`pip install "sesam[ray]"`). `address=None` starts a local cluster on this
machine; `"auto"` or `"ray://host:10001"` joins a running one (`ray start --head` on the head
node, `ray start --address HEAD:6379` on the others; every node must see the same input and output
folders, e.g. a shared filesystem).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from models.engine.validation import list_images
from models.io import save_json
from models.runtime.deps import require
from models.runtime.progress import progress_bar


class ImageWorker(Protocol):
    errors: tuple[type[Exception], ...]  # what counts as a failing image (reported, not fatal)

    def setup(self) -> None:
        """Build the model(s); called once per thread pool or Ray actor before any image."""

    def __call__(self, stem: str, path: Path) -> None:
        """Handle one image and write its outputs atomically; raise one of `errors` when it fails."""


class FolderOutputs(Protocol):
    out: Path
    overlays: Path | None
    report: bool


def overlay_dir(run: FolderOutputs) -> Path | None:
    """Where a folder job draws its overlays: the folder asked for, else `out/overlays` when a
    report is wanted, else nowhere."""
    return run.overlays or (run.out / "overlays" if run.report else None)


def overlay_missing(run: FolderOutputs, stem: str) -> bool:
    """Whether the overlay the run wants for `stem` is not drawn yet: an image done by an earlier run
    without overlays is done again, so a report never links a picture that is not there."""
    overlays = overlay_dir(run)
    return overlays is not None and not (overlays / f"{stem}.png").exists()


@dataclass
class RayOptions:
    """Where and how wide a Ray run goes."""

    address: str | None = None  # None: a local cluster; "auto" / "ray://...": an existing one
    workers: int = 2  # actors, each holding one model
    gpus_per_worker: float | None = None  # None: 1 when the cluster has GPUs, else 0
    cpus_per_worker: float = 1.0


def run_local(
    items: list[tuple[str, Path]], worker: ImageWorker, concurrency: int = 1
) -> Iterator[tuple[str, str | None]]:
    """(stem, error or None) per image as they finish; `concurrency` threads share one worker."""
    if concurrency < 1:
        raise ValueError(f"--concurrency must be >= 1, got {concurrency}")
    if not items:
        return
    worker.setup()
    pool = ThreadPoolExecutor(concurrency)
    futures = {pool.submit(worker, stem, path): stem for stem, path in items}
    finished = False
    try:
        for future in as_completed(futures):
            try:
                future.result()
                yield futures[future], None
            except worker.errors as exc:
                yield futures[future], str(exc)
        finished = True
    finally:  # Ctrl-C, an unexpected error, or the caller stopping: images not yet started never start
        pool.shutdown(wait=True, cancel_futures=not finished)


class _RayActor:
    """One Ray Data actor: sets its worker up once, then handles batches of one image each."""

    def __init__(self, worker: ImageWorker) -> None:
        self.worker = worker
        worker.setup()

    def __call__(self, batch: dict) -> dict:
        errors = []
        for stem, path in zip(batch["stem"], batch["path"], strict=True):
            try:
                self.worker(str(stem), Path(str(path)))
                errors.append("")
            except self.worker.errors as exc:
                errors.append(str(exc) or type(exc).__name__)
        return {"stem": list(batch["stem"]), "error": errors}


def ray_init(options: RayOptions):
    """Connect to (or start) the cluster once per process; returns the ray module."""
    ray = require("ray", "ray", "scale-out on Ray (--ray)")
    require("ray.data", "ray", "scale-out on Ray (--ray)")
    if not ray.is_initialized():
        ray.init(address=options.address, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    return ray


def run_ray(
    items: list[tuple[str, Path]], worker: ImageWorker, options: RayOptions
) -> Iterator[tuple[str, str | None]]:
    """(stem, error or None) per image, computed by `options.workers` Ray Data actors."""
    if options.workers < 1:
        raise ValueError(f"--ray-workers must be >= 1, got {options.workers}")
    if not items:
        return
    ray = ray_init(options)
    gpus = options.gpus_per_worker
    if gpus is None:
        gpus = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    rows = [{"stem": stem, "path": str(path)} for stem, path in items]
    dataset = ray.data.from_items(rows, override_num_blocks=len(rows)).map_batches(
        _RayActor,
        fn_constructor_kwargs={"worker": worker},
        batch_size=1,
        # one image queued behind the one in work: little is redone after an interruption
        compute=ray.data.ActorPoolStrategy(size=options.workers, max_tasks_in_flight_per_actor=2),
        num_gpus=gpus,
        num_cpus=options.cpus_per_worker,
    )
    for row in dataset.iter_rows():
        yield str(row["stem"]), (str(row["error"]) or None)


def run_images(
    items: list[tuple[str, Path]],
    worker: ImageWorker,
    concurrency: int = 1,
    ray: RayOptions | None = None,
    on_done: Callable[[str, str | None], None] | None = None,
) -> dict[str, str]:
    """Run `worker` over `items` locally or on Ray; returns {stem: error} of the failed images."""
    failures: dict[str, str] = {}
    results = run_ray(items, worker, ray) if ray is not None else run_local(items, worker, concurrency)
    for stem, error in results:
        if error is not None:
            failures[stem] = error
        if on_done is not None:
            on_done(stem, error)
    return failures


@dataclass
class FolderResult:
    """What a folder job did: the images considered, how many were already done, the failures."""

    items: list[tuple[str, Path]]
    todo: int
    skipped: int
    failures: dict[str, str]
    seconds: float


def run_folder(
    images: Path,
    limit: int | None,
    done: Callable[[str], bool],
    worker: ImageWorker,
    label: str,
    quiet: bool = False,
    concurrency: int = 1,
    ray: RayOptions | None = None,
) -> FolderResult:
    """The folder loop of `sesam refine` / `sesam segment`: list the images (the first `limit`),
    skip those `done` (resume), run the rest locally or on Ray with a progress bar that prints
    each failure as it happens."""
    import time

    stems = list_images(images, "--images")
    if not stems:
        raise ValueError(f"--images {images}: no images found")
    items = list(stems.items())[:limit] if limit else list(stems.items())
    todo = [(stem, path) for stem, path in items if not done(stem)]
    started = time.perf_counter()
    with progress_bar(label, disable=quiet) as progress:
        task = progress.add_task(label, total=len(items), info="" if ray is None else "on ray")
        progress.advance(task, len(items) - len(todo))

        def on_done(stem: str, error: str | None) -> None:
            if error is not None:
                progress.console.print(f"[red]{stem}: {error}")
            progress.update(task, advance=1, info=stem)

        failures = run_images(todo, worker, concurrency, ray, on_done)
    return FolderResult(
        items, len(todo), len(items) - len(todo), failures, round(time.perf_counter() - started, 2)
    )


RUN_RECORD = ".run.json"  # what made a folder's outputs: a resume must be the same run


def _as_record(run: dict[str, Any]) -> dict[str, Any]:
    """`run` as `.run.json` keeps it (JSON types: tuples as lists, paths as strings)."""
    return json.loads(json.dumps(run, default=str))


def check_claim(
    out: Path,
    run: dict[str, Any],
    overwrite: bool | None,
    state: str = ".meta",
    keys: Iterable[str] | None = None,
) -> None:
    """Refuse a folder whose per-image state (`out/<state>/*.json`, written last for each image) was
    made by a run other than `run` (compared on `keys`, default all), naming what differs; a folder
    with no image done yet, one made before records existed, or `overwrite` passes."""
    record = out / RUN_RECORD
    folder = out / state
    holds = folder.is_dir() and any(p.name not in (RUN_RECORD, "summary.json") for p in folder.glob("*.json"))
    if not record.exists() or not holds or overwrite:
        return
    run = _as_record(run)
    before = json.loads(record.read_text())
    compared = set(keys) if keys is not None else before.keys() | run.keys()
    changed = sorted(k for k in compared if before.get(k) != run.get(k))
    if changed:

        def short(value: Any) -> str:
            text = json.dumps(value)
            return text if len(text) <= 60 else text[:57] + "..."

        diff = "; ".join(f"{k}: {short(before.get(k))} -> {short(run.get(k))}" for k in changed)
        redo = "--overwrite to redo every image" if overwrite is not None else "empty it first"
        raise ValueError(
            f"--out {out}: holds the outputs of another run ({diff}); give another --out, or {redo}"
        )


def claim_output(out: Path, run: dict[str, Any], overwrite: bool | None, state: str = ".meta") -> None:
    """Resume only the run that made `out`: `out/.run.json` records `run` (the inputs and options that
    decide the outputs; paths given resolved). A folder whose images were made by another run is
    refused (`check_claim`: else its images would be skipped as done and the summary would name
    options that never ran on them); a folder with no image done yet is claimed whatever it recorded
    (a run that failed before any image does not block its corrected rerun). `overwrite` (None: the
    command has none) clears the state, so an interrupted overwrite resumes as the new run, and
    replaces the record. A folder made before records existed is claimed as it is."""
    record = _as_record(run)
    check_claim(out, record, overwrite, state)
    if overwrite and state not in ("", ".") and (out / state).is_dir():  # a state subfolder, never `out`
        shutil.rmtree(out / state)
    out.mkdir(parents=True, exist_ok=True)
    save_json(record, out / RUN_RECORD)


def resolved(path: str | Path | None) -> str | None:
    """A path as a run record keeps it: absolute, so one folder given two ways is one run."""
    return None if path is None else str(Path(path).resolve())


def per_image_stats(out: Path, result: FolderResult) -> dict[str, dict[str, Any]]:
    """The `.meta/<stem>.json` stats of every image the job holds an answer for (failed ones left out)."""
    metas = {stem: out / ".meta" / f"{stem}.json" for stem, _ in result.items if stem not in result.failures}
    return {stem: json.loads(meta.read_text()) for stem, meta in metas.items() if meta.exists()}


def write_summary(
    out: Path,
    result: FolderResult,
    header: dict[str, Any],
    counted: str,
    ray: RayOptions | None = None,
    extra: Callable[[dict[str, dict[str, Any]]], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The summary every folder job writes (atomically) to `out/summary.json` and returns: `header`
    (what ran), the counts (`counted`: images answered this time), failures, seconds, the per-image
    stats, `extra(per_image)` fields, and the Ray cluster when it ran there."""
    per_image = per_image_stats(out, result)
    summary = header | {
        "images": len(result.items),
        counted: result.todo - len(result.failures),
        "skipped_existing": result.skipped,
        "failed": len(result.failures),
        "failures": result.failures,
        "seconds": result.seconds,
    }
    summary |= (extra(per_image) if extra is not None else {}) | {"per_image": per_image}
    if ray is not None:
        summary["ray"] = {"address": ray.address, "workers": ray.workers}
    save_json(summary, out / "summary.json")
    return summary
