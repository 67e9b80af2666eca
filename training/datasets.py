"""Datasets: where images and dense labels live on disk."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from models.engine.validation import IMAGE_EXTENSIONS, list_images

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
