"""A folder job's answers as COCO: `coco.json` (a COCO instances file, masks as compressed RLE) and
`coco_results.json` (the same masks as COCO results, what `sesam eval-instances --pred` reads).

A label map (`<stem>.png`: refined labels, a semantic student's answer) gives one annotation per
connected region of each class, score 1. An instance answer (`<stem>.json` of `sesam segment`)
gives one annotation per instance with the student's score. Image and category ids and names come
from `out/classes.json` when the weak labels came from an export (a COCO source keeps its ids), else
from the answers' class names, images counting from 1 and class c being category c + 1.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from skimage.measure import label as components

from models.engine.validation import list_images
from models.io import UNLABELED, decode_rle, encode_rle, mask_box, read_label_png, save_json


def label_map_regions(labels: np.ndarray) -> list[tuple[int, np.ndarray, float]]:
    """(class id, HxW bool, score 1) per 8-connected region of each class of an HxW label map."""
    out = []
    for class_id in (int(c) for c in np.unique(labels) if c != UNLABELED):
        regions = components(labels == class_id, connectivity=2)
        out += [(class_id, regions == k, 1.0) for k in range(1, int(regions.max()) + 1)]
    return out


def write_coco_outputs(
    out: Path, images_dir: Path, tasks: dict[str, str], class_names: list[str] | None = None
) -> list[int]:
    """Write `out/coco.json` and `out/coco_results.json` atomically for the answers in `out`;
    `tasks`: stem -> "semantic" (`<stem>.png`) or "instance" (`<stem>.json`). Returns the class ids
    the answers hold, sorted."""
    meta_path = out / "classes.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    names = list(meta.get("classes", class_names or []))
    category_ids = list(meta.get("category_ids", []))
    image_ids = {str(k): int(v) for k, v in meta.get("image_ids", {}).items()}
    files = list_images(images_dir)

    def category(class_id: int) -> int:
        return category_ids[class_id] if class_id < len(category_ids) else class_id + 1

    images, annotations, results, seen = [], [], [], set()
    for n, stem in enumerate(sorted(tasks)):
        if tasks[stem] == "semantic":
            labels = read_label_png(out / f"{stem}.png")
            (h, w), regions = labels.shape, label_map_regions(labels)
        else:
            answer = json.loads((out / f"{stem}.json").read_text())
            h, w = answer["height"], answer["width"]
            regions = [
                (int(i["class_id"]), decode_rle(i["mask"]), float(i["score"])) for i in answer["instances"]
            ]
            names = names or []
            for i in answer["instances"]:
                c = int(i["class_id"])
                if i.get("class_name") and c >= len(names):
                    names += [f"class_{k}" for k in range(len(names), c)] + [str(i["class_name"])]
        image_id = image_ids.get(stem, n + 1)
        name = files[stem].name if stem in files else stem
        images.append({"id": image_id, "file_name": name, "width": int(w), "height": int(h)})
        for class_id, mask, score in regions:
            seen.add(class_id)
            x0, y0, x1, y1 = mask_box(mask)
            region = {
                "image_id": image_id,
                "category_id": category(class_id),
                "segmentation": encode_rle(mask),
                "bbox": [x0, y0, x1 - x0, y1 - y0],
            }
            annotations.append(region | {"id": len(annotations) + 1, "area": int(mask.sum()), "iscrowd": 0})
            results.append(region | {"score": round(score, 6)})
    classes = range(max([len(names) - 1, *seen], default=-1) + 1)
    categories = [{"id": category(c), "name": names[c] if c < len(names) else f"class_{c}"} for c in classes]
    save_json({"images": images, "annotations": annotations, "categories": categories}, out / "coco.json")
    save_json(results, out / "coco_results.json")
    return sorted(seen)


def coco_tasks(per_image: dict[str, dict[str, Any]]) -> dict[str, str]:
    """stem -> task of a folder job's per-image stats (refine's have no task: semantic)."""
    return {stem: str(stats.get("task", "semantic")) for stem, stats in per_image.items()}
