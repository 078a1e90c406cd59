"""Exponential moving average of a student's weights: the teacher of Mean Teacher and UniMatch V2."""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, alpha: float, buffers: bool = True) -> None:
    """teacher = alpha * teacher + (1 - alpha) * student, for parameters and (optionally) float buffers.

    With ``buffers=False`` the teacher's BatchNorm running statistics are not averaged, as in SSL4MIS's original
    code: they are whatever the teacher's own train-mode passes gathered, or their initial values if it only ever
    runs in eval mode.
    """
    for t, s in zip(teacher.parameters(), student.parameters()):
        t.mul_(alpha).add_(s.detach(), alpha=1 - alpha)
    if buffers:
        for t, s in zip(teacher.buffers(), student.buffers()):
            if t.dtype.is_floating_point:
                t.mul_(alpha).add_(s, alpha=1 - alpha)
            else:
                t.copy_(s)


def ema_alpha(step: int, decay: float) -> float:
    """alpha = min(1 - 1/(step + 1), decay): the first update copies the student, later ones average."""
    return min(1.0 - 1.0 / (step + 1), decay)


def freeze(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        p.requires_grad_(False)
    return module
