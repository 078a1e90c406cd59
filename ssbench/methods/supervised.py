"""Supervised baseline: the literature's UNet trained on the labeled slices only."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ssbench.methods.api import Batch, Method, MethodContext, StepInfo
from ssbench.methods.blocks.losses import ce_dice_loss
from ssbench.methods.blocks.unet import UNetConfig


@dataclass(frozen=True)
class SupervisedConfig(UNetConfig):
    """No hyper-parameters beyond the network, the shared training recipe (SGD, poly LR) and the loss
    (CE + Dice)/2."""


class Supervised(Method):
    name = "supervised"
    display_name = "U-Net (labeled only)"
    Config = SupervisedConfig
    uses_unlabeled = False

    @classmethod
    def recipe_overrides(cls, recipe: str) -> dict:
        # SSL4MIS's fully supervised script and UniMatch's README: 24 labeled slices per step (the SSL methods'
        # 12 labeled + 12 unlabeled). The CPU recipe keeps the same ratio to its 4 + 4.
        return {"batch_labeled": 24 if recipe == "published" else 8}

    def __init__(self, config: SupervisedConfig, ctx: MethodContext):
        super().__init__(config, ctx)
        self.net = config.build_unet(ctx.in_channels, ctx.num_classes)

    def training_step(self, labeled: Batch, unlabeled: Batch | None, step: StepInfo) -> dict[str, torch.Tensor]:
        loss = ce_dice_loss(self.net(labeled.image), labeled.label)
        return {"loss": loss}

    @torch.no_grad()
    def predict(self, image: torch.Tensor) -> torch.Tensor:
        return self.net(image)  # logits (UniMatch's bilinear inference resizes logits)
