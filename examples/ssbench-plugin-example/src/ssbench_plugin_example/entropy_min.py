"""Entropy Minimization (Grandvalet & Bengio 2005), SSL4MIS's 2-D recipe (``train_entropy_minimization_2D.py``):
the supervised loss on the labeled half plus a ramped weight times the mean normalised entropy of the softmax over
the whole batch (labeled and unlabeled), on the literature's UNet."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from ssbench.api import Batch, Method, MethodContext, StepInfo, UNetConfig, ce_dice_loss, sigmoid_rampup


@dataclass(frozen=True)
class EntropyMinConfig(UNetConfig):
    weight: float = 0.1  # maximum weight of the entropy term (SSL4MIS --consistency)
    rampup: float = 200.0  # ramp length L in units of rampup_step iterations (--consistency_rampup)
    rampup_step: int = 150  # t = iteration // rampup_step

    def __post_init__(self):
        if not (math.isfinite(self.weight) and self.weight >= 0):
            raise ValueError(f"weight must be a finite number >= 0, got {self.weight}")
        if self.rampup_step < 1:
            raise ValueError(f"rampup_step must be at least 1, got {self.rampup_step}")


def normalised_entropy(probs: torch.Tensor) -> torch.Tensor:
    """Mean over pixels of -sum_k p_k log(p_k + 1e-6) / log(K) (SSL4MIS ``losses.entropy_loss``)."""
    k = probs.shape[1]
    return (-(probs * torch.log(probs + 1e-6)).sum(1) / math.log(k)).mean()


class EntropyMinimization(Method):
    name = "entropy-min"
    display_name = "Entropy Minimization"
    Config = EntropyMinConfig
    uses_unlabeled = True

    @classmethod
    def short_recipe(cls, config, iters, published_iters=30000):
        # the ramp-up is in absolute iterations: scale it to a short run as the built-ins do
        return replace(config, rampup_step=max(1, round(config.rampup_step * iters / published_iters)))

    def __init__(self, config: EntropyMinConfig, ctx: MethodContext):
        super().__init__(config, ctx)
        self.net = config.build_unet(ctx.in_channels, ctx.num_classes)

    def training_step(self, labeled: Batch, unlabeled: Batch | None, step: StepInfo) -> dict[str, torch.Tensor]:
        n = labeled.image.shape[0]
        logits = self.net(torch.cat([labeled.image, unlabeled.image]))
        supervised = ce_dice_loss(logits[:n], labeled.label)
        entropy = normalised_entropy(logits.softmax(1))
        w = self.config.weight * sigmoid_rampup(step.iteration // self.config.rampup_step, self.config.rampup)
        return {"loss": supervised + w * entropy, "loss_sup": supervised.detach(), "loss_entropy": entropy.detach(),
                "entropy_weight": torch.tensor(w)}

    @torch.no_grad()
    def predict(self, image: torch.Tensor) -> torch.Tensor:
        return self.net(image)
