"""A folder job's answers as files a labeling or evaluation tool imports, written atomically:

- `coco.json`: a COCO instances file, masks as compressed RLE;
- `coco_results.json`: the same masks as COCO results (what `sesam eval-instances --pred` reads);
- `label_studio.json`: Label Studio tasks with the masks as brush predictions (one per class of a
  label map, one per instance with its score), ready to import into a project whose labeling
  config is `label_studio_config.xml` (written beside it; the brush labels are the class names).

A label map (`<stem>.png`: refined labels, a semantic student's answer) gives one COCO annotation
per connected region of each class, score 1. An instance answer (`<stem>.json` of `sesam
segment`) gives one annotation per instance with the student's score. Image and category ids and
class names come from `out/classes.json` when the weak labels came from an export (a COCO source
keeps its ids), else from the answers' class names (a student's), images counting from 1 and class
c being category c + 1. A class without a name is called `class_<c>`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

import numpy as np
from skimage.measure import label as components

from models.engine.validation import list_images
from models.io import (
    UNLABELED,
    atomic_write_text,
    decode_rle,
    encode_rle,
    mask_box,
    read_label_png,
    save_json,
)
from models.labels.brush import brush_result

LABEL_STUDIO_PREFIX = "/data/local-files/?d="  # Label Studio's local-files storage URL (see docs/labeling.md)
LS_FROM_NAME, LS_TO_NAME = "label", "image"  # the names in label_studio_config.xml


def label_map_regions(labels: np.ndarray) -> list[tuple[int, np.ndarray, float]]:
    """(class id, HxW bool, score 1) per 8-connected region of each class of an HxW label map."""
    out = []
    for class_id in (int(c) for c in np.unique(labels) if c != UNLABELED):
        regions = components(labels == class_id, connectivity=2)
        out += [(class_id, regions == k, 1.0) for k in range(1, int(regions.max()) + 1)]
    return out


@dataclass
class Answer:
    """One image's answer read back from a folder job's output."""

    stem: str
    file_name: str
    image_id: int
    height: int
    width: int
    task: str  # "semantic" (a label map) or "instance"
    labels: np.ndarray | None  # HxW uint8 for a semantic answer
    instances: list[tuple[int, np.ndarray, float]]  # (class id, HxW bool, score) for an instance answer


def read_answers(out: Path, images_dir: Path, tasks: dict[str, str]) -> Iterator[Answer]:
    """Each answer in `out` (stem -> task as in `write_answer_files`), one at a time, in stem order."""
    image_ids = _meta(out).get("image_ids", {})
    files = list_images(images_dir)
    for n, stem in enumerate(sorted(tasks)):
        image_id = int(image_ids.get(stem, n + 1))
        name = files[stem].name if stem in files else stem
        if tasks[stem] == "semantic":
            labels = read_label_png(out / f"{stem}.png")
            yield Answer(stem, name, image_id, *labels.shape, "semantic", labels, [])
        else:
            answer = json.loads((out / f"{stem}.json").read_text())
            instances = [
                (int(i["class_id"]), decode_rle(i["mask"]), float(i["score"])) for i in answer["instances"]
            ]
            yield Answer(stem, name, image_id, answer["height"], answer["width"], "instance", None, instances)


def _meta(out: Path) -> dict[str, Any]:
    path = out / "classes.json"
    return json.loads(path.read_text()) if path.exists() else {}


def answer_class_names(out: Path, tasks: dict[str, str], class_names: list[str] | None) -> list[str]:
    """Class names: `out/classes.json` (an export's), else `class_names` (a student's), else the
    names instance answers carry; gaps are `class_<c>`."""
    names = list(_meta(out).get("classes", class_names or []))
    for stem in sorted(s for s, t in tasks.items() if t == "instance" and not names):
        for item in json.loads((out / f"{stem}.json").read_text())["instances"]:
            c = int(item["class_id"])
            if item.get("class_name") and c >= len(names):
                names += [f"class_{k}" for k in range(len(names), c)] + [str(item["class_name"])]
    return names


def write_answer_files(
    out: Path,
    images_dir: Path,
    tasks: dict[str, str],
    class_names: list[str] | None = None,
    image_prefix: str = LABEL_STUDIO_PREFIX,
) -> list[int]:
    """Write the COCO and Label Studio files (module doc) for the answers in `out`; `tasks`: stem ->
    "semantic" (`<stem>.png`) or "instance" (`<stem>.json`). A Label Studio task's image is
    `image_prefix` + the image's file name. Returns the class ids the answers hold, sorted."""
    names = answer_class_names(out, tasks, class_names)
    category_ids = list(_meta(out).get("category_ids", []))

    def category(class_id: int) -> int:
        return category_ids[class_id] if class_id < len(category_ids) else class_id + 1

    def name(class_id: int) -> str:
        return names[class_id] if class_id < len(names) else f"class_{class_id}"

    images, annotations, results, ls_tasks, seen = [], [], [], [], set()
    for a in read_answers(out, images_dir, tasks):
        images.append({"id": a.image_id, "file_name": a.file_name, "width": a.width, "height": a.height})
        regions = label_map_regions(a.labels) if a.labels is not None else a.instances
        for class_id, mask, score in regions:
            seen.add(class_id)
            x0, y0, x1, y1 = mask_box(mask)
            region = {
                "image_id": a.image_id,
                "category_id": category(class_id),
                "segmentation": encode_rle(mask),
                "bbox": [x0, y0, x1 - x0, y1 - y0],
            }
            annotations.append(region | {"id": len(annotations) + 1, "area": int(mask.sum()), "iscrowd": 0})
            results.append(region | {"score": round(score, 6)})
        if a.labels is not None:  # Label Studio: one brush per class of a label map
            brushes = [
                brush_result(a.labels == c, name(c), LS_FROM_NAME, LS_TO_NAME)
                for c in (int(c) for c in np.unique(a.labels) if c != UNLABELED)
            ]
            scores = [1.0] * len(brushes)
        else:
            brushes = [brush_result(m, name(c), LS_FROM_NAME, LS_TO_NAME, s) for c, m, s in a.instances]
            scores = [s for _, _, s in a.instances]
        ls_tasks.append(
            {
                "id": a.image_id,
                "data": {LS_TO_NAME: image_prefix + a.file_name},
                "predictions": [
                    {
                        "model_version": "sesam",
                        "score": round(float(np.mean(scores)), 6) if scores else 0.0,
                        "result": brushes,
                    }
                ],
            }
        )
    classes = range(max([len(names) - 1, *seen], default=-1) + 1)
    categories = [{"id": category(c), "name": name(c)} for c in classes]
    save_json({"images": images, "annotations": annotations, "categories": categories}, out / "coco.json")
    save_json(results, out / "coco_results.json")
    save_json(ls_tasks, out / "label_studio.json")
    atomic_write_text(out / "label_studio_config.xml", label_studio_config([name(c) for c in classes]))
    return sorted(seen)


def label_studio_config(class_names: list[str]) -> str:
    """A Label Studio labeling config for the predictions: brush labels (the predictions' classes),
    with keypoint and rectangle labels of the same classes for weak labels and smart tools."""
    labels = "".join(f"\n    <Label value={quoteattr(n)}/>" for n in class_names)
    return (
        "<View>\n"
        f'  <Image name="{LS_TO_NAME}" value="${LS_TO_NAME}" zoom="true"/>\n'
        f'  <BrushLabels name="{LS_FROM_NAME}" toName="{LS_TO_NAME}">{labels}\n  </BrushLabels>\n'
        f'  <KeyPointLabels name="point" toName="{LS_TO_NAME}" smart="true">{labels}\n  </KeyPointLabels>\n'
        f'  <RectangleLabels name="box" toName="{LS_TO_NAME}" smart="true">{labels}\n  </RectangleLabels>\n'
        "</View>\n"
    )


def coco_tasks(per_image: dict[str, dict[str, Any]]) -> dict[str, str]:
    """stem -> task of a folder job's per-image stats (refine's have no task: semantic)."""
    return {stem: str(stats.get("task", "semantic")) for stem, stats in per_image.items()}


def answer_names(per_image: dict[str, dict[str, Any]]) -> list[str] | None:
    """The class names a folder job's per-image stats carry (a student's), if any."""
    return next((list(s["class_names"]) for s in per_image.values() if s.get("class_names")), None)
