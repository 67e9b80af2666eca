"""WeakSAM's WSOD head (OICR / MIST on WeakSAM-proposals) as a recipe of the shared loop
(`training.loop`): it learns from image tags on every image with a non-empty proposals file.

Each step draws its images and proposal subsets from (seed, iteration); the head is built on the
CPU from the seed, then moved to `device`, so the random draws are the same everywhere; fp32 on
every device. `sesam weaksam train-wsod` runs it (`training.weaksam.train_wsod`): `out/wsod.pt`,
`out/summary.json`, resumable from `out/last.pt` (`iterations`, `checkpoint_every` and `device`
may change).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from models.config import setting
from models.engine import read_image
from models.engine.validation import list_images
from models.runtime.device import DEVICE_HELP, check_device_name, resolve_device
from models.students.semantic import normalize, pad_to_multiple
from models.students.wsod import SEED_RULES, WSODHead, save_wsod, wsod_losses
from training.loop import ModelOptimizerRecipe


@dataclass
class WSODConfig:
    """The WSOD head's training (OICR / MIST on WeakSAM-proposals); sizes are budget choices for a CPU,
    not the paper's (VGG-16 OICR / MIST)."""

    student: str = setting("fpn-mobilenetv2", help="the backbone: a registered semantic student's encoder")
    refinements: int = setting(3, help="OICR refinement branches K (OICR's 3)")
    hidden: int = setting(256, help="width of the two FC layers on the RoI features")
    seed_rule: str = setting("oicr", help="refinement seeds: oicr (top-1) or mist (top 15 %, IoU < 0.2)")
    iterations: int = setting(300, help="optimisation steps (may grow on resume)")
    batch_size: int = setting(2, help="images per step")
    lr: float = setting(1e-4, help="AdamW learning rate")
    weight_decay: float = setting(1e-4, help="AdamW weight decay")
    base_scale: float = setting(0.5, help="image scale for the backbone (proposals are scaled with it)")
    max_proposals: int = setting(300, help="proposals per image and step: a random subset beyond this")
    seed: int = setting(0, help="initial weights and image / proposal sampling")
    checkpoint_every: int = setting(50, help="write last.pt every N steps (and at the end)")
    device: str = setting("auto", help=DEVICE_HELP)

    def validate(self, source: str = "wsod settings") -> None:
        check_device_name(self.device, f"{source}: device")
        if self.seed_rule not in SEED_RULES:
            raise ValueError(f"{source}: seed_rule {self.seed_rule!r} unknown; choose one of {SEED_RULES}")
        if min(self.iterations, self.batch_size, self.max_proposals, self.checkpoint_every) < 1:
            raise ValueError(
                f"{source}: iterations, batch_size, max_proposals and checkpoint_every must be >= 1"
            )


def scaled(image: np.ndarray, scale: float) -> torch.Tensor:
    """HxWx3 uint8 -> 1x3xH'xW' float (0..255), resized by `scale` (bilinear)."""
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
    if scale != 1.0:
        h, w = image.shape[:2]
        x = F.interpolate(x, size=(round(h * scale), round(w * scale)), mode="bilinear", align_corners=False)
    return x


class WSODRecipe(ModelOptimizerRecipe):
    """The WSOD head on `images` and their proposal files (`proposals/<stem>.json`), `num_classes`
    tag classes; refuses a folder without proposals and tags out of range."""

    task = "wsod"

    loss_terms = ("total",)
    score_name = ""  # no validation
    rerun_keeps = ("final_loss", "seconds", "seconds_per_iter")

    def __init__(self, cfg: WSODConfig, images: Path, proposals: Path, num_classes: int) -> None:
        cfg.validate()
        self.read_by: dict[str, frozenset[str]] = {}  # one mode: it reads every setting
        self.cfg, self.num_classes = cfg, num_classes
        self.device = resolve_device(cfg.device)
        paths = list_images(images)
        records = {
            p.stem: json.loads(p.read_text()) for p in sorted(proposals.glob("*.json")) if p.stem in paths
        }
        self.records = {k: v for k, v in records.items() if v["boxes"]}
        if not self.records:
            raise ValueError(
                f"{proposals}: no proposal files for the images in {images} (run sesam weaksam proposals)"
            )
        bad = sorted({t for r in self.records.values() for t in r["tags"] if t >= num_classes})
        if bad:
            raise ValueError(f"{proposals}: tags {bad} are out of range for --num-classes {num_classes}")
        self.stems = sorted(self.records)
        self.pixels = {s: scaled(read_image(paths[s]), cfg.base_scale) for s in self.stems}
        torch.manual_seed(cfg.seed)
        self.model = WSODHead(cfg.student, num_classes, cfg.refinements, cfg.hidden).to(self.device)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.settings = asdict(cfg) | {"num_classes": num_classes}
        self.last_loss: float | None = None

    def step(self, iteration: int) -> dict[str, float]:
        c, device = self.cfg, self.device
        rng = np.random.default_rng([c.seed, iteration])
        stems = self.stems
        batch = [stems[i] for i in rng.choice(len(stems), min(c.batch_size, len(stems)), replace=False)]
        self.model.train()
        total = torch.zeros((), device=device)
        for stem in batch:
            rec = self.records[stem]
            boxes = torch.tensor(rec["boxes"], dtype=torch.float32)
            if len(boxes) > c.max_proposals:
                boxes = boxes[torch.from_numpy(rng.choice(len(boxes), c.max_proposals, replace=False))]
            boxes = boxes.to(device)
            x, _ = pad_to_multiple(normalize(self.pixels[stem].to(device)))
            outputs = self.model(x, [boxes * c.base_scale])[0]
            terms = wsod_losses(outputs, boxes, rec["tags"], self.num_classes, c.seed_rule)
            total = total + terms["total"] / len(batch)
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.optimizer.step()
        self.last_loss = float(total.detach())
        return {"total": self.last_loss}

    def summary(self, final: dict[str, Any]) -> dict[str, Any]:
        return {
            "images": len(self.stems),
            "final_loss": self.last_loss,
            "device": str(self.device),
            "settings": self.settings,
        }

    def save_outputs(self, out: Path, final: dict[str, Any]) -> None:
        save_wsod(
            out / "wsod.pt", self.model, {"base_scale": self.cfg.base_scale, "seed_rule": self.cfg.seed_rule}
        )
