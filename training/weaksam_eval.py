"""`sesam weaksam eval`: box AP50 and CorLoc of WeakSAM's retrained detector (paper 004 reports
both for WSOD, Table 1), on Penn-Fudan or a COCO instances file.

- Ground truth (`BoxTruth`): Penn-Fudan's `Annotation/<stem>.txt` boxes (PASCAL, 1-based and
  inclusive: (Xmin, Ymin) - (Xmax, Ymax) becomes x0 = Xmin - 1, x1 = Xmax, so a box covers whole
  pixels as the proposals' do), one class `pedestrian`, the project's split (sorted stems, every
  fifth image val); or `annotations/instances_<split>.json` with images in `<split>/`, its `bbox`
  fields as they are. People Penn-Fudan left unannotated (severely occluded or tiny, its README
  says) are background here: AP counts a detection on them as a false positive.
- AP50: pycocotools' COCOeval, iouType `bbox`, AP at IoU 0.5 over all areas with at most 100
  detections per image and class; per class where the class has ground truth in the evaluated
  images. A detector is scored on the ground-truth categories its classes map to (a Penn-Fudan
  detector on COCO: `person` or whatever its names match), not on classes it cannot know.
- CorLoc (the WSOD definition): per class c, over the images with at least one (non-crowd)
  ground-truth box of c, the share whose top-scored detection of c has IoU >= 0.5 with a
  ground-truth box of c (no detection of c is a miss); CorLoc is the mean over those classes.
  With one class (Penn-Fudan) it is the share of images whose best box hits a pedestrian.
- Detector classes map to ground-truth categories by name (the checkpoint keeps its training
  file's categories), by id (label L = category id L) only for a checkpoint without them;
  detections of classes the ground truth does not have are left out (the report counts them in
  `unmatched_classes`).
"""

from __future__ import annotations

import contextlib
import io
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models.io import save_json

BOX_LINE = re.compile(r"Bounding box for object \d+ .*?\((\d+),\s*(\d+)\)\s*-\s*\((\d+),\s*(\d+)\)")
SIZE_LINE = re.compile(r"Image size \(X x Y x C\)\s*:\s*(\d+)\s*x\s*(\d+)")
DATASETS = ("auto", "pennfudan", "coco")
Detections = tuple[np.ndarray, np.ndarray, np.ndarray]  # boxes Dx4 xyxy, scores D, category ids D


@dataclass
class BoxTruth:
    """Ground-truth boxes as a COCO instances dict (`coco`: images, annotations with `bbox`,
    `area` and `iscrowd`, categories) and the image file of every image id (`paths`)."""

    name: str
    split: str
    coco: dict[str, Any]
    paths: dict[int, Path]

    @property
    def categories(self) -> dict[int, str]:
        return {int(c["id"]): str(c["name"]) for c in self.coco["categories"]}


def pennfudan_annotation(path: Path) -> tuple[tuple[int, int], list[list[float]]]:
    """((H, W), boxes [[x0, y0, x1, y1], ...] 0-based, x1 / y1 exclusive) of one Annotation file."""
    text = Path(path).read_text(errors="replace")
    size = SIZE_LINE.search(text)
    if size is None:
        raise ValueError(f"{path}: no 'Image size' line (is this a Penn-Fudan Annotation file?)")
    boxes = [[int(a) - 1, int(b) - 1, int(c), int(d)] for a, b, c, d in BOX_LINE.findall(text)]
    return (int(size.group(2)), int(size.group(1))), [[float(v) for v in b] for b in boxes]


def pennfudan_truth(root: str | Path, split: str = "val", limit: int | None = None) -> BoxTruth:
    """Penn-Fudan's annotated boxes of a split (train, val, all); image ids as `PennFudan`'s."""
    from models.engine.validation import list_images
    from training.datasets import PennFudan

    dataset = PennFudan(Path(root), split)
    every = list_images(dataset.root / "PNGImages")
    ids = {stem: n + 1 for n, stem in enumerate(sorted(every))}
    images, annotations, paths = [], [], {}
    for stem in dataset.stems()[:limit]:
        (h, w), boxes = pennfudan_annotation(dataset.root / "Annotation" / f"{stem}.txt")
        image_id = ids[stem]
        images.append({"id": image_id, "file_name": every[stem].name, "height": h, "width": w})
        paths[image_id] = every[stem]
        for x0, y0, x1, y1 in boxes:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": 1,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": (x1 - x0) * (y1 - y0),
                    "iscrowd": 0,
                }
            )
    coco = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "pedestrian"}]}
    return BoxTruth("pennfudan", split, coco, paths)


def coco_truth(root: str | Path, split: str = "val2017", limit: int | None = None) -> BoxTruth:
    """The boxes of `root/annotations/instances_<split>.json` (images in `root/<split>/`)."""
    from training.coco import load_coco

    root = Path(root)
    data = load_coco(root / "annotations" / f"instances_{split}.json").dataset
    images = sorted(data["images"], key=lambda im: im["id"])[:limit]
    keep = {im["id"] for im in images}
    annotations = []
    for a in data.get("annotations", []):
        if a["image_id"] in keep and "bbox" in a:
            w, h = float(a["bbox"][2]), float(a["bbox"][3])
            annotations.append(a | {"area": float(a.get("area", w * h)), "iscrowd": int(a.get("iscrowd", 0))})
    coco = {"images": images, "annotations": annotations, "categories": data["categories"]}
    paths = {int(im["id"]): root / split / im["file_name"] for im in images}
    return BoxTruth("coco", split, coco, paths)


def load_truth(
    root: str | Path, dataset: str = "auto", split: str | None = None, limit: int | None = None
) -> BoxTruth:
    """Penn-Fudan (a folder with PNGImages/ and Annotation/) or COCO (annotations/instances_*.json)."""
    root = Path(root)
    if dataset not in DATASETS:
        raise ValueError(f"--dataset {dataset!r} unknown; choose one of {DATASETS}")
    if dataset == "auto":
        dataset = "pennfudan" if (root / "Annotation").is_dir() else "coco"
    if dataset == "pennfudan":
        if not (root / "Annotation").is_dir():
            raise ValueError(f"{root}: no Annotation/ folder; is this the Penn-Fudan folder?")
        return pennfudan_truth(root, split or "val", limit)
    return coco_truth(root, split or "val2017", limit)


def class_map(
    detector_categories: Sequence[dict[str, Any]], num_classes: int, truth: dict[int, str]
) -> dict[int, int]:
    """Detector class id c (label c + 1) -> ground-truth category id: by name (case-insensitive)
    when the detector knows its training categories, else by id (category c + 1). Classes
    without a counterpart are left out (an empty map when nothing matches)."""
    if detector_categories:
        names = {str(v).lower(): k for k, v in truth.items()}
        return {
            int(c["id"]) - 1: names[str(c["name"]).lower()]
            for c in detector_categories
            if str(c.get("name", "")).lower() in names
        }
    return {c: c + 1 for c in range(num_classes) if c + 1 in truth}


def _area(boxes: np.ndarray) -> np.ndarray:
    return np.clip(boxes[..., 2] - boxes[..., 0], 0, None) * np.clip(boxes[..., 3] - boxes[..., 1], 0, None)


def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one box (4,) with each of boxes Nx4, all (x0, y0, x1, y1)."""
    x0 = np.maximum(box[0], boxes[:, 0])
    y0 = np.maximum(box[1], boxes[:, 1])
    x1 = np.minimum(box[2], boxes[:, 2])
    y1 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    return inter / np.maximum(_area(box) + _area(boxes) - inter, 1e-9)


def corloc(
    truth: BoxTruth,
    detections: dict[int, Detections],
    iou: float = 0.5,
    categories: Sequence[int] | None = None,
) -> dict[str, Any]:
    """CorLoc over the classes present (see the module docstring), only `categories` when given:
    {CorLoc, per_class {name: {CorLoc, images}}}; CorLoc is None when no image has a box."""
    gt: dict[tuple[int, int], list[list[float]]] = {}
    for a in truth.coco["annotations"]:
        if not a.get("iscrowd", 0) and (categories is None or a["category_id"] in categories):
            x, y, w, h = a["bbox"]
            gt.setdefault((int(a["image_id"]), int(a["category_id"])), []).append([x, y, x + w, y + h])
    hits: dict[int, list[bool]] = {}
    for (image_id, cat), boxes in sorted(gt.items()):
        found_boxes, scores, cats = detections.get(image_id, (np.zeros((0, 4)), np.zeros(0), np.zeros(0)))
        mine = np.flatnonzero(np.asarray(cats) == cat)
        hit = False
        if len(mine):
            top = mine[np.argmax(np.asarray(scores)[mine])]
            hit = bool((box_iou(np.asarray(found_boxes[top], float), np.asarray(boxes, float)) >= iou).any())
        hits.setdefault(cat, []).append(hit)
    names = truth.categories
    per_class = {names[c]: {"CorLoc": float(np.mean(h)), "images": len(h)} for c, h in sorted(hits.items())}
    value = float(np.mean([v["CorLoc"] for v in per_class.values()])) if per_class else None
    return {"CorLoc": value, "per_class": per_class}


def box_ap50(
    truth: BoxTruth, detections: dict[int, Detections], categories: Sequence[int] | None = None
) -> dict[str, Any]:
    """pycocotools' bbox AP at IoU 0.5 (all areas, 100 detections), over `categories` when given:
    {AP50, per_class {name: AP50}}; a class without ground truth in these images has no entry; no
    detections score 0."""
    from pycocotools.cocoeval import COCOeval

    from training.coco import load_coco

    results = [
        {
            "image_id": int(image_id),
            "category_id": int(c),
            "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])],
            "score": float(s),
        }
        for image_id, (boxes, scores, cats) in detections.items()
        for b, s, c in zip(boxes, scores, cats)
    ]
    present = sorted(
        {
            int(a["category_id"])
            for a in truth.coco["annotations"]
            if not a.get("iscrowd", 0) and (categories is None or a["category_id"] in categories)
        }
    )
    names = truth.categories
    if not results:
        return {"AP50": 0.0, "per_class": {names[c]: 0.0 for c in present}}
    gt = load_coco(truth.coco)
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, iouType="bbox")
        ev.params.imgIds = sorted(truth.paths)
        if categories is not None:
            ev.params.catIds = sorted(int(c) for c in categories)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    precision = ev.eval["precision"][0, :, :, 0, -1]  # IoU 0.5, recall points, classes, all areas, 100 dets
    per_class = {}
    for k, cat in enumerate(ev.params.catIds):
        p = precision[:, k]
        if cat in present:
            per_class[names[cat]] = float(p[p > -1].mean()) if (p > -1).any() else 0.0
    return {"AP50": max(float(ev.stats[1]), 0.0), "per_class": per_class}


def evaluate_detections(
    truth: BoxTruth, detections: dict[int, Detections], categories: Sequence[int] | None = None
) -> dict[str, Any]:
    """AP50 and CorLoc of detections (image id -> (boxes xyxy, scores, ground-truth category ids)),
    over `categories` when given (a detector is scored only on the classes it knows), else over
    every category of the ground truth."""
    ap, loc = box_ap50(truth, detections, categories), corloc(truth, detections, categories=categories)
    per_class = {
        name: {"AP50": ap["per_class"].get(name), **loc["per_class"].get(name, {})}
        for name in sorted(set(ap["per_class"]) | set(loc["per_class"]))
    }
    return {
        "dataset": truth.name,
        "split": truth.split,
        "images": len(truth.paths),
        "ground_truth_boxes": sum(
            1
            for a in truth.coco["annotations"]
            if not a.get("iscrowd", 0) and (categories is None or a["category_id"] in categories)
        ),
        "detections": int(sum(len(d[1]) for d in detections.values())),
        "AP50": ap["AP50"],
        "CorLoc": loc["CorLoc"],
        "per_class": per_class,
    }


def detector_detections(
    model, classes: dict[int, int], truth: BoxTruth, quiet: bool = True
) -> dict[int, Detections]:
    """Run the detector over every image of `truth`: the detections of the classes in `classes`
    (at most 100 per image and class), mapped to ground-truth categories."""
    from models.engine import read_image
    from models.runtime.progress import progress_bar
    from models.students.detector import detect

    out = {}
    with progress_bar("weaksam eval", disable=quiet) as progress:
        task = progress.add_task("images", total=len(truth.paths), info="")
        for image_id, path in sorted(truth.paths.items()):
            boxes, scores, labels = detect(model, read_image(path), sorted(classes))
            out[image_id] = (boxes, scores, np.asarray([classes[int(c)] for c in labels], int))
            progress.update(task, advance=1, info=path.stem)
    return out


def evaluate_detector(
    checkpoint: str | Path, truth: BoxTruth, device: str = "auto", quiet: bool = True
) -> dict[str, Any]:
    """A `detector.pt` over a split: `evaluate_detections`' report plus the checkpoint, the class
    map, the device and the time taken."""
    from models.runtime.device import check_device_name, resolve_device
    from models.students.detector import load_detector

    check_device_name(device, "--device")
    started = time.perf_counter()
    target = resolve_device(device)
    model, meta = load_detector(checkpoint, target)
    classes = class_map(meta.get("categories") or [], int(meta["num_classes"]), truth.categories)
    if not classes:
        raise ValueError(
            f"{checkpoint}: none of the detector's {meta['num_classes']} classes matches a ground-truth "
            f"category ({', '.join(truth.categories.values())}) by name or id"
        )
    detections = detector_detections(model, classes, truth, quiet)
    report = evaluate_detections(truth, detections, sorted(set(classes.values())))
    names = {int(c["id"]) - 1: c["name"] for c in meta.get("categories") or []}
    report |= {
        "checkpoint": str(checkpoint),
        "iterations": (meta.get("settings") or {}).get("iterations"),
        "class_map": {str(names.get(c, c)): truth.categories[g] for c, g in sorted(classes.items())},
        "unmatched_classes": int(meta["num_classes"]) - len(classes),
        "device": str(target),
        "seconds": round(time.perf_counter() - started, 1),
    }
    return report


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def report_table(rows: Sequence[tuple[str, dict[str, Any]]]) -> str:
    """A markdown table: one row per (label, report): images, ground-truth boxes, detections,
    AP50 and CorLoc in percent."""
    lines = [
        "| detector | split | images | GT boxes | detections | AP50 | CorLoc |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, r in rows:
        lines.append(
            f"| {label} | {r['dataset']} {r['split']} | {r['images']} | {r['ground_truth_boxes']} | "
            f"{r['detections']} | {fmt(r['AP50'])} | {fmt(r['CorLoc'])} |"
        )
    return "\n".join(lines)


def write_report(report: dict[str, Any] | list, path: str | Path) -> None:
    """The results as JSON, written atomically."""
    save_json(report, path)
