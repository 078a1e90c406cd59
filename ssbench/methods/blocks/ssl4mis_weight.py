"""The unlabeled-loss weight of the SSL4MIS scripts (UA-MT, URPC, CCT, ICT, CPS): consistency x
sigmoid_rampup(iteration // rampup_step, rampup), and its scaling to a short run."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Annotated

from pydantic import Field

from ssbench.methods.blocks.ramps import sigmoid_rampup
from ssbench.methods.blocks.unet import UNetConfig

# Shared by the SSL4MIS scripts without a teacher (URPC, CCT, CPS): their consistency weight.
Consistency = Annotated[float, Field(ge=0, description="maximum weight of the unlabeled loss")]
Rampup = Annotated[float, Field(gt=0, description="L in the ramp-up exp(-5 (1 - t/L)^2)")]
RampupStep = Annotated[int, Field(ge=1, description="t = iteration // rampup_step in the ramp-up")]


@dataclass(frozen=True)
class SSL4MISWeight(UNetConfig):
    """The unlabeled-loss weight of the SSL4MIS scripts: consistency * sigmoid_rampup(iteration // 150, 200)."""

    consistency: Consistency = 0.1
    consistency_rampup: Rampup = 200.0
    rampup_step: RampupStep = 150

    def weight(self, iteration: int) -> float:
        return self.consistency * sigmoid_rampup(iteration // self.rampup_step, self.consistency_rampup)


def scale_rampup(config, iters: int, published_iters: int = 30000):
    """A short run keeps the ramp-up's shape: t = iteration // rampup_step with the step scaled to the run."""
    return replace(config, rampup_step=max(1, round(config.rampup_step * iters / published_iters)))
