"""WeakSAM's retrained detector (Sec. 3.2, Eq. 1-2) as a recipe of the shared loop (`training.loop`):
a torchvision Faster R-CNN on the pseudo boxes of a COCO file, under RoI drop.

Each step draws its images from (seed, iteration); the detector is built on the CPU from the seed,
then moved to `device`; fp32 on every device. `sesam weaksam retrain` runs it
(`training.weaksam.retrain_detector`): `out/detector.pt`, `out/summary.json`, resumable from
`out/last.pt` (`iterations`, `checkpoint_every` and `device` may change).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.config import setting
from models.engine import read_image
from models.runtime.device import DEVICE_HELP, check_device_name, resolve_device
from models.students.detector import faster_rcnn, image_tensor, save_detector
from training.loop import ModelOptimizerRecipe


@dataclass
class DetectorConfig:
    """Retraining a torchvision Faster R-CNN on PGT boxes with RoI drop (WeakSAM's Sec. 3.2, Eq. 1-2);
    sizes and schedule are budget choices for a CPU (the paper trains a ResNet-50 Faster R-CNN
    with the fully supervised schedule, App. H)."""

    iterations: int = setting(500, help="optimisation steps (may grow on resume)")
    batch_size: int = setting(2, help="images per step")
    lr: float = setting(0.01, help="SGD learning rate (momentum 0.9)")
    weight_decay: float = setting(1e-4, help="SGD weight decay")
    min_size: int = setting(320, help="Faster R-CNN's shorter image side")
    max_size: int = setting(512, help="Faster R-CNN's longer side cap")
    roi_drop: str = setting("paper", help="RoI drop rule: paper, code, or none")
    tau_cls: float = setting(4.0, help="RoI drop: classification-loss threshold (the paper's best)")
    tau_reg: float = setting(1.0, help="RoI drop: regression-loss threshold (the paper's best)")
    seed: int = setting(0, help="initial weights and image sampling")
    checkpoint_every: int = setting(50, help="write last.pt every N steps (and at the end)")
    device: str = setting("auto", help=DEVICE_HELP)

    def validate(self, source: str = "detector settings") -> None:
        check_device_name(self.device, f"{source}: device")
        if self.roi_drop not in ("paper", "code", "none"):
            raise ValueError(f"{source}: roi_drop {self.roi_drop!r} unknown; choose paper, code or none")
        if min(self.iterations, self.batch_size, self.checkpoint_every) < 1:
            raise ValueError(f"{source}: iterations, batch_size and checkpoint_every must be >= 1")


def build_detector(num_classes: int, cfg: DetectorConfig) -> torch.nn.Module:
    """Faster R-CNN (MobileNetV3-Large FPN, random weights: nothing is downloaded) with RoI drop,
    on the CPU (`models.students.detector.faster_rcnn`)."""
    from models.students.roi_drop import with_roi_drop

    model = faster_rcnn(num_classes, cfg.min_size, cfg.max_size)
    if cfg.roi_drop != "none":
        model = with_roi_drop(model, cfg.tau_cls, cfg.tau_reg, cfg.roi_drop)
    return model


class DetectorRecipe(ModelOptimizerRecipe):
    """The detector on the boxes of `coco_root/annotations/instances_<split>.json` (category id
    c + 1 = class c, as `training.weaksam.pseudo_instances` writes; boxes under 1 pixel wide or high
    are left out, `iscrowd` ones are not), the images in `coco_root/<split>/`."""

    task = "detector"

    loss_terms = ("total", "rois_kept")
    score_name = ""  # no validation
    rerun_keeps = ("final_loss", "mean_rois_kept", "seconds", "seconds_per_iter")

    def __init__(self, cfg: DetectorConfig, coco_root: Path, split: str) -> None:
        cfg.validate()
        self.read_by: dict[str, frozenset[str]] = {}  # one mode: it reads every setting
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        path = coco_root / "annotations" / f"instances_{split}.json"
        if not path.is_file():
            raise ValueError(f"{path}: no such COCO file (run sesam weaksam instances)")
        coco = json.loads(path.read_text())
        self.num_classes = max([c["id"] for c in coco["categories"]] or [1])
        by_image: dict[int, list[dict]] = {}
        for a in coco["annotations"]:
            by_image.setdefault(a["image_id"], []).append(a)
        self.items: list[tuple[Path, torch.Tensor, torch.Tensor]] = []
        for im in coco["images"]:
            anns = [a for a in by_image.get(im["id"], []) if a["bbox"][2] >= 1 and a["bbox"][3] >= 1]
            if anns:
                boxes = torch.tensor(
                    [[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)], dtype=torch.float32
                )
                labels = torch.tensor([a["category_id"] for a in anns], dtype=torch.int64)
                self.items.append((coco_root / split / im["file_name"], boxes, labels))
        if not self.items:
            raise ValueError(f"{path}: no boxes to train on")
        self.categories = [
            {"id": int(c["id"]), "name": str(c.get("name", c["id"]))} for c in coco["categories"]
        ]
        torch.manual_seed(cfg.seed)
        self.model = build_detector(self.num_classes, cfg).to(self.device)
        self.optimizer = torch.optim.SGD(
            self.model.parameters(), lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay
        )
        self.settings = asdict(cfg) | {"num_classes": self.num_classes, "coco": str(path)}
        self.losses: list[float] = []  # this call's steps
        self.kept: list[float] = []  # the share of RoIs each of this call's steps kept

    def step(self, iteration: int) -> dict[str, float]:
        c, device = self.cfg, self.device
        rng = np.random.default_rng([c.seed, iteration])
        items = self.items
        chosen = [items[i] for i in rng.choice(len(items), min(c.batch_size, len(items)), replace=False)]
        images = [image_tensor(read_image(p)).to(device) for p, _, _ in chosen]
        targets = [{"boxes": b.to(device), "labels": lab.to(device)} for _, b, lab in chosen]
        self.model.train()
        losses = self.model(images, targets)
        total = sum(losses.values())
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.optimizer.step()
        self.losses.append(float(total.detach()))
        self.kept.append(float(getattr(self.model.roi_heads, "last_kept_fraction", 1.0)))
        return {"total": self.losses[-1], "rois_kept": self.kept[-1]}

    def summary(self, final: dict[str, Any]) -> dict[str, Any]:
        return {
            "images": len(self.items),
            "final_loss": self.losses[-1] if self.losses else None,
            "mean_rois_kept": float(np.mean(self.kept)) if self.kept else None,
            "device": str(self.device),
            "settings": self.settings,
        }

    def save_outputs(self, out: Path, final: dict[str, Any]) -> None:
        save_detector(out / "detector.pt", self.model, self.num_classes, self.settings, self.categories)
