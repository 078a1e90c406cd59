"""SSS's mask and presence losses.

Masks: BCE + soft Dice per prompted mask (the paper's supervised loss). Presence: BCE on SAM-2's object-score
logit (SAM-2's ``loss_class``, weight 1, focal gamma 0 = plain BCE: training/loss_fns.py, and the MOSE fine-tuning
config). As in SAM-2 (loss_fns.py:289-291) a mask is only supervised where the object is there; where the model's
own object-score head says absent its mask is the constant NO_OBJECT, whose loss has no gradient, so those masks are
left out of the mean here (same gradients as SAM-2, without a constant of ~1000 in the logged loss).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def mask_loss(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """BCE + soft Dice per mask, averaged. logits/target/valid: (N, S, S); invalid pixels are left out; 0 if N = 0."""
    if logits.shape[0] == 0:
        return logits.sum() * 0
    target = target.float()
    valid = torch.ones_like(target) if valid is None else valid.float()
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    bce = (bce * valid).sum((1, 2)) / valid.sum((1, 2)).clamp_min(1)
    p = torch.sigmoid(logits) * valid
    t = target * valid
    dice = 1 - (2 * (p * t).sum((1, 2)) + 1) / (p.sum((1, 2)) + t.sum((1, 2)) + 1)
    return (bce + dice).mean()


def presence_loss(scores: torch.Tensor, present: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """BCE of object-score logits (N,) against presence (N,) bool, over the valid entries; 0 if none."""
    valid = torch.ones_like(present, dtype=torch.bool) if valid is None else valid
    if not valid.any():
        return scores.sum() * 0
    return F.binary_cross_entropy_with_logits(scores[valid], present[valid].float())


def decoded_mask_loss(logits: torch.Tensor, scores: torch.Tensor, target: torch.Tensor, present: torch.Tensor,
                      valid: torch.Tensor | None = None) -> torch.Tensor:
    """Mask loss on the objects that are there (``present``) and that the model decoded (score > 0)."""
    keep = present & (scores.detach() > 0)
    return mask_loss(logits[keep], target[keep], None if valid is None else valid[keep])
