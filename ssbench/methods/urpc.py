"""URPC: uncertainty-rectified pyramid consistency (Luo et al., MICCAI 2021 / MedIA 2022), the SSL4MIS 2-D recipe
(``code/train_uncertainty_rectified_pyramid_consistency_2D.py`` and ``networks/unet.py`` ``UNet_URPC`` at 06df604).

The UNet with a 3x3 output conv on three more decoder levels (``UNet(aux_heads=True)``); in training the level at
H/8 is read through dropout 0.5, the one at H/4 through feature dropout, the one at H/2 through feature noise, and
the three predictions are up-sampled to full size (nearest, ``F.interpolate``'s default). One pass over the labeled
and unlabeled slices together. Losses as the script:
* supervised: the mean of (CE + Dice) / 2 over the four scales (the script's eight terms / 8);
* unlabeled, per scale s: with P the mean of the four softmaxes and D_s = KL(P || p_s) per pixel (summed over
  classes), mean((P - p_s)^2 * exp(-D_s)) / (mean(exp(-D_s)) + 1e-8) + mean(D_s); their mean over the scales.
  P and D_s are not detached (gradients flow through them, as in the script);
* weight 0.1 * sigmoid_rampup(iteration // 150, 200), from the first iteration.
Evaluation: the main output (eval mode: no perturbation).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Annotated

import torch
import torch.nn.functional as F
from pydantic import Field

from ssbench.methods.blocks import perturb
from ssbench.methods.api import Batch, Method, MethodContext, StepInfo
from ssbench.methods.blocks.ssl4mis_weight import SSL4MISWeight, scale_rampup
from ssbench.methods.blocks.losses import ce_dice_loss
from ssbench.methods.blocks.ramps import sigmoid_rampup


@dataclass(frozen=True)
class URPCConfig(SSL4MISWeight):
    dropout: Annotated[float, Field(ge=0, lt=1, description="dropout before the H/8 head in training")] = 0.5
    noise_range: Annotated[float, Field(ge=0, description="feature noise U(-r, r) before the H/2 head")] = 0.3


def pyramid(net, x: torch.Tensor, cfg: URPCConfig, perturbed: bool) -> list[torch.Tensor]:
    """The main output and the auxiliary outputs at H/2, H/4, H/8 (SSL4MIS's order), all at full size."""
    levels = net.decode_levels(net.encode(x))
    main = net.head(levels[-1])
    if perturbed:
        # the script's order (and order of random draws): H/8 dropout, H/4 feature dropout, H/2 feature noise
        inputs = [perturb.dropout(levels[0], cfg.dropout), perturb.feature_dropout(levels[1]),
                  perturb.feature_noise(levels[2], cfg.noise_range)]
    else:
        inputs = levels[:3]
    aux = [F.interpolate(head(z), size=x.shape[-2:]) for head, z in zip(net.aux_heads[1:], inputs)]
    return [main, *reversed(aux)]


def rectified_consistency(probs: list[torch.Tensor]) -> torch.Tensor:
    """URPC's unlabeled loss from the softmaxes of the scales (each (B, K, H, W))."""
    mean = sum(probs) / len(probs)
    terms = []
    for p in probs:
        kl = F.kl_div(torch.log(p), mean, reduction="none").sum(dim=1, keepdim=True)
        weight = torch.exp(-kl)
        terms.append(torch.mean((mean - p) ** 2 * weight) / (torch.mean(weight) + 1e-8) + torch.mean(kl))
    return sum(terms) / len(terms)


class URPC(Method):
    """URPC: deep supervision at four decoder scales with uncertainty-rectified (exp(-KL)) pyramid consistency."""

    name = "urpc"
    display_name = "URPC"
    Config = URPCConfig
    uses_unlabeled = True

    def __init__(self, config: URPCConfig, ctx: MethodContext):
        super().__init__(config, ctx)
        self.net = config.build_unet(ctx.in_channels, ctx.num_classes, aux_heads=True)

    @classmethod
    def short_recipe(cls, config, iters, published_iters=30000):
        return scale_rampup(config, iters, published_iters)

    scale_schedule = short_recipe  # it scales schedules only: the same under --iters on any data

    def training_step(self, labeled: Batch, unlabeled: Batch | None, step: StepInfo) -> dict[str, torch.Tensor]:
        n_lab = labeled.image.shape[0]
        outputs = [o.float() for o in pyramid(self.net, torch.cat([labeled.image, unlabeled.image]), self.config,
                                               perturbed=True)]
        supervised = sum(ce_dice_loss(o[:n_lab], labeled.label) for o in outputs) / len(outputs)
        consistency = rectified_consistency([o[n_lab:].softmax(1) for o in outputs])
        weight = self.config.weight(step.iteration)
        return {"loss": supervised + weight * consistency, "loss_sup": supervised.detach(),
                "loss_cons": consistency.detach(), "cons_weight": torch.tensor(weight)}

    @torch.no_grad()
    def predict(self, image: torch.Tensor) -> torch.Tensor:
        return self.net(image)  # the main decoder output
