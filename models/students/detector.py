"""The detector WeakSAM retrains on its pseudo ground truth (paper 004, Sec. 3.2, "+ Retrain").

The paper retrains a Faster R-CNN (ResNet-50) on the adaptive PGT under RoI drop; its detections
are WeakSAM's WSOD result (Table 1). Here it is torchvision's Faster R-CNN with a MobileNetV3-Large
FPN backbone from random weights (nothing is downloaded; a size chosen for a CPU, not the
paper's backbone):

- `faster_rcnn`: the network; label 0 is background, label c + 1 is class c (the COCO category id
  `sesam weaksam instances` writes for class c);
- `save_detector` / `load_detector`: the `detector` checkpoint `sesam weaksam retrain` writes
  (`detector.pt`: config num_classes and the input sizes; metadata the training settings and the
  training file's categories; weights);
- `detect`: one image's detections as (boxes, scores, class ids), on the model's device.

`training.weaksam_eval` scores a checkpoint (box AP50, CorLoc); `models.labels.weaksam.labeler` takes its
detections as the boxes of the pseudo instances (`scorer: detector`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.io import load_checkpoint, load_weights, save_checkpoint

CHECKPOINT_KIND = "detector"
SCORE_FLOOR = 0.001  # inference: torchvision's default floor is 0.05; AP and Algorithm 2 want low scores too
MAX_DETECTIONS = 100  # per image and class (COCO's AP counts at most 100 per image and category)


def faster_rcnn(
    num_classes: int, min_size: int = 320, max_size: int = 512, score_floor: float = SCORE_FLOOR
) -> torch.nn.Module:
    """Faster R-CNN, MobileNetV3-Large FPN, random weights, `num_classes` + 1 outputs (0 =
    background). Images are resized so the shorter side is `min_size` (the longer at most
    `max_size`). At inference detections below `score_floor` are dropped and none for the cap:
    torchvision's 100 per image (over all classes) lets the classes that score highest crowd out
    the one asked for; `detect` keeps 100 per class instead."""
    from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_fpn

    model = fasterrcnn_mobilenet_v3_large_fpn(
        weights=None,
        weights_backbone=None,
        num_classes=num_classes + 1,
        min_size=min_size,
        max_size=max_size,
    )
    model.roi_heads.score_thresh = score_floor
    model.roi_heads.detections_per_img = model.rpn._post_nms_top_n["testing"] * num_classes  # all of them
    return model


def save_detector(
    path: str | Path,
    model: torch.nn.Module,
    num_classes: int,
    settings: dict[str, Any],
    categories: list[dict[str, Any]] | None = None,
) -> None:
    """`detector.pt`, a `detector` checkpoint written atomically: config {num_classes, min_size,
    max_size} (the sizes from `settings`, 320 and 512 without them), metadata {settings,
    categories}; the weights are stored on the CPU whatever device trained them."""
    config = {"num_classes": int(num_classes)} | _input_sizes(settings)
    weights = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    metadata = {"settings": settings, "categories": list(categories or [])}
    save_checkpoint(path, CHECKPOINT_KIND, config, weights, metadata)


def load_detector(path: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """The detector a `detector.pt` describes, in eval mode on `device`, and its metadata with the
    config's fields; errors name the file."""
    checkpoint = load_checkpoint(path, CHECKPOINT_KIND, "detector checkpoint")
    # files from before version 1 kept the input sizes only in their settings
    config = _input_sizes(checkpoint.metadata.get("settings")) | checkpoint.config
    model = faster_rcnn(int(config["num_classes"]), int(config["min_size"]), int(config["max_size"]))
    model = load_weights(model, checkpoint.weights, path, "the WeakSAM detector (Faster R-CNN)")
    return model.to(device), checkpoint.metadata | config


def _input_sizes(settings: dict[str, Any] | None) -> dict[str, int]:
    settings = settings or {}
    return {"min_size": int(settings.get("min_size", 320)), "max_size": int(settings.get("max_size", 512))}


def image_tensor(image: np.ndarray) -> torch.Tensor:
    """HxWx3 uint8 -> 3xHxW float in [0, 1] (what the detector reads; it normalises itself)."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255


@torch.inference_mode()
def detect(
    model: torch.nn.Module, image: np.ndarray, classes: Sequence[int] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image's detections on the model's device (torchvision's per-class NMS at 0.5): boxes
    Dx4 (x0, y0, x1, y1) in image pixels, scores D (descending) and class ids D (the network's
    label - 1), as numpy arrays; only `classes` when given, at most `MAX_DETECTIONS` per class."""
    device = next(model.parameters()).device
    model.eval()
    out = model([image_tensor(image).to(device)])[0]
    boxes = out["boxes"].float().cpu().numpy()
    scores = out["scores"].float().cpu().numpy()
    labels = (out["labels"] - 1).cpu().numpy().astype(int)
    keep = np.ones(len(labels), bool) if classes is None else np.isin(labels, list(classes))
    rank = np.zeros(len(labels), int)  # each detection's place among its class's (scores descend)
    for c in np.unique(labels):
        rank[labels == c] = np.arange(int((labels == c).sum()))
    keep &= rank < MAX_DETECTIONS
    return boxes[keep], scores[keep], labels[keep]
