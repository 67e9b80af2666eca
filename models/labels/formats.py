"""Weak labels from labeling tools' exports, one `WeakLabels` per image.

- CVAT for images 1.1 XML (`read_cvat_xml`): `<box>` -> boxes, `<points>` -> points, `<polyline>`
  -> scribbles, `<polygon>` and `<mask>` -> the coarse mask (drawn in `z_order`, later shapes on top),
  `<tag>` -> tags. Class ids follow the label order of the file's `<meta>` (or `class_names`).
- Label Studio's JSON export (`read_label_studio`): KeyPointLabels -> points, RectangleLabels ->
  boxes (a rotated rectangle by its bounding box), PolygonLabels and BrushLabels -> the coarse mask
  (in result order; brush RLE decoded by `models.labels.brush`).
  Values are percent of the image; each task's image name loses Label Studio's upload prefix
  (`1a2b3c4d-street.jpg` -> `street`). Class ids follow `class_names`, else the sorted label names.
- COCO instances JSON (`read_coco_weak`): each annotation as its box (`coco-boxes`) or as one point
  at the interior-most pixel of its mask (`coco-points`), instance-level (one label per object).
  Crowd regions are left out. Class ids are the categories in id order.

Every error names the file, the image and the field. `WEAK_FORMATS` is the registry by name.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi
from skimage.draw import polygon as draw_polygon

from models.config import register
from models.engine.validation import DEFAULT_MAX_PIXELS
from models.io import UNLABELED
from models.labels.brush import decode_brush
from models.labels.schema import BoxLabel, PointLabel, Scribble, WeakLabels


@dataclass
class WeakLabelSet:
    """Weak labels per image stem and the class names their ids index."""

    labels: dict[str, WeakLabels] = field(default_factory=dict)
    class_names: list[str] = field(default_factory=list)
    image_ids: dict[str, int] = field(default_factory=dict)  # stem -> the export's image id
    category_ids: list[int] = field(default_factory=list)  # class id -> the export's category id


WEAK_FORMATS: dict[str, Callable[..., WeakLabelSet]] = {}


def _xy_list(text: str, where: str) -> np.ndarray:
    """CVAT's "x0,y0;x1,y1;..." -> Nx2 float (x, y)."""
    try:
        pts = np.array([[float(v) for v in pair.split(",")] for pair in text.split(";") if pair.strip()])
    except ValueError:
        raise ValueError(f"{where}: points {text[:60]!r} are not 'x,y;x,y;...'") from None
    if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) == 0:
        raise ValueError(f"{where}: points {text[:60]!r} are not 'x,y;x,y;...'")
    return pts


def _inside(pts: np.ndarray, width: int, height: int) -> np.ndarray:
    """Points clipped into the image (tools allow a vertex on the far edge: x == width)."""
    return np.stack([np.clip(pts[:, 0], 0, width - 1e-3), np.clip(pts[:, 1], 0, height - 1e-3)], 1)


def cvat_mask(rle: str, width: int, height: int, where: str) -> np.ndarray:
    """CVAT 1.1's mask RLE: run lengths alternating 0, 1, 0, ... (first run of zeros, possibly
    empty), row-major over a width x height box -> height x width bool."""
    try:
        counts = [int(v) for v in rle.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{where}: rle is not a list of run lengths") from None
    if sum(counts) != width * height or any(c < 0 for c in counts):
        raise ValueError(
            f"{where}: rle covers {sum(counts)} pixels, the box {width}x{height} has {width * height}"
        )
    values = np.repeat(np.arange(len(counts)) % 2, counts).astype(bool)
    return values.reshape(height, width)


@register(WEAK_FORMATS, "cvat")
def read_cvat_xml(path: str | Path, class_names: Sequence[str] | None = None) -> WeakLabelSet:
    """Weak labels from a CVAT for images 1.1 XML export (see the module doc)."""
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as exc:
        raise ValueError(f"{path}: not a readable CVAT XML file ({exc})") from None
    names = list(class_names or [])
    if not names:
        names = [(lab.findtext("name") or "").strip() for lab in root.iterfind(".//meta//labels/label")]
    if not names:
        raise ValueError(f"{path}: no labels in <meta> and no class names given")
    ids = {name: i for i, name in enumerate(names)}
    out = WeakLabelSet(class_names=names, category_ids=list(range(1, len(names) + 1)))
    for image in root.iterfind("image"):
        name = image.get("name", "")
        where = f"{path}: image {name!r}"
        try:
            width, height = int(image.get("width", "")), int(image.get("height", ""))
        except ValueError:
            raise ValueError(f"{where}: width and height must be integers") from None
        weak = WeakLabels(height, width)
        coarse = np.full((height, width), UNLABELED, np.uint8)
        areas = []  # (z_order, order, class id, HxW bool)

        def class_of(shape: ET.Element, where: str) -> int:
            label = shape.get("label")
            if label not in ids:
                raise ValueError(f"{where}: label {label!r} is not one of {names}")
            return ids[label]

        for n, shape in enumerate(image):
            at = f"{where}, <{shape.tag}> {n}"
            if shape.tag == "box":
                box = [float(shape.get(k, "nan")) for k in ("xtl", "ytl", "xbr", "ybr")]
                x0, y0, x1, y1 = np.clip(box, 0, [width, height, width, height])
                weak.boxes.append(BoxLabel(class_of(shape, at), (x0, y0, x1, y1)))
            elif shape.tag == "points":
                for x, y in _inside(_xy_list(shape.get("points", ""), at), width, height):
                    weak.points.append(PointLabel(float(x), float(y), class_of(shape, at)))
            elif shape.tag == "polyline":
                pts = _inside(_xy_list(shape.get("points", ""), at), width, height)
                weak.scribbles.append(Scribble(class_of(shape, at), pts))
            elif shape.tag == "polygon":
                pts = _xy_list(shape.get("points", ""), at)
                rr, cc = draw_polygon(pts[:, 1], pts[:, 0], shape=(height, width))
                mask = np.zeros((height, width), bool)
                mask[rr, cc] = True
                areas.append((int(shape.get("z_order", 0)), n, class_of(shape, at), mask))
            elif shape.tag == "mask":
                left, top = int(shape.get("left", 0)), int(shape.get("top", 0))
                w, h = int(shape.get("width", 0)), int(shape.get("height", 0))
                part = cvat_mask(shape.get("rle", ""), w, h, at)
                mask = np.zeros((height, width), bool)
                mask[top : top + h, left : left + w] = part[: max(0, height - top), : max(0, width - left)]
                areas.append((int(shape.get("z_order", 0)), n, class_of(shape, at), mask))
            elif shape.tag == "tag":
                weak.tags.append(class_of(shape, at))
        for _, _, class_id, mask in sorted(areas, key=lambda a: (a[0], a[1])):
            coarse[mask] = class_id
        if areas:
            weak.coarse = coarse
        weak.tags = sorted(set(weak.tags))
        weak.validate(len(names), where)
        out.labels[Path(name).stem] = weak
        out.image_ids[Path(name).stem] = int(image.get("id", len(out.image_ids)))
    return out


def _task_stem(task: dict, where: str) -> str:
    """The image stem of a Label Studio task: the file name of its first data value, without the
    8-hex-digit prefix Label Studio puts on uploads."""
    values = [v for v in (task.get("data") or {}).values() if isinstance(v, str)]
    if not values:
        raise ValueError(f"{where}: the task has no image in its data")
    name = Path(values[0].split("?")[0]).name
    head, sep, tail = name.partition("-")
    if sep and len(head) == 8 and all(c in "0123456789abcdef" for c in head):
        name = tail
    return Path(name).stem


@register(WEAK_FORMATS, "label-studio")
def read_label_studio(path: str | Path, class_names: Sequence[str] | None = None) -> WeakLabelSet:
    """Weak labels from a Label Studio JSON export (see the module doc); the last annotation of a
    task is read (predictions are not)."""
    path = Path(path)
    try:
        tasks = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable Label Studio JSON export ({exc})") from None
    if not isinstance(tasks, list):
        raise ValueError(f"{path}: a Label Studio JSON export is a list of tasks")
    results = [
        [
            r
            for r in ((t.get("annotations") or [{}])[-1].get("result") or [])
            if r.get("type") in LABEL_STUDIO_KINDS
        ]
        for t in tasks
    ]
    names = list(
        class_names or sorted({lab for rs in results for r in rs for lab in r["value"].get(r["type"], [])})
    )
    ids = {name: i for i, name in enumerate(names)}
    out = WeakLabelSet(class_names=names, category_ids=list(range(1, len(names) + 1)))
    for n, (task, result) in enumerate(zip(tasks, results, strict=True)):
        where = f"{path}: task {task.get('id', n)}"
        stem = _task_stem(task, where)
        weak = label_studio_regions(result, ids, where)
        if weak is None:
            continue
        out.labels[stem] = weak
        out.image_ids[stem] = int(task.get("id", n + 1))
    return out


LABEL_STUDIO_KINDS = ("keypointlabels", "rectanglelabels", "polygonlabels", "brushlabels")


def ls_label(region: dict, where: str) -> str:
    """The one label of a Label Studio region (`value.<type>: [label]`)."""
    value = region.get("value")
    labels = value.get(region.get("type")) if isinstance(value, dict) else None
    if not isinstance(labels, list) or len(labels) != 1 or not isinstance(labels[0], str):
        raise ValueError(f"{where}.value: a region needs exactly one label, got {labels!r}")
    return labels[0]


def ls_geometry(region: dict, width: int, height: int, where: str) -> np.ndarray:
    """A Label Studio keypoint (-> [x, y]) or rectangle (-> [x0, y0, x1, y1]; a rotated one by its
    bounding box) from percent of the image to pixels of a `width` x `height` image, clipped into it."""
    value = region.get("value")
    sx, sy = width / 100.0, height / 100.0
    try:
        if region.get("type") == "keypointlabels":
            px, py = float(value["x"]), float(value["y"])
        else:
            x, y = float(value["x"]) * sx, float(value["y"]) * sy
            w, h = float(value["width"]) * sx, float(value["height"]) * sy
            angle = np.deg2rad(float(value.get("rotation") or 0.0))
    except (KeyError, TypeError, ValueError, AttributeError):
        raise ValueError(f"{where}.value: x, y (and width, height for a rectangle) must be numbers") from None
    if region.get("type") == "keypointlabels":
        if not (0.0 <= px <= 100.0 and 0.0 <= py <= 100.0):  # also refuses NaN
            raise ValueError(f"{where}.value: the keypoint ({px}%, {py}%) lies outside the image")
        return _inside(np.array([[px * sx, py * sy]]), width, height)[0]
    if not np.isfinite([x, y, w, h, angle]).all():
        raise ValueError(f"{where}.value: coordinates must be finite")
    corners = np.array([[0, 0], [w, 0], [w, h], [0, h]], float)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    corners = corners @ rot.T + [x, y]
    x0, y0 = np.clip(corners.min(0), 0, [width, height])
    x1, y1 = np.clip(corners.max(0), 0, [width, height])
    return np.array([x0, y0, x1, y1], float)


def label_studio_regions(
    result: list[dict],
    ids: dict[str, int],
    where: str,
    size: tuple[int, int] | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> WeakLabels | None:
    """One task's Label Studio regions (`LABEL_STUDIO_KINDS`; others are left out) -> its weak
    labels, class ids by label name (`ids`); None without a region. The labels are for an image of
    `size` (H, W) when given (the decoded image), else of the regions' `original_width/height`,
    which must be at most `max_pixels`; a brush mask must be of that size."""
    result = [r for r in result if isinstance(r, dict) and r.get("type") in LABEL_STUDIO_KINDS]
    if not result:
        return None
    if size is None:
        try:
            size = int(result[0]["original_height"]), int(result[0]["original_width"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{where}, result[0]: original_width and original_height are required") from None
    height, width = size
    if not (height > 0 and width > 0 and height * width <= max_pixels):
        raise ValueError(f"{where}: a {width}x{height} image is outside 1..{max_pixels} pixels")
    weak = WeakLabels(height, width)
    coarse = np.full((height, width), UNLABELED, np.uint8)
    for k, region in enumerate(result):
        at, kind = f"{where}, result[{k}]", region["type"]
        label = ls_label(region, at)
        if label not in ids:
            raise ValueError(f"{at}: label {label!r} is not one of {sorted(ids)}")
        class_id, value = ids[label], region["value"]
        if kind == "keypointlabels":
            x, y = ls_geometry(region, width, height, at)
            weak.points.append(PointLabel(float(x), float(y), class_id))
        elif kind == "rectanglelabels":
            box = ls_geometry(region, width, height, at)
            weak.boxes.append(BoxLabel(class_id, tuple(float(v) for v in box)))
        elif kind == "polygonlabels":
            try:
                pts = np.asarray(value["points"], float).reshape(-1, 2) * [width / 100.0, height / 100.0]
            except (KeyError, TypeError, ValueError):
                raise ValueError(f"{at}.value.points: a list of [x, y] percent pairs is required") from None
            rr, cc = draw_polygon(pts[:, 1], pts[:, 0], shape=(height, width))
            coarse[rr, cc] = class_id
        else:
            try:
                coarse[decode_brush(value["rle"], height, width)] = class_id
            except (KeyError, TypeError, ValueError) as exc:
                raise ValueError(
                    f"{at}: brush value is not Label Studio RLE of a {width}x{height} mask ({exc})"
                ) from None
    if (coarse != UNLABELED).any():
        weak.coarse = coarse
    weak.validate(max(ids.values(), default=-1) + 1, where)
    return weak


def interior_point(mask: np.ndarray) -> tuple[float, float]:
    """(x, y) of the pixel farthest from the mask's border (the first such pixel in row order)."""
    distance = ndi.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(distance)), mask.shape)
    return float(x), float(y)


def read_coco_weak(path: str | Path, kind: str) -> WeakLabelSet:
    """Instance-level weak labels from a COCO instances JSON: one box or one point per object."""
    from pycocotools import mask as mask_utils

    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable COCO JSON file ({exc})") from None
    try:
        categories = sorted(data["categories"], key=lambda c: c["id"])
        ids = {c["id"]: i for i, c in enumerate(categories)}
        images = {im["id"]: im for im in data["images"]}
        annotations = data["annotations"]
    except (KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not a COCO instances file (missing {exc})") from None
    out = WeakLabelSet(
        class_names=[str(c["name"]) for c in categories], category_ids=[c["id"] for c in categories]
    )
    for image in images.values():
        stem = Path(image["file_name"]).stem
        out.labels[stem] = WeakLabels(int(image["height"]), int(image["width"]), instances=True)
        out.image_ids[stem] = int(image["id"])
    for n, ann in enumerate(annotations):
        where = f"{path}: annotations[{n}]"
        if ann.get("iscrowd"):
            continue
        image = images.get(ann.get("image_id"))
        if image is None or ann.get("category_id") not in ids:
            raise ValueError(f"{where}: unknown image_id or category_id")
        weak = out.labels[Path(image["file_name"]).stem]
        class_id = ids[ann["category_id"]]
        if kind == "boxes":
            x, y, w, h = (float(v) for v in ann["bbox"])
            x0, y0 = max(0.0, x), max(0.0, y)
            weak.boxes.append(BoxLabel(class_id, (x0, y0, min(x + w, weak.width), min(y + h, weak.height))))
        else:
            segmentation = ann["segmentation"]
            if isinstance(segmentation, list):
                rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, weak.height, weak.width))
            elif isinstance(segmentation.get("counts"), list):
                rle = mask_utils.frPyObjects(segmentation, weak.height, weak.width)
            else:
                rle = segmentation
            mask = mask_utils.decode(rle).astype(bool)
            if not mask.any():
                continue
            x, y = interior_point(mask)
            weak.points.append(PointLabel(x, y, class_id))
    for stem, weak in out.labels.items():
        weak.validate(len(out.class_names), f"{path}: image {stem!r}")
    return out


register(WEAK_FORMATS, "coco-boxes")(lambda path: read_coco_weak(path, "boxes"))
register(WEAK_FORMATS, "coco-points")(lambda path: read_coco_weak(path, "points"))
