"""AD-MT — Alternate Diverse Teaching (Zhao et al., ECCV 2024), the 2-D recipe of the official code
(ZhenZHAO/AD-MT ``code/train_post_2d_aut.py`` with ``cfgs/config_2d_aut.yml``, ``code/train_utils.py``,
``code/dataloaders/mixaugs.py``): one student and two EMA teachers, updated in turn for random periods.

Per step, with the teacher that is updated this period in train mode and the other in eval mode: both teachers
predict the weak unlabeled view; their softmaxes are fused with entropy weights exp(-H) (H in bits) and the fused
argmax and confidence are the pseudo-label. In periods of the first teacher the unlabeled input is the strong view
(colour jitter p 0.8, blur p 0.2); in periods of the second it is a CutMix of the weak view (probability 1;
one Beta(4, 4) box size per batch, centres from 1/8 of the side on, partners a permutation of the batch), which
mixes the pseudo-labels, confidences and teacher conflicts too. Where the two teachers disagree and the student's
own weak-view prediction disagrees with the fused label, the more confident of the student and the teachers wins
(``pixel_confidence``). Loss = (CE + Dice)/2 on the labeled slices + 2.0 sigmoid_rampup(iteration // 150, 50) x
Dice on the unlabeled input over pixels of confidence >= 0.95. After the step the teacher of the period takes an
EMA of the student (parameters and BN buffers) with decay 0 while iteration // 2 < 50, then
min(1 - 1/(iteration // 2 - 50 + 1), 0.99); then the period counter moves on (a new period of 1-50 steps, drawn
uniformly, each time the teachers swap). SGD 0.01 poly, 30,000 steps, batch 12 + 12, seed 2023, validated every
2 epochs of the unlabeled set. Evaluated: the best student on val (``test_2d.sh --flag_check_with_best_stu``).
Compared with the official functions in benchmarks/peer_check.py (``--admt``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Annotated, Literal

import torch
from pydantic import Field

from ssbench.methods.api import Batch, Method, MethodContext, StepInfo
from ssbench.methods.blocks.ema import ema_update, freeze
from ssbench.methods.blocks.losses import ce_dice_loss, dice_loss
from ssbench.methods.blocks.ramps import sigmoid_rampup
from ssbench.methods.blocks.strong import color_jitter, gaussian_blur
from ssbench.methods.blocks.unet import UNetConfig

Probability = Annotated[float, Field(ge=0, le=1)]


@dataclass(frozen=True)
class ADMTConfig(UNetConfig):
    ema_decay: Annotated[float, Field(ge=0, le=1, description="teacher EMA decay after the warm-up (ema_decay)")] = 0.99
    ema_buffers: Annotated[bool, Field(description=(
        "average BatchNorm buffers too (the official update_ema_variables does)"))] = True
    teacher_warmup: Annotated[int, Field(ge=0, description=(
        "teacher decay 0 while iteration // 2 < this (the official code reuses consistency_rampup = 50)"))] = 50
    consistency: Annotated[float, Field(ge=0, description="maximum weight of the unlabeled loss")] = 2.0
    consistency_rampup: Annotated[float, Field(ge=0, description="L in sigmoid_rampup(iteration // rampup_step, L)")
                                  ] = 50.0
    rampup_step: Annotated[int, Field(ge=1, description="t = iteration // rampup_step in the ramp-up")] = 150
    conf_thresh: Annotated[Probability, Field(description="pixels whose pseudo-label confidence is below are ignored")
                           ] = 0.95
    cutmix_p: Annotated[Probability, Field(description=(
        "probability of CutMix in the second teacher's periods (else the weak view itself)"))] = 1.0
    period_max: Annotated[int, Field(ge=1, description="teachers swap after a period of 1..period_max steps")] = 50
    period_random: Annotated[bool, Field(description=(
        "a random period in [1, period_max] each time (false: always period_max)"))] = True
    conflict: Annotated[Literal["pixel_confidence", "always_tea", "always_stu", "random"], Field(
        description="student vs fused teachers where they disagree (alt_flag_conflict_mode)")] = "pixel_confidence"
    temperature: Annotated[float, Field(gt=0, description="sharpening of the fused softmax (alt_param_ensemble_temp)")
                           ] = 1.0
    jitter_p: Annotated[Probability, Field(description="strong view: colour jitter probability (p_color)")] = 0.8
    blur_p: Annotated[Probability, Field(description="strong view: Gaussian blur probability (p_blur)")] = 0.2
    evaluate: Annotated[Literal["student", "teacher"], Field(description=(
        "the network evaluated and selected on val: the student (the official test) or the first teacher"))
    ] = "student"


def teacher_decay(iteration: int, cfg: ADMTConfig) -> float:
    """``update_ema_variables(..., iter_num // 2)``: 0 during the warm-up, then min(1 - 1/(g - w + 1), decay)."""
    g = iteration // 2
    if g < cfg.teacher_warmup:
        return 0.0
    return min(1 - 1 / (g - cfg.teacher_warmup + 1), cfg.ema_decay)


def entropy_fusion(p1: torch.Tensor, p2: torch.Tensor, temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two teachers' softmaxes (B, K, H, W) fused pixel by pixel with weights exp(-H) / (exp(-H1) + exp(-H2)),
    H = -sum p log2(p + 1e-10); sharpened by ``temperature`` and renormalised. Returns (confidence, label)."""
    h1 = -(p1 * torch.log2(p1 + 1e-10)).sum(1)
    h2 = -(p2 * torch.log2(p2 + 1e-10)).sum(1)
    w1 = torch.exp(-h1) / (torch.exp(-h1) + torch.exp(-h2))
    fused = w1.unsqueeze(1) * p1 + (1.0 - w1).unsqueeze(1) * p2
    fused = torch.pow(fused, 1.0 / temperature)
    fused = fused / fused.sum(1, keepdim=True)
    return fused.max(1)


def resolve_conflicts(label, conf, label_stu, conf_stu, teachers_disagree, mode: str):
    """``get_compromise_pseudo_btw_tea_stu``: where the teachers disagree and the student's weak-view label differs
    from the fused one, ``pixel_confidence`` keeps the more confident (the student on a strict win)."""
    conflict = (label != label_stu) & teachers_disagree
    if mode == "pixel_confidence":
        take = conflict & (conf_stu > conf)
    elif mode == "always_stu":
        take = conflict
    elif mode == "random":  # one coin for the whole batch (np.random.random() < 0.5)
        take = conflict & (torch.rand((), device=label.device) < 0.5)
    else:  # always_tea
        return label, conf
    return torch.where(take, label_stu, label), torch.where(take, conf_stu, conf)


@dataclass
class CutMixParams:
    perm: torch.Tensor  # (B,) the partner of each image (torch.randperm)
    lam: torch.Tensor  # () Beta(4, 4): the box side is int(side * sqrt(1 - lam)), one for the batch
    cx: torch.Tensor  # (B,) box centre along the first spatial axis, in [side // 8, side)
    cy: torch.Tensor  # (B,) ... along the second


def draw_cutmix(b: int, h: int, w: int, device) -> CutMixParams:
    """``cut_mix``'s random draws (``rand_bbox`` with lam ~ Beta(4, 4)), on the device."""
    perm = torch.randperm(b, device=device)
    gamma = torch._standard_gamma(torch.full((2,), 4.0, device=device))
    return CutMixParams(perm, gamma[0] / gamma.sum(), torch.randint(int(h / 8), h, (b,), device=device),
                        torch.randint(int(w / 8), w, (b,), device=device))


def cutmix_box_masks(q: CutMixParams, h: int, w: int) -> torch.Tensor:
    """(B, H, W) bool: rows [clip(cx - cut // 2), clip(cx + cut // 2)) and likewise for columns."""
    rat = torch.sqrt(1.0 - q.lam.double())
    cut_h, cut_w = torch.floor(h * rat).long(), torch.floor(w * rat).long()
    x1, x2 = (q.cx - cut_h // 2).clamp(0, h), (q.cx + cut_h // 2).clamp(0, h)
    y1, y2 = (q.cy - cut_w // 2).clamp(0, w), (q.cy + cut_w // 2).clamp(0, w)
    rows = torch.arange(h, device=q.cx.device).view(1, h, 1)
    cols = torch.arange(w, device=q.cx.device).view(1, 1, w)
    v = lambda t: t.view(-1, 1, 1)  # noqa: E731
    return (rows >= v(x1)) & (rows < v(x2)) & (cols >= v(y1)) & (cols < v(y2))


def apply_cutmix(q: CutMixParams, image, *maps):
    """Paste each image's box from its partner (the originals, not the partly mixed batch) into the image and every
    per-pixel map (pseudo-label, confidence, teacher conflicts)."""
    box = cutmix_box_masks(q, image.shape[-2], image.shape[-1])
    out = [torch.where(box.unsqueeze(1), image[q.perm], image)]
    return out + [torch.where(box, m[q.perm], m) for m in maps]


class AlternateSchedule:
    """``AlternateUpdate`` with its random periods: True (the first teacher's turn) at the start; each ``update``
    counts a step, and after ``period`` steps the turn passes and a new period is drawn. Period k is drawn from a
    generator seeded by (seed, k), so every process of a run agrees and the state is four integers."""

    def __init__(self, period_max: int, random_period: bool, seed: int, draw=None):
        self.period_max, self.random_period, self.seed = period_max, random_period, seed
        self._draw = draw or self._seeded
        self.flag, self.counter, self.draws = True, 0, 0
        self.period = self._next()

    def _seeded(self, k: int) -> int:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + k)
        return int(torch.randint(1, self.period_max + 1, (), generator=g))

    def _next(self) -> int:
        if not self.random_period:
            return self.period_max
        self.draws += 1
        return self._draw(self.draws - 1)

    def update(self) -> None:
        self.counter += 1
        if self.counter >= self.period:
            self.flag, self.counter = not self.flag, 0
            self.period = self._next()

    def state(self) -> dict:
        return {"flag": self.flag, "counter": self.counter, "period": self.period, "draws": self.draws,
                "seed": self.seed}

    def load(self, state: dict) -> None:
        self.flag, self.counter, self.period = bool(state["flag"]), int(state["counter"]), int(state["period"])
        self.draws, self.seed = int(state["draws"]), int(state["seed"])


class ADMT(Method):
    name = "admt"
    display_name = "AD-MT"
    Config = ADMTConfig
    uses_unlabeled = True

    @classmethod
    def recipe_overrides(cls, recipe: str) -> dict:
        # config_2d_aut.yml: seed 2023, validation every 2 epochs (test_interval_ep) of the unlabeled slices.
        if recipe == "published":
            return {"seed": 2023, "val_every": "epoch", "val_epochs": 2}
        return {"seed": 2023}

    @classmethod
    def eval_overrides(cls, recipe: str) -> dict:
        return {"also_protocols": ["bcp"]}  # test_performance_2d.py is BCP's test script

    @classmethod
    def short_recipe(cls, config, iters: int, published_iters: int = 30000):
        scale = iters / published_iters
        return replace(config, rampup_step=max(1, round(config.rampup_step * scale)),
                       teacher_warmup=round(config.teacher_warmup * scale))

    scale_schedule = short_recipe  # it scales schedules only: the same under --iters on any data

    def __init__(self, config: ADMTConfig, ctx: MethodContext):
        super().__init__(config, ctx)
        # Three independent initialisations in the official order (create_model() three times).
        self.student = config.build_unet(ctx.in_channels, ctx.num_classes)
        self.teacher = freeze(config.build_unet(ctx.in_channels, ctx.num_classes))
        self.teacher2 = freeze(config.build_unet(ctx.in_channels, ctx.num_classes))
        seed = int(torch.randint(0, 2**31 - 1, ()))  # from train.seed: the same in every process
        self.schedule = AlternateSchedule(config.period_max, config.period_random, seed)

    def trainable_parameters(self):
        return list(self.student.parameters())

    def get_extra_state(self) -> dict:
        return {"schedule": self.schedule.state()}  # host integers: read every step without a device sync

    def set_extra_state(self, state: dict) -> None:
        self.schedule.load(state["schedule"])

    def strong(self, x: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        return gaussian_blur(color_jitter(x, None, p=cfg.jitter_p), None, p=cfg.blur_p)

    def training_step(self, labeled: Batch, unlabeled: Batch | None, step: StepInfo) -> dict[str, torch.Tensor]:
        cfg = self.config
        first = self.schedule.flag  # whose period: the first teacher's (strong view) or the second's (CutMix)
        u_w = unlabeled.image
        with torch.no_grad():
            self.teacher.train(first)
            self.teacher2.train(not first)
            p1 = self.teacher(u_w).float().softmax(1)
            p2 = self.teacher2(u_w).float().softmax(1)
            disagree = p1.argmax(1) != p2.argmax(1)
            conf, pseudo = entropy_fusion(p1, p2, cfg.temperature)
            if first:
                u_s = self.strong(u_w)
            elif cfg.cutmix_p >= 1 or bool(torch.rand(()) < cfg.cutmix_p):
                q = draw_cutmix(u_w.shape[0], u_w.shape[-2], u_w.shape[-1], u_w.device)
                u_s, pseudo, conf, disagree = apply_cutmix(q, u_w, pseudo, conf, disagree)
            else:
                u_s = u_w.clone()
        n = labeled.image.shape[0]
        pred = self.student(torch.cat([labeled.image, u_w, u_s]))
        pred_w, pred_s = pred[n:].float().chunk(2)
        with torch.no_grad():
            conf_ratio = (conf >= cfg.conf_thresh).float().mean()  # the official 'high_ratio', before the student's say
            conf_stu, label_stu = pred_w.softmax(1).max(1)
            pseudo, conf = resolve_conflicts(pseudo, conf, label_stu, conf_stu, disagree, cfg.conflict)
        loss_x = ce_dice_loss(pred[:n].float(), labeled.label)
        loss_u = dice_loss(pred_s.softmax(1), pseudo, ignore=conf < cfg.conf_thresh)
        weight = cfg.consistency * sigmoid_rampup(step.iteration // cfg.rampup_step, cfg.consistency_rampup)
        return {"loss": loss_x + weight * loss_u, "loss_x": loss_x.detach(), "loss_u": loss_u.detach(),
                "u_weight": torch.tensor(weight), "conf_ratio": conf_ratio,
                "teacher": torch.tensor(1.0 if first else 2.0)}

    def after_optimizer_step(self, step: StepInfo) -> None:
        target = self.teacher if self.schedule.flag else self.teacher2
        ema_update(target, self.student, teacher_decay(step.iteration, self.config), self.config.ema_buffers)
        self.schedule.update()

    @torch.no_grad()
    def predict(self, image: torch.Tensor) -> torch.Tensor:
        return (self.student if self.config.evaluate == "student" else self.teacher)(image)

