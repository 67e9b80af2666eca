"""Datasets: where images and dense labels live on disk."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.engine.validation import IMAGE_EXTENSIONS, list_images
from models.io import read_label_png

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
class Sample:
    stem: str
    image: Path
    label: Path | None


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
class InstanceSample:
    """One image and its ground-truth instances: N masks (HxW bool) with their class ids."""

    stem: str
    image: Path
    masks: list[np.ndarray]
    class_ids: list[int]


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
        for stem in self.stems():
            ids = read_label_png(self.root / "PedMasks" / f"{stem}_mask.png")
            masks = [ids == k for k in np.unique(ids) if k != 0]
            out.append(InstanceSample(stem, self.root / "PNGImages" / f"{stem}.png", masks, [0] * len(masks)))
        return out


@dataclass(frozen=True)
class CocoInstances:
    """A COCO instances file (`annotations/instances_<split>.json`, images in `<split>/`), read with
    pycocotools: polygons and RLE decoded to masks; crowd regions are left out (they are not one
    object)."""

    root: Path
    split: str = "val2017"

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))
        if not self.annotation_file.is_file():
            raise ValueError(f"{self.annotation_file}: no such COCO annotation file")

    @property
    def annotation_file(self) -> Path:
        return self.root / "annotations" / f"instances_{self.split}.json"

    def samples(self) -> list[InstanceSample]:
        import contextlib
        import io

        from pycocotools.coco import COCO

        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            coco = COCO(str(self.annotation_file))
        out = []
        for image_id in sorted(coco.getImgIds()):
            info = coco.loadImgs(image_id)[0]
            anns = [a for a in coco.loadAnns(coco.getAnnIds(imgIds=image_id, iscrowd=False)) if a["area"] > 0]
            masks = [coco.annToMask(a).astype(bool) for a in anns]
            keep = [i for i, m in enumerate(masks) if m.any()]
            out.append(
                InstanceSample(
                    Path(info["file_name"]).stem,
                    self.root / self.split / info["file_name"],
                    [masks[i] for i in keep],
                    [int(anns[i]["category_id"]) for i in keep],
                )
            )
        return out
