"""Datasets: where images and dense labels live on disk."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.config import lookup, register
from models.engine.validation import IMAGE_EXTENSIONS, list_images
from models.io import read_label_png
from training.coco import load_coco, samples_from_coco
from training.samples import InstanceSample, Sample

CAMVID_CLASSES = (
    "sky",
    "building",
    "pole",
    "road",
    "pavement",
    "tree",
    "sign_symbol",
    "fence",
    "car",
    "pedestrian",
    "bicyclist",
)
CAMVID_IGNORE = 11


@dataclass(frozen=True)
class CamVid:
    """CamVid as laid out in shared/data/camvid: images/{split}/<stem>.<jpg|png|...>, labels/{split}/<stem>.png."""

    root: Path
    split: str = "val"

    num_classes = len(CAMVID_CLASSES)
    ignore_index = CAMVID_IGNORE
    class_names = CAMVID_CLASSES

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))
        if not (self.root / f"{self.split}.txt").is_file():
            raise ValueError(f"{self.root}: no {self.split}.txt; is this the CamVid folder?")

    def stems(self) -> list[str]:
        return (self.root / f"{self.split}.txt").read_text().split()

    def samples(self) -> list[Sample]:
        """One sample per stem of `{split}.txt`; the image may have any extension `read_image` reads
        (our copy is JPEG, the public distribution PNG)."""
        images = list_images(self.root / "images" / self.split)
        out = []
        for stem in self.stems():
            if stem not in images:
                raise ValueError(
                    f"{self.root / 'images' / self.split}: no image for {stem!r} listed in {self.split}.txt "
                    f"(looked for {stem}{{{','.join(IMAGE_EXTENSIONS)}}})"
                )
            label = self.root / "labels" / self.split / f"{stem}.png"
            out.append(Sample(stem, images[stem], label if label.exists() else None))
        return out


@dataclass(frozen=True)
class PennFudan:
    """Penn-Fudan pedestrians as distributed: PNGImages/<stem>.png, PedMasks/<stem>_mask.png (0
    background, 1..N one id per pedestrian). No official split: sorted stems, every fifth image
    (index 0, 5, 10, ...) is val, the rest train."""

    root: Path
    split: str = "val"

    class_names = ("pedestrian",)

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))
        if not (self.root / "PNGImages").is_dir() or not (self.root / "PedMasks").is_dir():
            raise ValueError(f"{self.root}: no PNGImages/ and PedMasks/; is this the Penn-Fudan folder?")
        if self.split not in ("train", "val", "all"):
            raise ValueError(f"split {self.split!r} unknown; choose train, val or all")

    def stems(self) -> list[str]:
        stems = sorted(list_images(self.root / "PNGImages"))
        if self.split == "all":
            return stems
        return [s for i, s in enumerate(stems) if (i % 5 == 0) == (self.split == "val")]

    def samples(self) -> list[InstanceSample]:
        out = []
        image_ids = {stem: n + 1 for n, stem in enumerate(sorted(list_images(self.root / "PNGImages")))}
        for stem in self.stems():
            ids = read_label_png(self.root / "PedMasks" / f"{stem}_mask.png")
            masks = [ids == k for k in np.unique(ids) if k != 0]
            out.append(
                InstanceSample(
                    stem,
                    self.root / "PNGImages" / f"{stem}.png",
                    masks,
                    [0] * len(masks),
                    image_id=image_ids[stem],
                )
            )
        return out


@dataclass(frozen=True)
class CocoInstances:
    """A COCO instances file (`annotations/instances_<split>.json`, images in `<split>/`), read with
    pycocotools: polygons (of any number of parts) and RLE decoded to masks; crowd regions kept
    apart (`InstanceSample.crowd`: they are not one object, and AP ignores detections on them).
    Category ids (1..90 with gaps in COCO) map to contiguous class ids 0..C-1 in id order over the
    file's `categories`; `category_ids[c]` maps back."""

    root: Path
    split: str = "val2017"

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))
        if not self.annotation_file.is_file():
            raise ValueError(f"{self.annotation_file}: no such COCO annotation file")

    @property
    def annotation_file(self) -> Path:
        return self.root / "annotations" / f"instances_{self.split}.json"

    @functools.cached_property
    def _coco(self):
        """The parsed file, once per dataset object (samples, names and ids all read it)."""
        return load_coco(self.annotation_file)

    @property
    def category_ids(self) -> tuple[int, ...]:
        return tuple(sorted(self._coco.getCatIds()))

    @property
    def class_names(self) -> tuple[str, ...]:
        coco = self._coco
        return tuple(coco.loadCats(i)[0]["name"] for i in sorted(coco.getCatIds()))

    def samples(self) -> list[InstanceSample]:
        return samples_from_coco(self._coco, self.root / self.split)


@dataclass(frozen=True)
class InstanceFolder:
    """The instance-id PNG layout: `images/<stem>.<ext>`, `instances/<stem>.png` (8- or 16-bit ids:
    0 background, 1..N one id per instance) and, optionally, `instances/<stem>.json`
    (`{"classes": {"<id>": class_id, ...}}`; without it every instance is class 0). Every image
    with an id map is a sample, in sorted stem order."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))
        if not (self.root / "images").is_dir() or not (self.root / "instances").is_dir():
            raise ValueError(f"{self.root}: no images/ and instances/ folders (the instance-id PNG layout)")

    def samples(self) -> list[InstanceSample]:
        import json

        from PIL import Image

        images = list_images(self.root / "images")
        out = []
        for n, stem in enumerate(sorted(images)):
            path = self.root / "instances" / f"{stem}.png"
            if not path.exists():
                continue
            with Image.open(path) as img:
                ids = np.asarray(img).astype(np.int64)
            if ids.ndim != 2:
                raise ValueError(f"{path}: instance ids must be a single-channel PNG, got shape {ids.shape}")
            classes: dict[str, int] = {}
            meta = path.with_suffix(".json")
            if meta.exists():
                try:
                    classes = {str(k): int(v) for k, v in json.loads(meta.read_text())["classes"].items()}
                except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                    raise ValueError(f'{meta}: expected {{"classes": {{"<id>": class_id}}}} ({exc})') from exc
            present = [int(k) for k in np.unique(ids) if k != 0]
            masks = [ids == k for k in present]
            out.append(
                InstanceSample(
                    stem, images[stem], masks, [classes.get(str(k), 0) for k in present], image_id=n + 1
                )
            )
        return out


def write_instance_folder(samples: list[InstanceSample], root: str | Path) -> None:
    """Write samples in the instance-id PNG layout (ids 1..N in sample order, 16-bit when N > 255);
    images are copied as PNG. Overlapping masks cannot be represented: later instances win."""
    from PIL import Image

    from models.io import atomic_write, save_json

    def png_writer(array: np.ndarray):
        return lambda tmp: Image.fromarray(array).save(tmp, format="PNG")

    root = Path(root)
    for s in samples:
        h, w = s.size
        ids = np.zeros((h, w), np.uint16)
        for k, m in enumerate(s.masks, start=1):
            ids[m] = k
        atomic_write(
            root / "instances" / f"{s.stem}.png",
            png_writer(ids.astype(np.uint8) if len(s.masks) < 256 else ids),
        )
        save_json(
            {"classes": {str(k): int(c) for k, c in enumerate(s.class_ids, 1)}},
            root / "instances" / f"{s.stem}.json",
        )
        atomic_write(root / "images" / f"{s.stem}.png", png_writer(s.load_image()))


CAMVID_THINGS = ("pole", "sign_symbol", "car", "pedestrian", "bicyclist")


@dataclass(frozen=True)
class CamVidThings:
    """Instances derived from CamVid's class maps: every 8-connected component of one "thing"
    class (pole, sign_symbol, car, pedestrian, bicyclist; class ids 0..4 in that order) with at
    least `min_area` pixels is one instance.

    An approximation, and the docs say so: touching cars or a crowd of pedestrians are one
    component (one "instance"), and an object cut by a pole is two. With `tiles` > 1 each image is
    cut into tiles x tiles samples (instances clipped to the tile, then filtered by `min_area`
    again), which gives image-level tags per-sample contrast (a tile without a car). Splits are
    CamVid's own train / val lists."""

    root: Path
    split: str = "val"
    min_area: int = 50
    tiles: int = 1

    class_names = CAMVID_THINGS

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))
        if self.tiles < 1 or self.min_area < 1:
            raise ValueError(f"tiles ({self.tiles}) and min_area ({self.min_area}) must be >= 1")

    def samples(self, limit: int | None = None) -> list[InstanceSample]:
        from scipy import ndimage as ndi

        things = [CAMVID_CLASSES.index(name) for name in CAMVID_THINGS]
        out = []
        for n, sample in enumerate(CamVid(self.root, self.split).samples()[:limit]):
            if sample.label is None:
                continue
            gt = read_label_png(sample.label)
            h, w = gt.shape
            ys = np.linspace(0, h, self.tiles + 1).round().astype(int)
            xs = np.linspace(0, w, self.tiles + 1).round().astype(int)
            for r in range(self.tiles):
                for c in range(self.tiles):
                    tile = gt[ys[r] : ys[r + 1], xs[c] : xs[c + 1]]
                    masks, classes = [], []
                    for k, cls in enumerate(things):
                        labelled, count = ndi.label(tile == cls, structure=np.ones((3, 3), bool))
                        areas = np.bincount(labelled.ravel(), minlength=count + 1)
                        for i in np.flatnonzero(areas[1:] >= self.min_area) + 1:
                            masks.append(labelled == i)
                            classes.append(k)
                    whole = self.tiles == 1
                    out.append(
                        InstanceSample(
                            sample.stem if whole else f"{sample.stem}_t{r}{c}",
                            sample.image,
                            masks,
                            classes,
                            crop=None if whole else (int(ys[r]), int(xs[c]), int(ys[r + 1]), int(xs[c + 1])),
                            image_id=n * self.tiles**2 + r * self.tiles + c + 1,
                        )
                    )
        return out


# -- a user's instance dataset by format, and COCO's object sizes (the quality benchmarks read both) --

INSTANCE_FORMATS: dict[str, Callable[[Path, str], list[InstanceSample]]] = {}


@register(INSTANCE_FORMATS, "coco")
def _coco_split(root: Path, split: str) -> list[InstanceSample]:
    """COCO instances (`CocoInstances`): `annotations/instances_<split>.json`, images in `<split>/`.
    A split with no file of its exact name names the one file it begins (`val` -> `val2017`)."""
    annotations = root / "annotations"
    names = sorted(p.name[len("instances_") : -len(".json")] for p in annotations.glob("instances_*.json"))
    if not names:
        raise ValueError(
            f"{root}: no annotations/instances_<split>.json (the COCO layout: annotations/instances_<split>.json "
            "and the images in <split>/)"
        )
    if split not in names:
        matches = [n for n in names if n.startswith(split)]
        if len(matches) != 1:
            which = f"{split!r} could be any of {matches}" if matches else f"splits here: {names}"
            raise ValueError(f"{annotations}: no instances_{split}.json; {which}")
        split = matches[0]
    if not (root / split).is_dir():
        raise ValueError(f"{root}: no {split}/ folder with the images of instances_{split}.json")
    return CocoInstances(root, split).samples()


@register(INSTANCE_FORMATS, "folder")
def _folder_split(root: Path, split: str) -> list[InstanceSample]:
    """Instance-id PNG folders (`InstanceFolder`, as `write_instance_folder` writes them), one per
    split: `<root>/<split>/images/` and `<root>/<split>/instances/`. A root that is itself one such
    folder has no splits: split `all` reads it."""
    if (root / split / "images").is_dir():
        return InstanceFolder(root / split).samples()
    if (root / "images").is_dir() and (root / "instances").is_dir():
        if split == "all":
            return InstanceFolder(root).samples()
        raise ValueError(
            f"{root}: one instance folder without splits (images/ and instances/ at its top); read it with "
            f"split 'all', or put split {split!r} in {root / split}/images and {root / split}/instances"
        )
    splits = sorted(p.name for p in root.iterdir() if (p / "images").is_dir())
    raise ValueError(
        f"{root}: no {split}/images/ (the instance folder layout: <split>/images/<stem>.<ext> and "
        f"<split>/instances/<stem>.png)" + (f"; splits here: {splits}" if splits else "")
    )


@register(INSTANCE_FORMATS, "pennfudan")
def _pennfudan_split(root: Path, split: str) -> list[InstanceSample]:
    """Penn-Fudan as distributed (`PennFudan`): splits train, val (every fifth image) and all."""
    return PennFudan(root, split).samples()


def instance_dataset(root: str | Path, format: str, split: str = "val") -> list[InstanceSample]:
    """The instance samples of one split of the dataset folder `root` in `format` (a name of
    `INSTANCE_FORMATS`: coco, folder or pennfudan); ValueError for an unknown format, a missing
    folder, a split the folder lacks, or a split without images."""
    reader = lookup(INSTANCE_FORMATS, format, "dataset format")
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root}: no such folder")
    samples = reader(root, split)
    if not samples:
        raise ValueError(f"{root} ({format}, split {split!r}): no images with instance labels")
    return samples


# COCO's object sizes by area in pixels: small below 32^2, medium below 96^2, large from 96^2
COCO_SIZES: dict[str, tuple[float, float]] = {
    "small": (0, 32**2),
    "medium": (32**2, 96**2),
    "large": (96**2, float("inf")),
}


def coco_size(mask: np.ndarray) -> str:
    """small, medium or large: COCO's size of an object, by its mask's pixel count at the image's
    resolution (COCO itself uses the annotation's polygon area; the two differ by a boundary)."""
    area = int(np.count_nonzero(mask))
    return next(name for name, (low, high) in COCO_SIZES.items() if low <= area < high)
