"""RoI drop regularisation (WeakSAM, paper 004, Eq. 1-2) for retraining a Faster R-CNN on PGT.

Noisy pseudo boxes show up as RoIs with large losses. Eq. 1: the drop signal of RoI i is
d_i = 1 when l_i^cls <= tau_cls AND l_i^reg <= tau_reg, else 0; Eq. 2: the loss sums d_i-weighted
per-RoI losses (here divided by the number of sampled RoIs, dropped ones included, as torchvision's
mean is). So a RoI counts only while both of its losses stay under their thresholds. The
authors' code (`rule="code"`) drops a RoI only when BOTH losses exceed their thresholds. The
paper's best thresholds are tau_cls 4.0 and tau_reg 1.0.

`RoIDropRoIHeads` is torchvision's `RoIHeads` with this loss in training (box losses only: a
Mask or Keypoint R-CNN's extra branches are not run); `with_roi_drop` puts it into any torchvision
Faster R-CNN. At inference the heads are torchvision's, unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.models.detection.roi_heads import RoIHeads

ROI_DROP_RULES = ("paper", "code")


def roi_keep(
    cls_loss: torch.Tensor,
    reg_loss: torch.Tensor,
    tau_cls: float = 4.0,
    tau_reg: float = 1.0,
    rule: str = "paper",
) -> torch.Tensor:
    """Eq. 1: per-RoI losses N, N -> the drop signal d (N float, 1 = the RoI counts)."""
    if rule == "paper":
        keep = (cls_loss <= tau_cls) & (reg_loss <= tau_reg)
    elif rule == "code":
        keep = ~((cls_loss > tau_cls) & (reg_loss > tau_reg))
    else:
        raise ValueError(f"roi drop rule {rule!r} unknown; choose one of {ROI_DROP_RULES}")
    return keep.float()


def per_roi_losses(
    class_logits: torch.Tensor,
    box_regression: torch.Tensor,
    labels: torch.Tensor,
    regression_targets: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fast R-CNN's two losses per RoI: NxK logits, Nx(K*4) deltas, N labels (0 = background),
    Nx4 targets -> (cross-entropy N, smooth-L1 N summed over the 4 deltas of the RoI's class, 0 for
    background RoIs). Their means over N are torchvision's `fastrcnn_loss`."""
    cls = F.cross_entropy(class_logits, labels, reduction="none")
    n = class_logits.shape[0]
    deltas = box_regression.reshape(n, -1, 4)[torch.arange(n, device=labels.device), labels]
    reg = F.smooth_l1_loss(deltas, regression_targets, beta=1 / 9, reduction="none").sum(1)
    return cls, reg * (labels > 0).float()


class RoIDropRoIHeads(RoIHeads):
    """torchvision's RoIHeads whose box losses drop RoIs by Eq. 1-2 while training (Faster R-CNN:
    no mask or keypoint branch); unchanged in eval mode."""

    tau_cls: float = 4.0
    tau_reg: float = 1.0
    rule: str = "paper"
    last_kept_fraction: float = 1.0  # the share of RoIs the last training step kept (for logs)

    def forward(self, features, proposals, image_shapes, targets=None):
        if not self.training:
            return super().forward(features, proposals, image_shapes, targets)
        proposals, _, labels, regression_targets = self.select_training_samples(proposals, targets)
        box_features = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        class_logits, box_regression = self.box_predictor(box_features)
        labels, regression_targets = torch.cat(labels), torch.cat(regression_targets)
        cls, reg = per_roi_losses(class_logits, box_regression, labels, regression_targets)
        keep = roi_keep(cls.detach(), reg.detach(), self.tau_cls, self.tau_reg, self.rule)
        self.last_kept_fraction = float(keep.mean())
        n = max(len(labels), 1)
        losses = {"loss_classifier": (keep * cls).sum() / n, "loss_box_reg": (keep * reg).sum() / n}
        return [], losses


def with_roi_drop(model: torch.nn.Module, tau_cls: float = 4.0, tau_reg: float = 1.0, rule: str = "paper"):
    """A torchvision Faster R-CNN with its RoI heads trained under RoI drop (same weights)."""
    if rule not in ROI_DROP_RULES:
        raise ValueError(f"roi drop rule {rule!r} unknown; choose one of {ROI_DROP_RULES}")
    heads = model.roi_heads
    heads.__class__ = RoIDropRoIHeads
    heads.tau_cls, heads.tau_reg, heads.rule = tau_cls, tau_reg, rule
    return model
