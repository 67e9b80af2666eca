"""Losses and the EMA teacher update. Pure torch; no I/O."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.io import UNLABELED


def partial_ce(logits: torch.Tensor, target: torch.Tensor, class_balanced: bool = False) -> torch.Tensor:
    """Cross-entropy over labelled pixels only (255 ignored); 0 when none is labelled.

    logits BxCxHxW, target BxHxW. Plain: the mean over labelled pixels. `class_balanced`: the mean
    over the classes present in `target` of each class's mean pixel loss (weights 1 / pixel count),
    so a class that covers most labelled pixels (road, sky) counts as much as one that covers few.
    """
    labelled = target != UNLABELED
    if not labelled.any():
        return logits.sum() * 0.0
    if not class_balanced:
        return F.cross_entropy(logits, target, ignore_index=UNLABELED)
    counts = torch.bincount(target[labelled], minlength=logits.shape[1])[: logits.shape[1]]
    weight = (counts > 0).to(logits.dtype) / counts.clamp(min=1).to(logits.dtype)
    return F.cross_entropy(logits, target, weight=weight, ignore_index=UNLABELED)


def sesam_targets(
    weak: torch.Tensor, sam: torch.Tensor | None, pseudo: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split pixels by precedence weak > SAM > pseudo: each target holds its labels only where no
    higher-precedence label exists (255 elsewhere)."""
    taken = weak != UNLABELED
    if sam is not None:
        sam = torch.where(taken, torch.full_like(sam, UNLABELED), sam)
        taken = taken | (sam != UNLABELED)
    else:
        sam = torch.full_like(weak, UNLABELED)
    if pseudo is not None:
        pseudo = torch.where(taken, torch.full_like(pseudo, UNLABELED), pseudo)
    else:
        pseudo = torch.full_like(weak, UNLABELED)
    return weak, sam, pseudo


def sesam_loss(
    logits: torch.Tensor,
    weak: torch.Tensor,
    sam: torch.Tensor | None,
    pseudo: torch.Tensor | None,
    w_sam: float = 1.0,
    w_pseudo: float = 0.01,
    sam_class_balanced: bool = False,
) -> dict[str, torch.Tensor]:
    """L = L_weak + w_sam * L_SAM + w_pseudo * L_pseudo, each on its own pixels (precedence weak > SAM > pseudo).

    `sam_class_balanced` averages L_SAM per class first (see `partial_ce`); the paper's loss is the
    plain pixel mean."""
    weak_t, sam_t, pseudo_t = sesam_targets(weak, sam, pseudo)
    terms = {
        "weak": partial_ce(logits, weak_t),
        "sam": partial_ce(logits, sam_t, sam_class_balanced),
        "pseudo": partial_ce(logits, pseudo_t),
    }
    terms["total"] = terms["weak"] + w_sam * terms["sam"] + w_pseudo * terms["pseudo"]
    return terms


def ema_decay(alpha: float, iteration: int, warmup: bool = True) -> float:
    """The EMA decay at `iteration` (0-based): `alpha`, or with warm-up min(alpha, 1 - 1/(t + 1)), so
    the teacher averages the student's recent weights rather than its random initialisation."""
    return min(alpha, 1.0 - 1.0 / (iteration + 1)) if warmup else alpha


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, alpha: float) -> None:
    """teacher <- alpha * teacher + (1 - alpha) * student (parameters); buffers copied."""
    for t, s in zip(teacher.parameters(), student.parameters(), strict=True):
        t.mul_(alpha).add_(s.detach(), alpha=1 - alpha)
    for t, s in zip(teacher.buffers(), student.buffers(), strict=True):
        t.copy_(s)
