"""Losses of the literature's recipes."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def dice_loss(probs: torch.Tensor, target: torch.Tensor, ignore: torch.Tensor | None = None, smooth: float = 1e-5,
              include_background: bool = True) -> torch.Tensor:
    """SSL4MIS's multi-class soft Dice: 1 - (2 sum(p t) + s) / (sum(p^2) + sum(t^2) + s) per class, averaged.

    probs (B, K, H, W) softmax output; target (B, H, W) class indices; ignore (B, H, W) bool, True = left out.
    """
    k = probs.shape[1]
    onehot = F.one_hot(target.clamp(0, k - 1).long(), k).permute(0, 3, 1, 2).to(probs.dtype)
    if ignore is not None:
        keep = (~ignore).unsqueeze(1).to(probs.dtype)
        probs, onehot = probs * keep, onehot * keep
    dims = (0, 2, 3)
    inter = (probs * onehot).sum(dims)
    denom = (probs * probs).sum(dims) + (onehot * onehot).sum(dims)
    per_class = 1 - (2 * inter + smooth) / (denom + smooth)
    if not include_background:
        per_class = per_class[1:]
    return per_class.mean()


def ce_dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(CE + Dice) / 2 with the Dice over all classes including background: the supervised loss of the recipes."""
    return 0.5 * (F.cross_entropy(logits, target) + dice_loss(logits.softmax(1), target))
