"""Supervised baseline: the literature's UNet trained on the labeled slices only."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ssbench.methods.api import Batch, Method, MethodContext, StepInfo
from ssbench.methods.losses import ce_dice_loss
from ssbench.methods.unet import UNet


@dataclass(frozen=True)
class SupervisedConfig:
    """No hyper-parameters beyond the shared training recipe (SGD, poly LR) and the loss (CE + Dice)/2."""


class Supervised(Method):
    name = "supervised"
    Config = SupervisedConfig
    uses_unlabeled = False

    def __init__(self, config: SupervisedConfig, ctx: MethodContext):
        super().__init__(config, ctx)
        self.net = UNet(ctx.in_channels, ctx.num_classes)

    def training_step(self, labeled: Batch, unlabeled: Batch | None, step: StepInfo) -> dict[str, torch.Tensor]:
        loss = ce_dice_loss(self.net(labeled.image), labeled.label)
        return {"loss": loss}

    @torch.no_grad()
    def predict(self, image: torch.Tensor) -> torch.Tensor:
        return self.net(image).softmax(1)
