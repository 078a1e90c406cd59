"""SSS's mask, IoU and presence losses, as SAM-2's training computes them (training/loss_fns.py,
MultiStepMultiMasksAndIous) with the paper's mask loss.

Masks: BCE + soft Dice per mask (the paper's supervised loss; SAM-2 weighs focal 20 : Dice 1). With several
candidate masks (a propagated frame with multimask tracking) only the candidate with the lowest mask loss is
back-propagated (loss_fns.py:262-279). IoU: SAM-2's IoU head is trained to predict each candidate's IoU with the
target, L1, over all candidates (the SAM 2.1 training config: iou_use_l1_loss, supervise_all_iou; weight 1), only
where the object is there. Presence: BCE on SAM-2's object-score logit (``loss_class``, weight 1, focal gamma 0 =
plain BCE). As in SAM-2 (loss_fns.py:289-291) masks are only supervised where the object is there; where the
model's own object-score head says absent its mask is the constant NO_OBJECT, whose loss has no gradient, so those
masks are left out of the mean here (same gradients as SAM-2, without a constant of ~1000 in the logged loss).

Every loss is a weighted mean over fixed-shape tensors (weights 0 or 1): no boolean indexing, no host
synchronisation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def weighted_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum(w * v) / sum(w), and 0 when every weight is 0."""
    w = weights.to(values.dtype)
    return (values * w).sum() / w.sum().clamp_min(1)


def mask_losses(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """BCE + soft Dice of each candidate: logits (N, M, S, S), target and valid (N, S, S) -> (N, M); invalid
    pixels are left out."""
    target = target.float()[:, None].expand_as(logits)
    valid = torch.ones_like(target) if valid is None else valid.float()[:, None].expand_as(logits)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    bce = (bce * valid).sum((-2, -1)) / valid.sum((-2, -1)).clamp_min(1)
    p = torch.sigmoid(logits) * valid
    t = target * valid
    dice = 1 - (2 * (p * t).sum((-2, -1)) + 1) / (p.sum((-2, -1)) + t.sum((-2, -1)) + 1)
    return bce + dice


def unlabeled_mask_losses(logits: torch.Tensor, target: torch.Tensor, confident: torch.Tensor,
                          counted: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The unlabeled mask loss of each candidate against a pseudo-label: logits (N, M, S, S); target, confident and
    counted (N, S, S) -> (loss (N, M), dice_active (N,) bool).

    BCE is summed over the confident pixels and divided by the counted (non-ignored) pixels, as UniMatch V2
    normalises its unlabeled loss (unimatch_v2.py: ``(loss * conf_mask * valid).sum() / valid.sum()``), so an
    unconfident teacher teaches proportionally less instead of being renormalised away. Dice acts only where the
    confident target has foreground: against an empty target soft Dice is ``1 - 1/(sum p + 1)``, saturated near 1
    with a gradient that does not shrink with the image (SAM-2 never applies Dice to an empty target)."""
    target = target.float()[:, None].expand_as(logits)
    conf = confident.float()[:, None].expand_as(logits)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    bce = (bce * conf).sum((-2, -1)) / counted.float().sum((-2, -1)).clamp_min(1)[:, None]
    p = torch.sigmoid(logits) * conf
    t = target * conf
    active = t[:, 0].sum((-2, -1)) > 0
    dice = 1 - (2 * (p * t).sum((-2, -1)) + 1) / (p.sum((-2, -1)) + t.sum((-2, -1)) + 1)
    return bce + dice * active[:, None].to(dice.dtype), active


def best_mask_losses(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """(N,): the lowest candidate loss of each object (its gradient reaches that candidate only)."""
    return mask_losses(logits, target, valid).min(1).values


def iou_losses(logits: torch.Tensor, target: torch.Tensor, ious: torch.Tensor) -> torch.Tensor:
    """(N,): L1 between the predicted IoU (N, M) and each candidate's IoU with the target (N, S, S), averaged over
    the candidates."""
    pred = logits.flatten(2) > 0
    gt = target.flatten(1)[:, None] > 0
    actual = (pred & gt).sum(-1).float() / (pred | gt).sum(-1).float().clamp_min(1)
    return F.l1_loss(ious.float(), actual, reduction="none").mean(1)


def presence_losses(scores: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """(N,): BCE of object-score logits against presence."""
    return F.binary_cross_entropy_with_logits(scores, present.float(), reduction="none")


def decoded(scores: torch.Tensor) -> torch.Tensor:
    """Objects the model decoded (object score > 0): the others' masks are NO_OBJECT, without gradient."""
    return scores.detach() > 0
