"""COCO instance files in and out, through pycocotools.

- `load_coco` reads an instances JSON (quietly: pycocotools prints progress) and names the file on
  any error.
- `samples_from_coco` decodes every annotation to a mask: polygons with several parts, uncompressed
  and compressed RLE; crowd regions go to `InstanceSample.crowd`, their classes to `crowd_class_ids`.
- `coco_dataset` builds an instances JSON (as a dict) from samples: every mask is written as
  compressed RLE (so a round trip keeps masks exactly, not polygon vertices), crowd regions with
  `iscrowd: 1` and their own category, contiguous class ids mapped back to the file's category ids.
- `coco_results` turns predicted instances into COCO's results format (what `COCOeval` and
  `sesam eval-instances --pred` read).
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from models.io import save_json
from training.samples import InstanceSample


def load_coco(source: str | Path | dict[str, Any]):
    """A `pycocotools.coco.COCO` from a file or an in-memory dict; errors name the file."""
    from pycocotools.coco import COCO

    coco = COCO()
    if isinstance(source, dict):
        coco.dataset = source
    else:
        path = Path(source)
        try:
            coco.dataset = json.loads(path.read_text())
        except FileNotFoundError as exc:
            raise ValueError(f"{path}: no such COCO file") from exc
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: invalid JSON ({exc})") from exc
        if not isinstance(coco.dataset, dict) or "images" not in coco.dataset:
            raise ValueError(f"{path}: not a COCO instances file (no 'images' field)")
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def encode_mask(mask: np.ndarray) -> dict[str, Any]:
    """HxW bool -> compressed RLE with a str `counts` (JSON-ready)."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def samples_from_coco(coco, image_dir: str | Path) -> list[InstanceSample]:
    """One `InstanceSample` per image id (sorted), class ids contiguous in category-id order."""
    image_dir = Path(image_dir)
    index = {cat: i for i, cat in enumerate(sorted(coco.getCatIds()))}
    out = []
    for image_id in sorted(coco.getImgIds()):
        info = coco.loadImgs(image_id)[0]
        masks, classes, crowd, crowd_classes = [], [], [], []
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=image_id)):
            if ann["category_id"] not in index:
                raise ValueError(
                    f"annotation {ann.get('id')} of image {image_id}: category_id {ann['category_id']} "
                    "is not among the file's categories"
                )
            mask = coco.annToMask(ann).astype(bool)
            if not mask.any():
                continue
            if ann.get("iscrowd", 0):
                crowd.append(mask)
                crowd_classes.append(index[ann["category_id"]])
            else:
                masks.append(mask)
                classes.append(index[ann["category_id"]])
        out.append(
            InstanceSample(
                Path(info["file_name"]).stem,
                image_dir / info["file_name"],
                masks,
                classes,
                crowd=crowd,
                crowd_class_ids=crowd_classes,
                image_id=int(image_id),
            )
        )
    return out


def coco_dataset(
    samples: Sequence[InstanceSample],
    class_names: Sequence[str],
    category_ids: Sequence[int] | None = None,
    file_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """A COCO instances dict of `samples` (ground truth), crowd regions (`iscrowd: 1`) with their own
    class. `category_ids[c]` is the id written for class c (default c + 1); `file_names` default to
    each sample's image file name. A sample whose crowd masks lack classes is a ValueError."""
    category_ids = list(category_ids) if category_ids is not None else list(range(1, len(class_names) + 1))
    if len(category_ids) != len(class_names):
        raise ValueError(f"{len(class_names)} class names but {len(category_ids)} category ids")
    images, annotations = [], []
    for n, s in enumerate(samples):
        h, w = s.size
        image_id = s.image_id or n + 1
        name = file_names[n] if file_names is not None else Path(s.image).name
        if len(s.crowd_class_ids) != len(s.crowd):
            raise ValueError(
                f"sample {s.stem}: {len(s.crowd)} crowd regions but {len(s.crowd_class_ids)} crowd class ids"
            )
        images.append({"id": image_id, "file_name": name, "height": int(h), "width": int(w)})
        for mask, cls, crowd in [(m, c, 0) for m, c in zip(s.masks, s.class_ids)] + [
            (m, c, 1) for m, c in zip(s.crowd, s.crowd_class_ids)
        ]:
            rle = encode_mask(mask)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category_ids[cls],
                    "segmentation": rle,
                    "area": float(mask_utils.area(rle)),
                    "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                    "iscrowd": crowd,
                }
            )
    categories = [{"id": int(i), "name": str(name)} for i, name in zip(category_ids, class_names)]
    return {"images": images, "annotations": annotations, "categories": categories}


def coco_results(
    image_ids: Sequence[int],
    predictions: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
    category_ids: Sequence[int] | None = None,
) -> list[dict[str, Any]]:
    """COCO results: for image `image_ids[n]`, `predictions[n]` = (masks KxHxW bool, classes K,
    scores K); class c is written as `category_ids[c]` (default c + 1)."""
    out = []
    for image_id, (masks, classes, scores) in zip(image_ids, predictions):
        for mask, cls, score in zip(masks, classes, scores):
            out.append(
                {
                    "image_id": int(image_id),
                    "category_id": int(category_ids[int(cls)] if category_ids is not None else int(cls) + 1),
                    "segmentation": encode_mask(mask),
                    "score": float(score),
                }
            )
    return out


def write_coco(data: dict[str, Any] | list[dict[str, Any]], path: str | Path) -> None:
    """Write a COCO dict or results list atomically."""
    save_json(data, path)
