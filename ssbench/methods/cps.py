"""CPS: cross pseudo supervision (Chen et al., CVPR 2021), the SSL4MIS 2-D recipe
(``code/train_cross_pseudo_supervision_2D.py`` at 06df604).

Two UNets with different initialisations (built one after the other from the run's seed, as the script), each
trained by its own SGD optimizer (``optimizer_params``: ``model1``, ``model2``, stepped after one backward of the
summed loss, as the script). On the labeled slices each gets (CE + Dice) / 2; on the unlabeled slices each gets
the cross-entropy against the other's argmax (detached), weight 0.1 * sigmoid_rampup(iteration // 150, 200) from
the first iteration; loss = model1's + model2's.

Evaluated: ``cps.evaluate=model1`` (default) or ``model2``, recorded (run.json ``evaluated_model``). The script
validates both and keeps ``unet_best_model1.pth`` and ``unet_best_model2.pth``; its test script
(``test_2D_fully.py``) loads ``unet_best_model.pth``, which the CPS script never writes, so a user renames one of
them: ssbench takes model1, the first network, and selects its checkpoint on model1's validation Dice.

One difference from the script, recorded here: the script sets the learning rate after incrementing its
iteration counter (step k > 0 runs at poly(k)); the engine, like the other SSL4MIS scripts, runs step k at
poly(k - 1). The two schedules differ by one iteration.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from ssbench.methods.api import Batch, Method, MethodContext, StepInfo
from ssbench.methods.blocks.losses import ce_dice_loss
from ssbench.methods.blocks.ssl4mis_weight import SSL4MISWeight, scale_rampup


@dataclass(frozen=True)
class CPSConfig(SSL4MISWeight):
    evaluate: Annotated[Literal["model1", "model2"], Field(
        description="the network evaluated and selected on val (the script keeps both; ssbench: model1)")] = "model1"


def cross_targets(logits_a: torch.Tensor, logits_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each network's hard pseudo-label for the other: (argmax of b for a, argmax of a for b), detached."""
    return logits_b.detach().argmax(1), logits_a.detach().argmax(1)


class CPS(Method):
    """CPS: two UNets, each trained on the other's argmax pseudo-labels on unlabeled slices."""

    name = "cps"
    display_name = "CPS"
    Config = CPSConfig
    uses_unlabeled = True

    def __init__(self, config: CPSConfig, ctx: MethodContext):
        super().__init__(config, ctx)
        self.model1 = config.build_unet(ctx.in_channels, ctx.num_classes)
        self.model2 = config.build_unet(ctx.in_channels, ctx.num_classes)

    @classmethod
    def short_recipe(cls, config, iters, published_iters=30000):
        return scale_rampup(config, iters, published_iters)

    scale_schedule = short_recipe  # it scales schedules only: the same under --iters on any data

    def optimizer_params(self):
        return {"model1": list(self.model1.parameters()), "model2": list(self.model2.parameters())}

    def training_step(self, labeled: Batch, unlabeled: Batch | None, step: StepInfo) -> dict[str, torch.Tensor]:
        n_lab = labeled.image.shape[0]
        x = torch.cat([labeled.image, unlabeled.image])
        out1, out2 = self.model1(x).float(), self.model2(x).float()
        weight = self.config.weight(step.iteration)
        sup1, sup2 = ce_dice_loss(out1[:n_lab], labeled.label), ce_dice_loss(out2[:n_lab], labeled.label)
        target1, target2 = cross_targets(out1[n_lab:], out2[n_lab:])
        cps1, cps2 = F.cross_entropy(out1[n_lab:], target1), F.cross_entropy(out2[n_lab:], target2)
        loss1, loss2 = sup1 + weight * cps1, sup2 + weight * cps2
        return {"loss": loss1 + loss2, "loss_model1": loss1.detach(), "loss_model2": loss2.detach(),
                "loss_cps": (cps1 + cps2).detach() / 2, "cons_weight": torch.tensor(weight)}

    @torch.no_grad()
    def predict(self, image: torch.Tensor) -> torch.Tensor:
        return (self.model1 if self.config.evaluate == "model1" else self.model2)(image)
