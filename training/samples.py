"""What a dataset hands out: a semantic sample (an image and its label PNG) and an instance sample
(an image and its masks). Below `training.datasets` and `training.coco`, which both make them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from models.engine.validation import read_image


@dataclass(frozen=True)
class Sample:
    stem: str
    image: Path
    label: Path | None


@dataclass(frozen=True)
class InstanceSample:
    """One image and its ground-truth instances: N masks (HxW bool) with their class ids
    (contiguous 0..C-1; a dataset maps them to its own ids, e.g. COCO category ids with gaps).

    `crowd`: masks of crowd regions (COCO `iscrowd`; AP ignores detections of the same class on
    them) and `crowd_class_ids` their classes (one per crowd mask); `crop`: (y0, x0, y1, x1) of the
    image file this sample is a tile of, None for the whole image; `image_id`: the id COCO files use.
    """

    stem: str
    image: Path
    masks: list[np.ndarray]
    class_ids: list[int]
    crowd: list[np.ndarray] = field(default_factory=list)
    crowd_class_ids: list[int] = field(default_factory=list)
    crop: tuple[int, int, int, int] | None = None
    image_id: int = 0

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) of the sample (of the tile when cropped); needs one mask or a crop."""
        if self.crop is not None:
            y0, x0, y1, x1 = self.crop
            return (y1 - y0, x1 - x0)
        if self.masks:
            return self.masks[0].shape
        if self.crowd:
            return self.crowd[0].shape
        return read_image(self.image).shape[:2]

    def load_image(self) -> np.ndarray:
        """HxWx3 uint8 (the tile when cropped)."""
        image = read_image(self.image)
        if self.crop is not None:
            y0, x0, y1, x1 = self.crop
            image = image[y0:y1, x0:x1]
        return np.ascontiguousarray(image)
