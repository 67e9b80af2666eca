"""Datasets: where images and dense labels live on disk."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

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
    """CamVid as laid out in shared/data/camvid: images/{split}/<stem>.jpg, labels/{split}/<stem>.png."""

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
        out = []
        for stem in self.stems():
            image = self.root / "images" / self.split / f"{stem}.jpg"
            label = self.root / "labels" / self.split / f"{stem}.png"
            out.append(Sample(stem, image, label if label.exists() else None))
        return out
