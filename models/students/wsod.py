"""The weakly supervised detector WeakSAM trains on its proposals (paper 004, Sec. 3.2):
WSDDN (Bilen & Vedaldi 2016) with OICR's online instance classifier refinement (Tang et al. 2017),
and MIST's seed rule (Ren et al. 2020) as an option.

- Features: a registered student's backbone (`models.students.semantic`), the last stage at stride 16
  (dilated), RoIs pooled by `torchvision.ops.roi_align` to `roi_size` x `roi_size`, two FC layers.
- WSDDN (Eq. 1-2 of WSDDN): a classification stream softmax over classes and a detection stream
  softmax over proposals, multiplied: RxC proposal scores whose sum over proposals is the image
  score (clamped to (0, 1)); the loss is binary cross-entropy with the tags.
- OICR: K refinement branches, each an Rx(C+1) classifier (the last column is background). The
  targets of branch k come from the scores of branch k-1 (branch 0: WSDDN's): `refinement_targets`.
  The loss is the weighted cross-entropy mean over proposals.

`refinement_targets` and `select_seeds` are pure (tests script them).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import box_iou, roi_align

from models.io import load_checkpoint, load_weights, save_checkpoint
from models.students.semantic import build_student

SEED_RULES = ("oicr", "mist")
CHECKPOINT_KIND = "wsod"
CONFIG_KEYS = ("student", "num_classes", "refinements", "hidden", "roi_size")


def select_seeds(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    rule: str = "oicr",
    top_fraction: float = 0.15,
    seed_iou: float = 0.2,
) -> torch.Tensor:
    """One class's seed proposals from its scores (R): `oicr` the single top proposal; `mist` the
    top `top_fraction` of proposals by score, kept greedily when their IoU with every seed already
    kept is below `seed_iou` (MIST's Algorithm 1). Returns seed indices, best first."""
    if rule == "oicr":
        return scores.argmax().reshape(1)
    if rule != "mist":
        raise ValueError(f"seed rule {rule!r} unknown; choose one of {SEED_RULES}")
    order = torch.argsort(scores, descending=True, stable=True)
    top = order[: max(1, round(top_fraction * len(scores)))]
    kept: list[int] = []
    for i in top.tolist():
        if not kept or bool((box_iou(boxes[i : i + 1], boxes[kept]) < seed_iou).all()):
            kept.append(i)
    return torch.as_tensor(kept, dtype=torch.long, device=scores.device)


def refinement_targets(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    tags: Sequence[int],
    fg_iou: float = 0.5,
    rule: str = "oicr",
    top_fraction: float = 0.15,
    seed_iou: float = 0.2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """OICR's supervision of the next branch from the previous branch's RxC foreground scores.

    Every tagged class c picks seeds (`select_seeds`); each proposal takes the seed it overlaps
    most: IoU >= fg_iou labels it c, below it background (label C); its weight is that seed's
    score, so uncertain seeds teach less. Returns (labels R long, weights R)."""
    r, c = scores.shape
    seed_boxes, seed_classes, seed_scores = [], [], []
    for t in sorted({int(t) for t in tags}):
        idx = select_seeds(boxes, scores[:, t], rule, top_fraction, seed_iou)
        seed_boxes.append(boxes[idx])
        seed_classes += [t] * len(idx)
        seed_scores.append(scores[idx, t])
    if not seed_classes:
        return torch.full((r,), c, dtype=torch.long, device=scores.device), torch.zeros(
            r, device=scores.device
        )
    overlap = box_iou(boxes, torch.cat(seed_boxes))  # RxS
    best_iou, best = overlap.max(1)
    classes = torch.as_tensor(seed_classes, device=best.device)[best]
    labels = torch.where(best_iou >= fg_iou, classes, torch.full_like(classes, c))
    return labels, torch.cat(seed_scores)[best].detach()


class WSODHead(nn.Module):
    """Backbone + RoI features + WSDDN + K OICR branches.

    forward(images Bx3xHxW normalised, proposals: a list of B tensors, image b's R_b x 4 boxes
    (x0, y0, x1, y1) in input pixels, on the images' device) -> per image (WSDDN's R_b x C
    proposal scores, [K branch logits R_b x (C+1)])."""

    def __init__(
        self, student: str, num_classes: int, refinements: int = 3, hidden: int = 512, roi_size: int = 7
    ) -> None:
        super().__init__()
        encoder = build_student(student, num_classes).encoder
        encoder.make_dilated(16)
        self.encoder, self.student = encoder, student
        self.num_classes, self.refinements, self.roi_size = num_classes, refinements, roi_size
        channels = encoder.out_channels[-1]
        self.fc = nn.Sequential(
            nn.Flatten(),
            nn.Linear(channels * roi_size * roi_size, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
        )
        self.cls_stream = nn.Linear(hidden, num_classes)
        self.det_stream = nn.Linear(hidden, num_classes)
        self.branches = nn.ModuleList(nn.Linear(hidden, num_classes + 1) for _ in range(refinements))

    def forward(
        self, images: torch.Tensor, proposals: list[torch.Tensor]
    ) -> list[tuple[torch.Tensor, list[torch.Tensor]]]:
        features = self.encoder(images)[-1]
        scale = features.shape[-1] / images.shape[-1]
        pooled = roi_align(
            features, [p.float() for p in proposals], self.roi_size, scale, sampling_ratio=2, aligned=True
        )
        x = self.fc(pooled)
        out, start = [], 0
        for p in proposals:
            h = x[start : start + len(p)]
            start += len(p)
            wsddn = self.cls_stream(h).softmax(1) * self.det_stream(h).softmax(0)
            out.append((wsddn, [branch(h) for branch in self.branches]))
        return out


def wsod_losses(
    outputs: tuple[torch.Tensor, list[torch.Tensor]],
    boxes: torch.Tensor,
    tags: Sequence[int],
    num_classes: int,
    rule: str = "oicr",
    fg_iou: float = 0.5,
) -> dict[str, torch.Tensor]:
    """One image's losses: WSDDN's multi-label BCE + each OICR branch's weighted cross-entropy."""
    wsddn, branches = outputs
    target = torch.zeros(num_classes, device=wsddn.device)
    target[[int(t) for t in tags]] = 1.0
    image_scores = wsddn.sum(0).clamp(1e-6, 1 - 1e-6)
    terms = {"wsddn": F.binary_cross_entropy(image_scores, target)}
    previous = wsddn.detach()
    refine = torch.zeros((), device=wsddn.device)
    for logits in branches:
        labels, weights = refinement_targets(boxes, previous, tags, fg_iou, rule)
        refine = refine + (weights * F.cross_entropy(logits, labels, reduction="none")).mean()
        previous = logits.detach().softmax(1)[:, :num_classes]
    terms["oicr"] = refine
    terms["total"] = terms["wsddn"] + terms["oicr"]
    return terms


def detection_scores(outputs: tuple[torch.Tensor, list[torch.Tensor]]) -> torch.Tensor:
    """RxC class scores of the proposals at test time: the mean of the refinement branches'
    foreground probabilities (OICR's inference), WSDDN's scores when there are no branches."""
    wsddn, branches = outputs
    if not branches:
        return wsddn
    c = wsddn.shape[1]
    return torch.stack([b.softmax(1)[:, :c] for b in branches]).mean(0)


def save_wsod(path, head: WSODHead, extra: dict | None = None) -> None:
    """A `wsod` checkpoint: config {student, num_classes, refinements, hidden, roi_size}, the state
    dict, `extra` as metadata (base scale, seed rule), written atomically."""
    config = {
        "student": head.student,
        "num_classes": head.num_classes,
        "refinements": head.refinements,
        "hidden": head.fc[1].out_features,
        "roi_size": head.roi_size,
    }
    save_checkpoint(path, CHECKPOINT_KIND, config, head.state_dict(), extra)


def load_wsod(path) -> tuple[WSODHead, dict]:
    """The WSOD head a checkpoint describes (eval mode) and its metadata with the config's fields;
    errors name the file."""
    checkpoint = load_checkpoint(path, CHECKPOINT_KIND, "WSOD checkpoint")
    config = checkpoint.config
    head = WSODHead(
        config["student"],
        int(config["num_classes"]),
        int(config["refinements"]),
        int(config["hidden"]),
        int(config["roi_size"]),
    )
    head = load_weights(head, checkpoint.weights, path, "the WSOD head")
    return head, checkpoint.metadata | config
