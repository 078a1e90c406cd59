"""Schedules of consistency weights used by the semi-supervised literature's recipes."""

from __future__ import annotations

import math


def sigmoid_rampup(current: float, length: float) -> float:
    """exp(-5 (1 - t)^2) with t = clip(current / length, 0, 1) (Laine & Aila 2017; SSL4MIS's ``ramps``):
    rises smoothly from exp(-5) to 1 over ``length`` units, then stays at 1. A length of 0 gives 1."""
    if length == 0:
        return 1.0
    t = min(max(current / length, 0.0), 1.0)
    return math.exp(-5.0 * (1.0 - t) ** 2)
