"""WISH's matching and losses (paper 002, Sec. 4.2-4.3), pure torch on tensors.

Per image, Q queries are matched to K weak instances by the Hungarian algorithm on

    Cost = alpha Cost_cls + beta Cost_prompt + gamma Cost_mask                       (Eq. 14)
    Cost_cls[i, j]    = -p_i(c_j)                                                   (Eq. 11)
    Cost_prompt[i, j] = KLD(Z_hat_i, Z_j)                                           (Eq. 12)
    Cost_mask[i, j]   = min_n d(M_hat_i, M_SAM^{j,n}),  n over SAM's 3 candidates   (Eq. 13)

with d Mask2Former's mask distance (sigmoid BCE + dice on points sampled uniformly, the same points
for every pair). Matched queries learn the class, the prompt latent and the candidate that won the
min; the others learn "no object" (L_seg, Eq. 15). L_cam (Eq. 17) classifies the image's tags from
the GAP of the CAM; L_self (Eq. 19) pulls each class's CAM towards the OR of the predicted masks of
that class. L_WISH = L_seg + L_cam + L_self (Eq. 20).

Choices the paper leaves open, each a setting of the recipe:
- the KLD's distributions: every 256-d token of a latent is read as the logits of a categorical
  distribution (softmax / `temperature`), KL(softmax(Z) || softmax(Z_hat)) summed over the 2 tokens;
- Cost_cls is Mask2Former's -probability, the loss its cross-entropy with "no object" weighted 0.1;
- d = BCE + dice with one weight (gamma = 5 for both, as Mask2Former weighs each 5);
- the mask loss samples points by uncertainty (Mask2Former: 3x oversampling, 75 % most uncertain);
- L_cam is a multi-label BCE (one image may carry several tags) rather than a softmax CE;
- L_self's target is the OR of the sigmoid > 0.5 masks of the queries whose argmax is c, detached,
  and the CAM is read through a sigmoid at the mask resolution.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from models.runtime.device import to_device

TOKENS = 2  # sparse tokens per prompt latent


@dataclass(frozen=True)
class Targets:
    """One image's weak instances: K classes, K prompt latents (Kx512, or None: no prompt term) and
    candidate masks KxNxHxW (N = 3 SAM candidates, or 1 ground-truth mask)."""

    classes: torch.Tensor
    prompts: torch.Tensor | None
    masks: torch.Tensor

    def __len__(self) -> int:
        return int(self.classes.numel())

    def to(self, device: torch.device) -> Targets:
        """These targets on `device` (host tensors are copied without blocking from pinned memory)."""
        prompts = None if self.prompts is None else to_device(self.prompts, device)
        return Targets(to_device(self.classes, device), prompts, to_device(self.masks, device))


@dataclass(frozen=True)
class Weights:
    cls: float = 2.0  # alpha
    prompt: float = 5.0  # beta
    mask: float = 5.0  # gamma (on BCE and on dice)
    no_object: float = 0.1  # the cross-entropy weight of "no object"


# -- distances ---------------------------------------------------------------------------------
def prompt_kld(pred: torch.Tensor, target: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """QxP predicted and KxP target latents -> QxK KL(softmax(Z_j) || softmax(Z_hat_i)) summed over
    the tokens (each 256 numbers of P = 2 x 256 is one distribution)."""
    q, k = pred.shape[0], target.shape[0]
    log_p = F.log_softmax(pred.reshape(q, TOKENS, -1) / temperature, -1)
    log_t = F.log_softmax(target.reshape(k, TOKENS, -1) / temperature, -1)
    t = log_t.exp()
    neg_entropy = (t * log_t).sum((1, 2))  # K
    return neg_entropy[None] - torch.einsum("itd,jtd->ij", log_p, t)


def point_sample(maps: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """NxHxW maps sampled (bilinear) at points NxPx2 or Px2 (x, y in [0, 1]) -> NxP."""
    if points.dim() == 2:
        points = points[None].expand(maps.shape[0], -1, -1)
    grid = (2 * points - 1)[:, :, None]  # NxPx1x2
    return F.grid_sample(maps[:, None].float(), grid, align_corners=False)[:, 0, :, 0]


def pairwise_mask_distance(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """QxP logits and MxP {0, 1} targets at the same points -> (BCE QxM, dice QxM), Mask2Former's
    matcher costs (mean BCE over points; dice 1 - (2 <s, t> + 1) / (sum s + sum t + 1))."""
    n = pred.shape[1]
    pos = F.binary_cross_entropy_with_logits(pred, torch.ones_like(pred), reduction="none")
    neg = F.binary_cross_entropy_with_logits(pred, torch.zeros_like(pred), reduction="none")
    bce = (pos @ target.T + neg @ (1 - target).T) / n
    s = pred.sigmoid()
    dice = 1 - (2 * s @ target.T + 1) / (s.sum(1)[:, None] + target.sum(1)[None] + 1)
    return bce, dice


# -- matching (Eq. 11-14) ----------------------------------------------------------------------
@dataclass(frozen=True)
class Match:
    queries: torch.Tensor  # M matched query indices
    targets: torch.Tensor  # M target indices
    candidates: torch.Tensor  # M: the SAM candidate n that attained the min in Eq. 13


def cost_matrix(
    class_logits: torch.Tensor,
    mask_logits: torch.Tensor,
    prompts: torch.Tensor | None,
    targets: Targets,
    points: torch.Tensor,
    weights: Weights = Weights(),
    temperature: float = 1.0,
    level: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The QxK matching cost (Eq. 14) and, per pair, the candidate that attained the min (Eq. 13).
    `level` fixes the candidate instead (the paper's Table 4 ablation). `prompts` None or
    targets.prompts None: no prompt term."""
    q, k = class_logits.shape[0], len(targets)
    cost_cls = -class_logits.softmax(-1)[:, targets.classes]  # Eq. 11
    n = targets.masks.shape[1]
    pred = point_sample(mask_logits, points)  # QxP
    tgt = point_sample(targets.masks.flatten(0, 1).float(), points)  # (K*N)xP
    bce, dice = pairwise_mask_distance(pred, tgt)
    per_candidate = (bce + dice).reshape(q, k, n)
    if level is not None:
        chosen = torch.full((q, k), level, dtype=torch.long, device=per_candidate.device)
        cost_mask = per_candidate[..., level]
    else:
        cost_mask, chosen = per_candidate.min(-1)  # Eq. 13
    cost = weights.cls * cost_cls + weights.mask * cost_mask
    if prompts is not None and targets.prompts is not None:
        cost = cost + weights.prompt * prompt_kld(prompts, targets.prompts, temperature)  # Eq. 12
    return cost, chosen


def hungarian(cost: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns of the minimum-cost assignment (scipy's linear_sum_assignment)."""
    return linear_sum_assignment(cost.detach().cpu().numpy())


@torch.no_grad()
def match(
    class_logits: torch.Tensor,
    mask_logits: torch.Tensor,
    prompts: torch.Tensor | None,
    targets: Targets,
    points: torch.Tensor,
    weights: Weights = Weights(),
    temperature: float = 1.0,
    level: int | None = None,
) -> Match:
    """Hungarian matching of one image's Q queries to its K targets."""
    if len(targets) == 0:
        empty = torch.zeros(0, dtype=torch.long, device=class_logits.device)
        return Match(empty, empty, empty)
    cost, chosen = cost_matrix(
        class_logits, mask_logits, prompts, targets, points, weights, temperature, level
    )
    rows, cols = hungarian(cost)
    dev = cost.device
    rows_t = torch.as_tensor(rows, dtype=torch.long, device=dev)
    cols_t = torch.as_tensor(cols, dtype=torch.long, device=dev)
    return Match(rows_t, cols_t, chosen[rows_t, cols_t])


# -- losses ------------------------------------------------------------------------------------
def uncertain_points(
    logits: torch.Tensor, count: int, oversample: float = 3.0, importance: float = 0.75, generator=None
) -> torch.Tensor:
    """Mask2Former's training points for M mask logits (MxHxW): oversample x count random points,
    the `importance` share of `count` with the smallest |logit| (most uncertain), the rest uniform.
    Returns MxPx2 in [0, 1]."""
    m = logits.shape[0]
    candidates = torch.rand(m, int(count * oversample), 2, generator=generator, device=logits.device)
    uncertainty = -point_sample(logits.detach(), candidates).abs()
    n_important = int(importance * count)
    idx = uncertainty.topk(n_important, dim=1).indices
    important = torch.gather(candidates, 1, idx[..., None].expand(-1, -1, 2))
    uniform = torch.rand(m, count - n_important, 2, generator=generator, device=logits.device)
    return torch.cat([important, uniform], 1)


def mask_losses(
    logits: torch.Tensor, targets: torch.Tensor, points: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed (over masks) sigmoid BCE and dice of M logits vs M targets at MxPx2 points."""
    pred = point_sample(logits, points)
    tgt = point_sample(targets.float(), points)
    bce = F.binary_cross_entropy_with_logits(pred, tgt, reduction="none").mean(1).sum()
    s = pred.sigmoid()
    dice = (1 - (2 * (s * tgt).sum(1) + 1) / (s.sum(1) + tgt.sum(1) + 1)).sum()
    return bce, dice


def seg_loss(
    class_logits: torch.Tensor,
    mask_logits: torch.Tensor,
    prompts: torch.Tensor | None,
    targets: list[Targets | None],
    matches: list[Match | None],
    num_points: int,
    weights: Weights = Weights(),
    temperature: float = 1.0,
    generator=None,
) -> dict[str, torch.Tensor]:
    """The terms of L_seg (Eq. 15; the caller weighs them) of one decoder layer over a batch: BxQx(C+1) classes, BxQxhxw masks, BxQxP
    prompts. An image whose targets are None (a tag image with no instance found yet) adds nothing.
    Mask and prompt terms are normalised by the number of matched instances (Mask2Former)."""
    num_classes = class_logits.shape[-1] - 1
    dev = class_logits.device
    class_weight = torch.ones(num_classes + 1, device=dev)
    class_weight[-1] = weights.no_object
    ce_terms, masks_pred, masks_tgt, kld = [], [], [], []
    zero = class_logits.sum() * 0
    for b, (tg, mt) in enumerate(zip(targets, matches)):
        if tg is None or mt is None:
            continue
        labels = torch.full((class_logits.shape[1],), num_classes, dtype=torch.long, device=dev)
        labels[mt.queries] = tg.classes[mt.targets]
        ce_terms.append(F.cross_entropy(class_logits[b], labels, weight=class_weight, reduction="sum"))
        ce_terms[-1] = ce_terms[-1] / class_weight[labels].sum()
        if len(mt.queries):
            masks_pred.append(mask_logits[b, mt.queries])
            masks_tgt.append(tg.masks[mt.targets, mt.candidates])
            if prompts is not None and tg.prompts is not None:
                kld.append(prompt_kld(prompts[b, mt.queries], tg.prompts[mt.targets], temperature).diagonal())
    if not ce_terms:
        return {"cls": zero, "bce": zero, "dice": zero, "prompt": zero}
    cls = torch.stack(ce_terms).mean()
    count = max(sum(len(m) for m in masks_pred), 1)
    if masks_pred:
        pred = torch.cat(masks_pred)
        tgt = torch.cat(masks_tgt)
        pts = uncertain_points(pred, num_points, generator=generator)
        bce, dice = mask_losses(pred, tgt, pts)
        bce, dice = bce / count, dice / count
    else:
        bce = dice = zero
    prompt = torch.cat(kld).sum() / count if kld else zero
    return {"cls": cls, "bce": bce, "dice": dice, "prompt": prompt}


def cam_loss(cam: torch.Tensor, tags: torch.Tensor) -> torch.Tensor:
    """L_cam (Eq. 16-17): BxCxhxw CAMs, BxC {0, 1} tags -> multi-label BCE on the GAP logits."""
    return F.binary_cross_entropy_with_logits(cam.mean((2, 3)), tags.float())


def class_masks(class_logits: torch.Tensor, mask_logits: torch.Tensor, num_classes: int) -> torch.Tensor:
    """M_hat_c for L_self: BxQx(C+1), BxQxhxw -> BxCxhxw {0, 1}, the OR of the binary masks
    (sigmoid > 0.5) of the queries whose highest class score is c ("no object" queries add none)."""
    top = class_logits.argmax(-1)  # BxQ
    onehot = F.one_hot(top, num_classes + 1)[..., :num_classes].float()  # BxQxC
    binary = (mask_logits > 0).float()
    return (torch.einsum("bqc,bqhw->bchw", onehot, binary) > 0).float()


def self_loss(cam: torch.Tensor, class_logits: torch.Tensor, mask_logits: torch.Tensor) -> torch.Tensor:
    """L_self (Eq. 19): BCE between sigmoid(CAM) (upsampled to the mask resolution) and the detached
    OR of the predicted masks of each class."""
    target = class_masks(class_logits.detach(), mask_logits.detach(), cam.shape[1])
    cam = F.interpolate(cam, size=mask_logits.shape[-2:], mode="bilinear", align_corners=False)
    return F.binary_cross_entropy_with_logits(cam, target)
