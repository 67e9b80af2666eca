"""Training data: images with weak labels (and optional dense ground truth), and batches of views.

Everything a batch needs is derived from (seed, iteration, image index), so a run resumed from a
checkpoint sees exactly the batches an uninterrupted run would.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from rich.progress import track

from models.engine import read_image
from models.engine.validation import list_images
from models.io import UNLABELED, read_label_png
from models.labels.schema import WeakLabels, load_weak_labels
from models.runtime.device import to_device
from training.augment import View, random_view, strong_augment
from training.datasets import CamVid
from training.protocols import derive


@dataclass
class WeakDataset:
    """In-memory images (HxWx3 uint8), their weak labels and optional dense ground truth."""

    stems: list[str]
    images: list[np.ndarray]
    weak: list[WeakLabels]
    gt: list[np.ndarray | None]
    ignore_index: int | None = None
    _weak_maps: list[np.ndarray] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        if not (len(self.stems) == len(self.images) == len(self.weak) == len(self.gt)):
            raise ValueError("stems, images, weak labels and ground truth must have the same length")
        if not self.stems:
            raise ValueError("the dataset is empty")
        self._weak_maps = [w.sparse_map() for w in self.weak]

    def __len__(self) -> int:
        return len(self.stems)

    def weak_map(self, index: int) -> np.ndarray:
        return self._weak_maps[index]

    def gt_map(self, index: int) -> np.ndarray:
        """Dense GT with the ignore index turned into 255 (all 255 when there is none)."""
        gt = self.gt[index]
        if gt is None:
            return np.full(self.images[index].shape[:2], UNLABELED, np.uint8)
        return (
            np.where(gt == self.ignore_index, UNLABELED, gt).astype(np.uint8)
            if self.ignore_index is not None
            else gt
        )

    @classmethod
    def from_camvid(
        cls,
        root: str | Path,
        split: str,
        kind: str | None,
        seed: int = 0,
        limit: int | None = None,
        quiet: bool = True,
    ) -> WeakDataset:
        """CamVid with weak labels derived by protocol `kind` (None: no weak labels, GT only)."""
        ds = CamVid(Path(root), split)
        samples = ds.samples()[:limit]
        stems, images, weak, gts = [], [], [], []
        for s in track(samples, description=f"load CamVid {split}", disable=quiet):
            gt = read_label_png(s.label)
            img = read_image(s.image)
            stems.append(s.stem)
            images.append(img)
            gts.append(gt)
            weak.append(derive(kind, gt, ds.ignore_index, seed, s.stem) if kind else WeakLabels(*gt.shape))
        return cls(stems, images, weak, gts, ds.ignore_index)

    @classmethod
    def from_folders(
        cls,
        images: str | Path,
        weak: str | Path | None,
        gt: str | Path | None = None,
        ignore_index: int | None = None,
        limit: int | None = None,
    ) -> WeakDataset:
        """The generic layout: images/<stem>.*, weak/<stem>.json|png, optional gt/<stem>.png.

        `weak=None` (a validation set): no weak labels are read, every image gets an empty set."""
        paths = list(list_images(images).items())[:limit]
        stems, arrays, labels, gts = [], [], [], []
        for stem, path in paths:
            img = read_image(path)
            stems.append(stem)
            arrays.append(img)
            labels.append(load_weak_labels(weak, stem, img.shape[:2]) if weak else WeakLabels(*img.shape[:2]))
            gt_path = Path(gt) / f"{stem}.png" if gt else None
            gts.append(read_label_png(gt_path) if gt_path and gt_path.exists() else None)
        return cls(stems, arrays, labels, gts, ignore_index)


@dataclass
class Batch:
    indices: list[int]
    views: list[View]
    weak_images: torch.Tensor  # Bx3xhxw uint8
    strong_images: torch.Tensor  # Bx3xhxw uint8
    weak_labels: torch.Tensor  # Bxhxw int64, 255 unlabeled
    gt_labels: torch.Tensor  # Bxhxw int64, 255 unlabeled / ignored

    def to(self, device: torch.device) -> Batch:
        """The batch's tensors on `device` (pinned, non-blocking copies on CUDA; the CPU's unchanged)."""
        return Batch(
            self.indices,
            self.views,
            *(
                to_device(t, device)
                for t in (self.weak_images, self.strong_images, self.weak_labels, self.gt_labels)
            ),
        )


def batch_indices(n: int, batch_size: int, iteration: int, seed: int) -> list[int]:
    """The images of one iteration: walk a fresh seeded permutation each epoch."""
    per_epoch = max(1, n // batch_size)
    epoch, step = divmod(iteration, per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(n)
    return [int(i) for i in order[step * batch_size : (step + 1) * batch_size]]


def make_batch(
    ds: WeakDataset,
    indices: list[int],
    iteration: int,
    seed: int,
    crop: tuple[int, int],
    base_scale: float,
    scale_range: tuple[float, float] = (0.75, 1.25),
) -> Batch:
    views, weak_imgs, strong_imgs, weak_lbl, gt_lbl = [], [], [], [], []
    for idx in indices:
        rng = np.random.default_rng([seed, iteration, idx])
        view = random_view(ds.images[idx].shape[:2], crop, rng, base_scale, scale_range)
        image = view.image_to_view(ds.images[idx])
        views.append(view)
        weak_imgs.append(image)
        strong_imgs.append(strong_augment(image, rng))
        weak_lbl.append(view.labels_to_view(ds.weak_map(idx)))
        gt_lbl.append(view.labels_to_view(ds.gt_map(idx)))

    def stack(images: list[np.ndarray]) -> torch.Tensor:
        return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()

    def labels(maps: list[np.ndarray]) -> torch.Tensor:
        return torch.from_numpy(np.stack(maps)).long()

    return Batch(indices, views, stack(weak_imgs), stack(strong_imgs), labels(weak_lbl), labels(gt_lbl))
