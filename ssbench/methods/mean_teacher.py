"""Mean Teacher (Tarvainen & Valpola 2017), the SSL4MIS 2-D recipe: an EMA teacher on noisy unlabeled inputs."""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from typing import Annotated, Literal

import torch
from pydantic import Field

from ssbench.methods.api import Batch, Method, MethodContext, StepInfo
from ssbench.methods.blocks.ema import ema_alpha, ema_update, freeze
from ssbench.methods.blocks.losses import ce_dice_loss
from ssbench.methods.blocks.ramps import sigmoid_rampup
from ssbench.methods.blocks.unet import UNetConfig


@dataclass(frozen=True)
class MeanTeacherConfig(UNetConfig):
    ema_decay: Annotated[float, Field(
        ge=0, le=1, description="teacher EMA: alpha = min(1 - 1/(step + 1), ema_decay)")] = 0.99
    consistency: Annotated[float, Field(ge=0, description="maximum consistency weight")] = 0.1
    consistency_rampup: Annotated[float, Field(gt=0, description="L in the ramp-up exp(-5 (1 - t/L)^2)")] = 200.0
    rampup_step: Annotated[int, Field(ge=1, description="t = iteration // rampup_step in the ramp-up")] = 150
    consistency_start: Annotated[int, Field(
        ge=0, description="the consistency term is zero before this iteration")] = 1000
    noise_std: Annotated[float, Field(ge=0, description="teacher input noise N(0, std^2) ...")] = 0.1
    noise_clip: Annotated[float, Field(ge=0, description="... clamped to +-clip")] = 0.2
    # Quirks of the original code, as switches. The original leaves the teacher in train mode (dropout and batch
    # statistics act as teacher noise, as in the Mean Teacher paper): kept. It does not average BatchNorm buffers
    # (the teacher's running statistics come from its own noisy passes): averaged by default here, so that the
    # teacher is a proper average of the student whichever mode it is used in.
    teacher_mode: Annotated[Literal["train", "eval"], Field(
        description="teacher dropout/BN mode during training (the original: train)")] = "train"
    ema_buffers: Annotated[bool, Field(
        description="average BatchNorm buffers into the teacher too (the original does not)")] = True
    evaluate: Annotated[Literal["student", "teacher"], Field(
        description="the network evaluated (SSL4MIS reports the student)")] = "student"


def consistency_weight(iteration: int, cfg: MeanTeacherConfig) -> float:
    """0 before consistency_start, then consistency * exp(-5 (1 - t/L)^2) with t = iteration // rampup_step."""
    if iteration < cfg.consistency_start:
        return 0.0
    return cfg.consistency * sigmoid_rampup(iteration // cfg.rampup_step, cfg.consistency_rampup)


class MeanTeacher(Method):
    name = "mean-teacher"
    display_name = "Mean Teacher"
    Config = MeanTeacherConfig
    uses_unlabeled = True

    def __init__(self, config: MeanTeacherConfig, ctx: MethodContext):
        super().__init__(config, ctx)
        self.student = config.build_unet(ctx.in_channels, ctx.num_classes)
        self.teacher = freeze(copy.deepcopy(self.student))

    @classmethod
    def short_recipe(cls, config, iters, published_iters=30000):
        scale = iters / published_iters
        return replace(config, consistency_start=round(config.consistency_start * scale),
                       rampup_step=max(1, round(config.rampup_step * scale)))

    scale_schedule = short_recipe  # it scales schedules only: the same under --iters on any data

    def trainable_parameters(self):
        return list(self.student.parameters())

    def train(self, mode: bool = True):
        super().train(mode)
        if mode:
            self.teacher.train(self.config.teacher_mode == "train")
        return self

    def training_step(self, labeled: Batch, unlabeled: Batch | None, step: StepInfo) -> dict[str, torch.Tensor]:
        cfg = self.config
        n_lab = labeled.image.shape[0]
        logits = self.student(torch.cat([labeled.image, unlabeled.image]))
        supervised = ce_dice_loss(logits[:n_lab], labeled.label)
        with torch.no_grad():
            noise = torch.clamp(torch.randn_like(unlabeled.image) * cfg.noise_std, -cfg.noise_clip, cfg.noise_clip)
            teacher_probs = self.teacher(unlabeled.image + noise).softmax(1)
        weight = consistency_weight(step.iteration, cfg)
        consistency = torch.mean((logits[n_lab:].softmax(1) - teacher_probs) ** 2)
        loss = supervised + weight * consistency if weight > 0 else supervised
        return {"loss": loss, "loss_sup": supervised.detach(), "loss_cons": consistency.detach(),
                "cons_weight": torch.tensor(weight)}

    def after_optimizer_step(self, step: StepInfo) -> None:
        ema_update(self.teacher, self.student, ema_alpha(step.iteration, self.config.ema_decay),
                   self.config.ema_buffers)

    @torch.no_grad()
    def predict(self, image: torch.Tensor) -> torch.Tensor:
        net = self.student if self.config.evaluate == "student" else self.teacher
        return net(image)
