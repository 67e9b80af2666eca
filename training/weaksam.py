"""WeakSAM's training side (paper 004): proposals for a folder, the WSOD head trained on them from
image tags, the pseudo instances (WSIS) written as a COCO dataset a student trains on, and the
Faster R-CNN retrained on the pseudo boxes under RoI drop.

`sesam weaksam proposals` -> `sesam weaksam train-wsod` -> `sesam weaksam instances` ->
`sesam train` (mode supervised-instance or wish, dataset coco, data_root = the instances folder);
`sesam weaksam retrain` on the same folder -> `detector.pt`, scored by `sesam weaksam eval`
(`training.weaksam_eval`) and usable as the pseudo boxes' source (`sesam weaksam instances
--detector`).

Every step is resumable: proposals are one JSON per image (skipped when present), the WSOD head
and the detector are recipes of the shared training loop (`training.recipes.wsod`,
`training.recipes.detector`): they checkpoint `last.pt` atomically and continue from it with the
same settings (`iterations`, `checkpoint_every` and `device` may change), the instances step keeps
one JSON per image and assembles the COCO file at the end. The WSOD head and the detector train on
`device` (models are built on the CPU from the seed, then moved, so the random draws are the same
everywhere); both train in fp32 on every device.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from models.engine import PromptableSegmenter, read_image
from models.engine.validation import list_images
from models.io import encode_rle, save_json
from models.jobs.folders import claim_output, resolved
from models.labels.schema import load_weak_labels
from models.labels.weaksam.labeler import WeakSAMLabeler
from models.labels.weaksam.proposals import ProposalOptions, weaksam_proposals
from models.runtime.progress import progress_bar
from training.recipes.detector import DetectorConfig, DetectorRecipe, build_detector
from training.recipes.wsod import WSODConfig, WSODRecipe

__all__ = [
    "DetectorConfig",
    "WSODConfig",
    "build_detector",
    "folder_proposals",
    "pseudo_instances",
    "retrain_detector",
    "train_wsod",
]


def _tags_of(weak_dir: Path, stem: str, size: tuple[int, int]) -> list[int]:
    weak = load_weak_labels(weak_dir, stem, size)
    if not weak.tags:
        raise ValueError(f"{weak_dir / stem}.json: no tags (WeakSAM learns from image tags)")
    return sorted(set(weak.tags))


def folder_proposals(
    engine: PromptableSegmenter,
    images: Path,
    weak: Path,
    out: Path,
    cam_predictor: Any | None,
    options: ProposalOptions,
    limit: int | None = None,
    quiet: bool = False,
    cam_source: str | None = None,
) -> dict[str, Any]:
    """`out/<stem>.json` {boxes, scores, sources, tags} for every image (the first `limit`), and
    `out/summary.json`; an image whose proposals file exists is skipped (resume). Every image needs
    tags: one without stops the run with an error naming its weak-label file."""
    stems = list(list_images(images).items())[:limit]
    if not stems:
        raise ValueError(f"--images {images}: no images found")
    run = {"engine": getattr(engine, "name", "?"), "options": asdict(options), "weak": resolved(weak)}
    cam = resolved(cam_source) if cam_source not in (None, "none") else None
    claim_output(out, run | {"cam": cam}, overwrite=None, state=".")  # makes it: fails before any work
    counts, started = [], time.perf_counter()
    with progress_bar("weaksam proposals", disable=quiet) as progress:
        task = progress.add_task("proposals", total=len(stems), info=getattr(engine, "name", ""))
        for stem, path in stems:
            target = out / f"{stem}.json"
            if target.exists():
                counts.append(len(json.loads(target.read_text())["boxes"]))
                progress.advance(task)
                continue
            image = read_image(path)
            tags = _tags_of(weak, stem, image.shape[:2])
            cams = cam_predictor(image) if cam_predictor is not None else None
            handle = engine.embed([image])[0]
            props = weaksam_proposals(engine, handle, cams, tags, options)
            record = {
                "tags": tags,
                "boxes": np.round(props.boxes, 2).tolist(),
                "scores": np.round(props.scores, 4).tolist(),
                "sources": props.sources,
            }
            save_json(record, target)
            counts.append(len(props))
            progress.update(task, advance=1, info=f"{stem}: {len(props)}")
    summary = {
        "images": len(stems),
        "mean_proposals": float(np.mean(counts)),
        "options": asdict(options),
        "seconds": round(time.perf_counter() - started, 1),
    }
    save_json(summary, out / "summary.json")
    return summary


def train_wsod(
    cfg: WSODConfig, images: Path, proposals: Path, out: Path, num_classes: int, quiet: bool = False
) -> dict[str, Any]:
    """Train the WSOD head on every image with a non-empty proposals file, on `cfg.device`
    (`training.recipes.wsod`); writes `out/wsod.pt` and `out/summary.json`, returns the summary.

    Resumes from `out/last.pt` when its settings equal `cfg` (else refuses, naming the change)."""
    return WSODRecipe(cfg, images, proposals, num_classes).loop(out, quiet).train()


def pseudo_instances(
    labeler: WeakSAMLabeler,
    images: Path,
    weak: Path,
    out: Path,
    class_names: list[str],
    split: str = "pseudo",
    limit: int | None = None,
    quiet: bool = False,
) -> dict[str, Any]:
    """WSIS: every image's PGT boxes -> SAM masks, as a COCO dataset at `out/annotations/
    instances_<split>.json` with the images linked (or copied) into `out/<split>/`.

    Category ids are class id + 1, named by `class_names`. Per-image results live in `out/.images/`
    (the resume state); the COCO file is assembled from them at the end. An image the labeler
    refuses (no tags, a tag out of range) is left out and named in the summary's `failures`."""
    stems = list(list_images(images).items())[:limit]
    if not stems:
        raise ValueError(f"--images {images}: no images found")
    if not weak.is_dir():
        raise ValueError(f"--weak {weak}: not a folder")
    run = {"engine": labeler.engine.name, "options": asdict(labeler.options), "weak": resolved(weak)}
    claim_output(out, run | {"class_names": class_names, "split": split}, overwrite=None, state=".images")
    state, image_dir = out / ".images", out / split
    image_dir.mkdir(parents=True, exist_ok=True)
    failures: dict[str, str] = {}
    with progress_bar("weaksam instances", disable=quiet) as progress:
        task = progress.add_task("instances", total=len(stems), info="")
        for stem, path in stems:
            target = state / f"{stem}.json"
            if not target.exists():
                try:
                    image = read_image(path)
                    weak_labels = load_weak_labels(weak, stem, image.shape[:2], len(class_names))
                    if not weak_labels.tags:
                        raise ValueError(f"{weak / stem}.json: no tags")
                    handle = labeler.engine.embed([image])[0]
                    masks, records = labeler.instances(image, handle, sorted(set(weak_labels.tags)))
                    h, w = image.shape[:2]
                    for rec, mask in zip(records, masks, strict=True):
                        rec["segmentation"] = encode_rle(mask)
                        rec["area"] = int(mask.sum())
                    save_json({"file_name": path.name, "height": h, "width": w, "instances": records}, target)
                except ValueError as exc:
                    failures[stem] = str(exc)
                    progress.console.print(f"[red]{stem}: {exc}")
            link = image_dir / path.name
            if target.exists() and not link.exists():
                try:
                    os.symlink(path.resolve(), link)
                except OSError:
                    shutil.copy2(path, link)
            progress.update(task, advance=1, info=stem)
    images_json, annotations = [], []
    for n, (stem, _) in enumerate(stems, start=1):
        target = state / f"{stem}.json"
        if not target.exists():
            continue
        rec = json.loads(target.read_text())
        images_json.append(
            {"id": n, "file_name": rec["file_name"], "height": rec["height"], "width": rec["width"]}
        )
        for inst in rec["instances"]:
            x0, y0, x1, y1 = inst["box"]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": n,
                    "category_id": int(inst["class_id"]) + 1,
                    "segmentation": inst["segmentation"],
                    "area": float(inst["area"]),
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "iscrowd": 0,
                    "score": inst["score"],
                }
            )
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(class_names)]
    coco = {"images": images_json, "annotations": annotations, "categories": categories}
    save_json(coco, out / "annotations" / f"instances_{split}.json")
    summary = {
        "images": len(images_json),
        "instances": len(annotations),
        "failed": len(failures),
        "failures": failures,
        "coco": str(out / "annotations" / f"instances_{split}.json"),
        "options": asdict(labeler.options),
        "engine": getattr(labeler.engine, "name", "?"),
    }
    save_json(summary, out / "summary.json")
    return summary


def retrain_detector(
    cfg: DetectorConfig, coco_root: Path, split: str, out: Path, quiet: bool = False
) -> dict[str, Any]:
    """Train the detector on the boxes of `coco_root/annotations/instances_<split>.json` (category
    id c + 1 = class c, as `pseudo_instances` writes; boxes under 1 pixel wide or high are left
    out, `iscrowd` ones are not), on `cfg.device`; `out/detector.pt` (with the file's categories,
    so `sesam weaksam eval` matches classes by name) and `out/summary.json`, resumable from last.pt."""
    return DetectorRecipe(cfg, coco_root, split).loop(out, quiet).train()
