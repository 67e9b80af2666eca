"""The weak-label schema: what a user hands us for one image, and its files.

Per image `<stem>`, any mix of kinds, each carrying a class id:

- `<stem>.json` (sparse kinds), version 2::

    {
      "version": 2,
      "instances": false,                          # true: instance-level labels (below)
      "width": 480, "height": 360,                 # the image size the labels refer to
      "points":    [{"x": 12.5, "y": 40, "class_id": 3}],
      "scribbles": [{"class_id": 3, "width": 3, "points": [[x, y], [x, y], ...]}],   # polyline
      "boxes":     [{"class_id": 8, "box": [x0, y0, x1, y1]}],
      "tags":      [0, 1, 3]
    }

  Coordinates are pixels of the image (x right, y down). A scribble is an ordered polyline drawn
  `width` pixels thick. Every key but `version`, `width` and `height` is optional.

  With `"instances": true` (instance segmentation, WISH) the labels mean more: every point lies
  on one object and no two points on the same object, every box is one object's box, and `tags`
  lists every class present in the image. Without it (semantic labels) several points or boxes
  may name one region and tags need not be complete. Version 1 files (no `instances` field) are
  still read, as semantic labels; files are written as version 2.
- `<stem>.png` (coarse masks): uint8 class ids, 255 = unlabeled, the image's size.

`load_weak_labels` validates everything and raises ValueError naming the file, the field and the
value; `save_weak_labels` writes atomically (temp file + rename).
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi
from skimage.draw import line

from models.io import UNLABELED, read_label_png, save_json, save_png

SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)


@dataclass(frozen=True)
class PointLabel:
    x: float
    y: float
    class_id: int


@dataclass(frozen=True)
class Scribble:
    class_id: int
    points: np.ndarray  # Nx2 (x, y), ordered along the stroke
    width: int = 3


@dataclass(frozen=True)
class BoxLabel:
    class_id: int
    box: tuple[float, float, float, float]  # x0, y0, x1, y1


@dataclass
class WeakLabels:
    """All weak labels of one image. `coarse` is HxW uint8 (255 = unlabeled) or None."""

    height: int
    width: int
    points: list[PointLabel] = field(default_factory=list)
    scribbles: list[Scribble] = field(default_factory=list)
    boxes: list[BoxLabel] = field(default_factory=list)
    tags: list[int] = field(default_factory=list)
    coarse: np.ndarray | None = None
    instances: bool = False  # True: one point / box per object, tags complete (schema version 2)

    @property
    def size(self) -> tuple[int, int]:
        return (self.height, self.width)

    def kinds(self) -> list[str]:
        present = [
            ("points", self.points),
            ("scribbles", self.scribbles),
            ("boxes", self.boxes),
            ("tags", self.tags),
        ]
        out = [name for name, items in present if items]
        if self.coarse is not None and (self.coarse != UNLABELED).any():
            out.append("coarse")
        return out

    def rescaled(self, height: int, width: int) -> WeakLabels:
        """The same labels for the image resized to height x width: coordinates scaled (boxes and
        scribble vertices too, kept inside the new size; a scribble keeps at least 1 pixel of
        width), the coarse mask resized by nearest neighbour (pixel centres), tags kept."""
        sx, sy = width / self.width, height / self.height
        coarse = None
        if self.coarse is not None:
            rows = np.minimum(((np.arange(height) + 0.5) / sy).astype(np.intp), self.height - 1)
            cols = np.minimum(((np.arange(width) + 0.5) / sx).astype(np.intp), self.width - 1)
            coarse = self.coarse[rows[:, None], cols[None, :]]
        return WeakLabels(
            height,
            width,
            [
                PointLabel(min(p.x * sx, width - 1), min(p.y * sy, height - 1), p.class_id)
                for p in self.points
            ],
            [
                Scribble(
                    s.class_id,
                    np.minimum(s.points * (sx, sy), (width - 1, height - 1)),
                    max(1, round(s.width * min(sx, sy))),
                )
                for s in self.scribbles
            ],
            [
                BoxLabel(
                    b.class_id,
                    (
                        min(b.box[0] * sx, width),
                        min(b.box[1] * sy, height),
                        min(b.box[2] * sx, width),
                        min(b.box[3] * sy, height),
                    ),
                )
                for b in self.boxes
            ],
            list(self.tags),
            coarse,
            self.instances,
        )

    def class_ids(self) -> set[int]:
        ids = {p.class_id for p in self.points} | {s.class_id for s in self.scribbles}
        ids |= {b.class_id for b in self.boxes} | set(self.tags)
        if self.coarse is not None:
            ids |= {int(v) for v in np.unique(self.coarse) if v != UNLABELED}
        return ids

    def validate(self, num_classes: int | None = None, source: str = "weak labels") -> None:
        """Raise ValueError naming the source, field and value for anything out of range."""
        h, w = self.height, self.width
        if h <= 0 or w <= 0:
            raise ValueError(f"{source}: height and width must be positive, got {h}x{w}")

        def check_class(value: int, where: str) -> None:
            if not isinstance(value, (int, np.integer)) or value < 0 or value >= UNLABELED:
                raise ValueError(f"{source}: {where} = {value!r} is not a class id in [0, {UNLABELED})")
            if num_classes is not None and value >= num_classes:
                raise ValueError(f"{source}: {where} = {value} is out of range for {num_classes} classes")

        def check_xy(x: float, y: float, where: str) -> None:
            if not (np.isfinite(x) and np.isfinite(y)) or not (0 <= x < w and 0 <= y < h):
                raise ValueError(f"{source}: {where} = ({x:g}, {y:g}) lies outside the {w}x{h} image")

        for i, p in enumerate(self.points):
            check_class(p.class_id, f"points[{i}].class_id")
            check_xy(p.x, p.y, f"points[{i}]")
        for i, s in enumerate(self.scribbles):
            check_class(s.class_id, f"scribbles[{i}].class_id")
            if s.points.ndim != 2 or s.points.shape[1] != 2 or len(s.points) == 0:
                raise ValueError(f"{source}: scribbles[{i}].points must be a non-empty list of [x, y]")
            if not 1 <= s.width <= max(h, w):
                raise ValueError(f"{source}: scribbles[{i}].width = {s.width} must be in [1, {max(h, w)}]")
            for j, (x, y) in enumerate(s.points):
                check_xy(float(x), float(y), f"scribbles[{i}].points[{j}]")
        for i, b in enumerate(self.boxes):
            check_class(b.class_id, f"boxes[{i}].class_id")
            x0, y0, x1, y1 = b.box
            if not (0 <= x0 <= x1 <= w and 0 <= y0 <= y1 <= h):
                raise ValueError(f"{source}: boxes[{i}].box = {list(b.box)} is not inside the {w}x{h} image")
        for i, t in enumerate(self.tags):
            check_class(t, f"tags[{i}]")
        if self.coarse is not None:
            if self.coarse.shape != (h, w):
                raise ValueError(
                    f"{source}: coarse mask is {self.coarse.shape[1]}x{self.coarse.shape[0]}, image is {w}x{h}"
                )
            bad = [
                int(v)
                for v in np.unique(self.coarse)
                if v != UNLABELED and num_classes is not None and v >= num_classes
            ]
            if bad:
                raise ValueError(
                    f"{source}: coarse mask has class ids {bad} out of range for {num_classes} classes"
                )

    # -- rasterisation ------------------------------------------------------------------------
    def scribble_mask(self, scribble: Scribble) -> np.ndarray:
        """HxW bool: the polyline drawn `width` pixels thick."""
        pts = np.round(scribble.points).astype(int)
        centre = np.zeros(self.size, dtype=bool)
        if len(pts) == 1:
            centre[pts[0, 1], pts[0, 0]] = True
        for (x0, y0), (x1, y1) in itertools.pairwise(pts):
            rr, cc = line(y0, x0, y1, x1)
            centre[rr, cc] = True
        radius = int(scribble.width) // 2
        if not radius:
            return centre
        rows, cols = np.flatnonzero(centre.any(1)), np.flatnonzero(centre.any(0))
        r0, r1 = max(rows[0] - radius, 0), min(rows[-1] + radius + 1, self.height)
        c0, c1 = max(cols[0] - radius, 0), min(cols[-1] + radius + 1, self.width)
        mask = np.zeros(self.size, dtype=bool)
        # the dilation by a disk of `radius` (x^2 + y^2 <= r^2), as a distance threshold: O(pixels)
        # whatever the width, where a disk structuring element costs O(pixels x r^2)
        mask[r0:r1, c0:c1] = ndi.distance_transform_edt(~centre[r0:r1, c0:c1]) <= radius
        return mask

    def sparse_map(self) -> np.ndarray:
        """HxW uint8 of the pixels the weak labels name directly (points, scribbles, coarse); 255 elsewhere.

        Boxes and tags name no pixel, so they do not appear. Later kinds overwrite earlier ones in
        the order coarse, scribbles, points.
        """
        out = np.full(self.size, UNLABELED, dtype=np.uint8)
        if self.coarse is not None:
            out[:] = self.coarse
        for s in self.scribbles:
            out[self.scribble_mask(s)] = s.class_id
        for p in self.points:
            out[int(p.y), int(p.x)] = p.class_id
        return out

    # -- JSON ------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"version": SCHEMA_VERSION, "width": self.width, "height": self.height}
        if self.instances:
            data["instances"] = True
        if self.points:
            data["points"] = [
                {"x": float(p.x), "y": float(p.y), "class_id": int(p.class_id)} for p in self.points
            ]
        if self.scribbles:
            data["scribbles"] = [
                {"class_id": int(s.class_id), "width": int(s.width), "points": np.round(s.points, 2).tolist()}
                for s in self.scribbles
            ]
        if self.boxes:
            data["boxes"] = [
                {"class_id": int(b.class_id), "box": [float(v) for v in b.box]} for b in self.boxes
            ]
        if self.tags:
            data["tags"] = sorted(int(t) for t in self.tags)
        return data

    @classmethod
    def from_json(cls, data: Any, source: str = "weak labels") -> WeakLabels:
        if not isinstance(data, dict):
            raise ValueError(f"{source}: expected a JSON object, got {type(data).__name__}")
        version = data.get("version")
        if version not in READABLE_VERSIONS or isinstance(version, bool):
            raise ValueError(
                f"{source}: version = {version!r}; this reader understands versions {list(READABLE_VERSIONS)}"
            )
        fields = {"version", "width", "height", "points", "scribbles", "boxes", "tags", "image"}
        if version >= 2:
            fields.add("instances")
        unknown = sorted(set(data) - fields)
        if unknown:
            raise ValueError(f"{source}: unknown fields {unknown}")
        try:
            width, height = int(data["width"]), int(data["height"])
            points = [
                PointLabel(float(p["x"]), float(p["y"]), _int(p["class_id"])) for p in data.get("points", [])
            ]
            scribbles = [
                Scribble(
                    _int(s["class_id"]),
                    np.asarray(s["points"], dtype=np.float64).reshape(-1, 2),
                    int(s.get("width", 3)),
                )
                for s in data.get("scribbles", [])
            ]
            boxes = [
                BoxLabel(_int(b["class_id"]), tuple(float(v) for v in b["box"]))
                for b in data.get("boxes", [])
            ]
            tags = [_int(t) for t in data.get("tags", [])]
        except KeyError as exc:
            raise ValueError(f"{source}: missing field {exc}") from exc
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{source}: malformed value ({exc})") from exc
        if any(len(b.box) != 4 for b in boxes):
            raise ValueError(f"{source}: every box needs 4 numbers [x0, y0, x1, y1]")
        instances = data.get("instances", False)
        if not isinstance(instances, bool):
            raise ValueError(f"{source}: instances = {instances!r} must be true or false")
        return cls(height, width, points, scribbles, boxes, tags, instances=instances)


def _int(value: Any) -> int:
    if isinstance(value, bool) or not float(value).is_integer():
        raise ValueError(f"class id {value!r} is not an integer")
    return int(value)


def load_weak_labels(
    directory: str | Path,
    stem: str,
    image_size: tuple[int, int] | None = None,
    num_classes: int | None = None,
) -> WeakLabels:
    """Read `<stem>.json` and/or `<stem>.png` from `directory`; validate against the image size."""
    directory = Path(directory)
    json_path, png_path = directory / f"{stem}.json", directory / f"{stem}.png"
    if not json_path.exists() and not png_path.exists():
        raise ValueError(f"{directory}: no weak labels for {stem!r} ({stem}.json or {stem}.png)")
    coarse = read_label_png(png_path) if png_path.exists() else None
    if json_path.exists():
        try:
            data = json.loads(json_path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{json_path}: invalid JSON ({exc})") from exc
        weak = WeakLabels.from_json(data, source=str(json_path))
        source = str(json_path)
    else:
        h, w = coarse.shape
        weak = WeakLabels(h, w)
        source = str(png_path)
    weak.coarse = coarse
    if image_size is not None and weak.size != tuple(image_size):
        raise ValueError(
            f"{source}: labels are for a {weak.width}x{weak.height} image, the image is {image_size[1]}x{image_size[0]}"
        )
    weak.validate(
        num_classes,
        source + (" / " + str(png_path) if coarse is not None and source != str(png_path) else ""),
    )
    return weak


def save_weak_labels(weak: WeakLabels, directory: str | Path, stem: str) -> list[Path]:
    """Write `<stem>.json` (when any sparse kind is present) and `<stem>.png` (when coarse is), and
    remove the stem's other file if `weak` has none of its kinds: the folder then holds exactly
    `weak` for the stem (a file left from another derivation would be merged in on reading)."""
    directory = Path(directory)
    written = []
    sparse = weak.to_json()
    files = {"json": directory / f"{stem}.json", "png": directory / f"{stem}.png"}
    if set(sparse) - {"version", "width", "height", "instances"}:
        save_json(sparse, files["json"])
        written.append(files["json"])
    if weak.coarse is not None:
        save_png(weak.coarse, files["png"])
        written.append(files["png"])
    for path in set(files.values()) - set(written):
        path.unlink(missing_ok=True)
    return written
