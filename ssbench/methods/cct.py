"""CCT: cross-consistency training (Ouali et al., CVPR 2020), the SSL4MIS 2-D recipe
(``code/train_cross_consistency_training_2D.py`` and ``networks/unet.py`` ``UNet_CCT`` at 06df604).

The UNet with three auxiliary decoders on the same encoder (``UNet(aux_decoders=3)``), each reading perturbed
features at every level: decoder 1 feature noise U(-0.3, 0.3) (a fresh draw per level), decoder 2 dropout 0.3,
decoder 3 feature dropout. One pass over the labeled and unlabeled slices together. Losses as the script:
* supervised: the mean of (CE + Dice) / 2 over the main and the three auxiliary outputs;
* unlabeled: the mean over the auxiliary decoders of mean((softmax(main) - softmax(aux))^2), the main output not
  detached (as in the script);
* weight 0.1 * sigmoid_rampup(iteration // 150, 200), from the first iteration.
Evaluation: the main decoder.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import torch
from pydantic import Field

from ssbench.methods.blocks import perturb
from ssbench.methods.api import Batch, Method, MethodContext, StepInfo
from ssbench.methods.blocks.losses import ce_dice_loss
from ssbench.methods.blocks.ssl4mis_weight import SSL4MISWeight, scale_rampup


@dataclass(frozen=True)
class CCTConfig(SSL4MISWeight):
    noise_range: Annotated[float, Field(ge=0, description="auxiliary decoder 1: feature noise U(-r, r)")] = 0.3
    dropout: Annotated[float, Field(ge=0, lt=1, description="auxiliary decoder 2: dropout rate")] = 0.3


def perturbed_outputs(net, x: torch.Tensor, cfg: CCTConfig) -> list[torch.Tensor]:
    """Main decoder, then the three auxiliary decoders on perturbed features (the script's order of draws)."""
    feats = net.encode(x)
    main = net.decode(feats)
    aux1 = net.decode([perturb.feature_noise(f, cfg.noise_range) for f in feats], decoder=1)
    aux2 = net.decode([perturb.dropout(f, cfg.dropout) for f in feats], decoder=2)
    aux3 = net.decode([perturb.feature_dropout(f) for f in feats], decoder=3)
    return [main, aux1, aux2, aux3]


class CCT(Method):
    """CCT: three auxiliary decoders on perturbed features (noise, dropout, feature dropout) match the main one."""

    name = "cct"
    display_name = "CCT"
    Config = CCTConfig
    uses_unlabeled = True

    def __init__(self, config: CCTConfig, ctx: MethodContext):
        super().__init__(config, ctx)
        self.net = config.build_unet(ctx.in_channels, ctx.num_classes, aux_decoders=3)

    @classmethod
    def short_recipe(cls, config, iters, published_iters=30000):
        return scale_rampup(config, iters, published_iters)

    scale_schedule = short_recipe  # it scales schedules only: the same under --iters on any data

    def training_step(self, labeled: Batch, unlabeled: Batch | None, step: StepInfo) -> dict[str, torch.Tensor]:
        n_lab = labeled.image.shape[0]
        outputs = [o.float() for o in perturbed_outputs(self.net, torch.cat([labeled.image, unlabeled.image]),
                                                         self.config)]
        supervised = sum(ce_dice_loss(o[:n_lab], labeled.label) for o in outputs) / len(outputs)
        main = outputs[0][n_lab:].softmax(1)
        consistency = sum(torch.mean((main - o[n_lab:].softmax(1)) ** 2) for o in outputs[1:]) / (len(outputs) - 1)
        weight = self.config.weight(step.iteration)
        return {"loss": supervised + weight * consistency, "loss_sup": supervised.detach(),
                "loss_cons": consistency.detach(), "cons_weight": torch.tensor(weight)}

    @torch.no_grad()
    def predict(self, image: torch.Tensor) -> torch.Tensor:
        return self.net(image)  # the main decoder
