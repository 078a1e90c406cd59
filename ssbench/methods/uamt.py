"""UA-MT: uncertainty-aware Mean Teacher (Yu et al., MICCAI 2019), the SSL4MIS 2-D recipe
(``code/train_uncertainty_aware_mean_teacher_2D.py`` at 06df604).

Mean Teacher whose consistency counts only where the teacher is certain: the teacher also runs T = 8 times on
noisy copies of the unlabeled slices (noise N(0, 0.1^2) clipped to +-0.2; T / 2 passes over the batch repeated
twice), the entropy of the mean softmax is the uncertainty, and the MSE between the student's and the teacher's
softmax counts only at pixels whose uncertainty is below (0.75 + 0.25 * sigmoid_rampup(iteration, run length))
* ln 2. As the script: the masked MSE is summed over classes and divided by 2 x the masked pixels; the
consistency weight is 0.1 * sigmoid_rampup(iteration // 150, 200) from the first iteration (no start delay,
unlike the Mean Teacher script); the teacher stays in train mode; the student is evaluated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated

import torch
from pydantic import Field

from ssbench.methods.api import Batch, StepInfo
from ssbench.methods.blocks.losses import ce_dice_loss
from ssbench.methods.mean_teacher import MeanTeacher, MeanTeacherConfig, consistency_weight
from ssbench.methods.blocks.ramps import sigmoid_rampup


@dataclass(frozen=True)
class UAMTConfig(MeanTeacherConfig):
    consistency_start: Annotated[int, Field(
        ge=0, description="the consistency term is zero before this iteration (the UA-MT script: none)")] = 0
    passes: Annotated[int, Field(
        ge=2, multiple_of=2, description="T: noisy teacher passes for the uncertainty (run in T/2 doubled batches)")
    ] = 8
    threshold_min: Annotated[float, Field(
        gt=0, description="uncertainty threshold at the start, in units of ln 2")] = 0.75
    threshold_max: Annotated[float, Field(
        gt=0, description="... at the end of the run (sigmoid ramp-up over the run's iterations)")] = 1.0


def uncertainty_threshold(iteration: int, total: int, cfg: UAMTConfig) -> float:
    """(min + (max - min) * sigmoid_rampup(iteration, total)) * ln 2: 0.75 ln 2 rising to ln 2 over the run."""
    return (cfg.threshold_min + (cfg.threshold_max - cfg.threshold_min) * sigmoid_rampup(iteration, total)) \
        * math.log(2)


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """-sum_k p log(p + 1e-6) over classes, (B, 1, H, W), natural logarithm (the script's uncertainty)."""
    return -(probs * torch.log(probs + 1e-6)).sum(dim=1, keepdim=True)


def masked_consistency(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                       uncertainty: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """sum(mask * (softmax(s) - softmax(t))^2) / (2 sum(mask) + 1e-16), mask = uncertainty < threshold (one per
    pixel, summed over classes in the numerator only: the script's normalisation). Returns (loss, mask)."""
    dist = (student_logits.float().softmax(1) - teacher_logits.float().softmax(1)) ** 2
    mask = (uncertainty < threshold).float()
    return (mask * dist).sum() / (2 * mask.sum() + 1e-16), mask


class UAMT(MeanTeacher):
    """UA-MT: Mean Teacher whose consistency counts only where the teacher's entropy over 8 noisy passes is low."""

    name = "ua-mt"
    display_name = "UA-MT"
    Config = UAMTConfig

    def noisy(self, x: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        return x + torch.clamp(torch.randn_like(x) * cfg.noise_std, -cfg.noise_clip, cfg.noise_clip)

    @torch.no_grad()
    def uncertainty(self, x: torch.Tensor) -> torch.Tensor:
        """Entropy of the teacher's mean softmax over T noisy copies, (B, 1, H, W)."""
        doubled = x.repeat(2, 1, 1, 1)
        probs = torch.cat([self.teacher(self.noisy(doubled)) for _ in range(self.config.passes // 2)]).float()
        mean = probs.softmax(1).reshape(self.config.passes, x.shape[0], *probs.shape[1:]).mean(0)
        return entropy(mean)

    def training_step(self, labeled: Batch, unlabeled: Batch | None, step: StepInfo) -> dict[str, torch.Tensor]:
        cfg = self.config
        n_lab = labeled.image.shape[0]
        # the script's order of random draws: teacher noise, student (dropout), teacher, the T noisy passes
        teacher_input = self.noisy(unlabeled.image)
        logits = self.student(torch.cat([labeled.image, unlabeled.image]))
        with torch.no_grad():
            teacher_logits = self.teacher(teacher_input)
        uncertainty = self.uncertainty(unlabeled.image)
        supervised = ce_dice_loss(logits[:n_lab], labeled.label)
        threshold = uncertainty_threshold(step.iteration, step.total, cfg)
        consistency, mask = masked_consistency(logits[n_lab:], teacher_logits, uncertainty, threshold)
        weight = consistency_weight(step.iteration, cfg)
        loss = supervised + weight * consistency if weight > 0 else supervised
        return {"loss": loss, "loss_sup": supervised.detach(), "loss_cons": consistency.detach(),
                "cons_weight": torch.tensor(weight), "certain_ratio": mask.mean()}
