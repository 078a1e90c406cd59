"""ICT: interpolation consistency training (Verma et al., IJCAI 2019), the SSL4MIS 2-D recipe
(``code/train_interpolation_consistency_training_2D.py`` at 06df604).

The unlabeled batch is split in two halves u0, u1 and mixed pairwise, u0 (1 - lam) + u1 lam with lam ~
Beta(0.2, 0.2) per pair; the student sees the labeled slices and the mixes in one pass; the EMA teacher (train
mode, as the script) predicts u0 and u1 in two separate passes and its softmaxes are mixed with the same lam; the
consistency is the MSE between the student's softmax on the mix and the mixed teacher softmax, weight 0.1 *
sigmoid_rampup(iteration // 150, 200) from the first iteration. EMA 0.99 as Mean Teacher; the student is
evaluated. The script draws lam from NumPy, here from torch. The script splits the unlabeled batch at
batch_labeled // 2 (the halves of its 12 + 12 batch); here at half the unlabeled batch (the same at 12 + 12).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import torch
from pydantic import Field

from ssbench.errors import ConfigError
from ssbench.methods.api import Batch, StepInfo
from ssbench.methods.blocks.losses import ce_dice_loss
from ssbench.methods.mean_teacher import MeanTeacher, MeanTeacherConfig, consistency_weight


@dataclass(frozen=True)
class ICTConfig(MeanTeacherConfig):
    consistency_start: Annotated[int, Field(
        ge=0, description="the consistency term is zero before this iteration (the ICT script: none)")] = 0
    noise_std: Annotated[float, Field(ge=0, description="teacher input noise (the ICT script: none)")] = 0.0
    noise_clip: Annotated[float, Field(ge=0, description="... clamped to +-clip")] = 0.0
    alpha: Annotated[float, Field(gt=0, description="mixing coefficients lam ~ Beta(alpha, alpha)")] = 0.2


def mix_factors(n: int, alpha: float, device) -> torch.Tensor:
    """(n, 1, 1, 1) coefficients lam ~ Beta(alpha, alpha), one per pair of unlabeled slices: lam = X / (X + Y) with
    X, Y ~ Gamma(alpha, 1), drawn on the device (torch's Beta sampler has no kernel for every device)."""
    gamma = torch.distributions.Gamma(torch.full((2, n, 1, 1, 1), float(alpha), device=device),
                                      torch.ones((), device=device), validate_args=False)
    x, y = gamma.sample()  # validation would read device values
    return x / (x + y)


def mix(a: torch.Tensor, b: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    return a * (1.0 - lam) + b * lam


class ICT(MeanTeacher):
    """ICT: the student on mixup of unlabeled pairs (Beta(0.2, 0.2)) matches the mix of the EMA teacher's predictions."""

    name = "ict"
    display_name = "ICT"
    Config = ICTConfig

    @classmethod
    def check_config(cls, cfg) -> None:
        if cfg.train.batch_unlabeled < 2:
            raise ConfigError(f"train.batch_unlabeled={cfg.train.batch_unlabeled}: ICT mixes unlabeled slices in "
                              "pairs and needs at least 2")

    def training_step(self, labeled: Batch, unlabeled: Batch | None, step: StepInfo) -> dict[str, torch.Tensor]:
        cfg = self.config
        n_lab = labeled.image.shape[0]
        half = unlabeled.image.shape[0] // 2  # an odd batch leaves its last slice out
        u0, u1 = unlabeled.image[:half], unlabeled.image[half:2 * half]
        lam = mix_factors(half, cfg.alpha, u0.device)
        logits = self.student(torch.cat([labeled.image, mix(u0, u1, lam)]))
        with torch.no_grad():  # two teacher passes (train-mode BatchNorm sees each half alone, as the script)
            target = mix(self.teacher(self.noisy(u0)).float().softmax(1),
                         self.teacher(self.noisy(u1)).float().softmax(1), lam)
        supervised = ce_dice_loss(logits[:n_lab], labeled.label)
        consistency = torch.mean((logits[n_lab:].float().softmax(1) - target) ** 2)
        weight = consistency_weight(step.iteration, cfg)
        loss = supervised + weight * consistency if weight > 0 else supervised
        return {"loss": loss, "loss_sup": supervised.detach(), "loss_cons": consistency.detach(),
                "cons_weight": torch.tensor(weight), "lam_mean": lam.mean()}

    def noisy(self, x: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        if cfg.noise_std == 0:
            return x
        return x + torch.clamp(torch.randn_like(x) * cfg.noise_std, -cfg.noise_clip, cfg.noise_clip)
