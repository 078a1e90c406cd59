"""ABD — Adaptive Bidirectional Displacement (Chi et al., CVPR 2024), the BCP variant of the official code
(chy-upc/ABD ``code/train_ACDC_BCP.py``, ``code/utils/displacement.py``): BCP's pre-train, then two students
(model1 on weak, model2 on strong views) with BCP's copy-paste losses, cross-supervising each other with Dice on
the mixed images and again on images made by ABD-R's patch displacement.

Stage ``pretrain``: BCP's, unchanged (model1). Stage ``train``: model1, model2 and one EMA teacher (of model1, 0.99,
whole state) all start from the pre-train's best checkpoint, each student with that checkpoint's SGD state. The
teacher, in train mode, labels the weak and the strong unlabeled halves (largest component per class). Strong views
(``WeakStrongAugment``): cutout with p 0.5 (2-40 % of the image, aspect 0.3-3.3, pixels 0 or 1 at random, the
label set to background there) then colour jitter (brightness and contrast in [0.2, 1.8], always). Each student
gets BCP's mixed loss on its own view; the students cross-supervise with Dice on each other's argmax over the 12
mixed images, and ABD-R builds 24 new images from the mixed ones: the 256² input cut into a 4 x 4 grid of 64²
patches, the least confident patch of each view replaced by a confident patch of the other view, chosen with
p 0.5 among the top 4 by the KL criterion, else the most confident; both students predict them and cross-supervise
with Dice again. loss = sum over students of (Dice + CE)/2 + the two Dice terms, weight 1, no ramp; constant SGD
0.01. ABD-I is not used in this variant (the maintainer, ABD issue 6). Evaluated: model1, best on val (the
maintainer, ABD issue 12: the BCP variant's test loads ``{}_best_model1.pth``); ``abd.evaluate=model2`` is the
other student.

The official loss code differs from BCP's in one place: ABD's ``losses.py`` predates BCP's fix of its masked Dice
(BCP issue 25), so the background class's Dice is taken over the whole image, not the region
(``abd.dice_mask=background-unmasked``, the default here because that is the code that produced ABD's numbers).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from ssbench.errors import ConfigError
from ssbench.methods.api import Batch, MethodContext, Stage, StepInfo
from ssbench.methods.bcp import BCP, BCPConfig, DiceMask, halves
from ssbench.methods.blocks.losses import dice_loss
from ssbench.methods.blocks.strong import BOX_CANDIDATES, color_jitter, first_fitting_box

Probability = Annotated[float, Field(ge=0, le=1)]


@dataclass(frozen=True)
class ABDConfig(BCPConfig):
    dice_mask: Annotated[DiceMask, Field(description=(
        "region Dice of the mixed loss: ABD's losses.py takes the background over the whole image"))
    ] = "background-unmasked"
    grid: Annotated[int, Field(ge=1, description=(
        "ABD-R cuts the input into grid x grid patches (h_size = w_size = 4: 64 x 64 at 256)"))] = 4
    top_num: Annotated[int, Field(ge=1, description="confident patches among which the KL criterion chooses")] = 4
    kl_p: Annotated[Probability, Field(description=(
        "per image, the probability that ABD-R chooses by the KL criterion (else the most confident patch)"))] = 0.5
    cross_weight: Annotated[float, Field(ge=0, description=(
        "weight of each cross pseudo-supervision Dice term (mixed and displaced images; no ramp)"))] = 1.0
    cutout_p: Annotated[Probability, Field(description="probability of the strong view's cutout")] = 0.5
    jitter: Annotated[float, Field(ge=0, le=1, description=(
        "strong view: brightness and contrast factors in [1 - jitter, 1 + jitter] (ColorJitter(0.8, 0.8, 0.8, 0.2))"
    ))] = 0.8
    jitter_p: Annotated[Probability, Field(description="probability of the colour jitter (always)")] = 1.0
    evaluate: Annotated[Literal["model1", "model2"], Field(description=(
        "the student evaluated and selected on val: model1 (weak view; the maintainer's test) or model2"))
    ] = "model1"


def cutout_boxes(n: int, size: int, p: float, device, g: torch.Generator | None = None,
                 area=(0.02, 0.4), ratio=(0.3, 1 / 0.3)) -> torch.Tensor:
    """ABD's ``cutout_gray`` boxes: with probability p, a box whose area fraction, aspect ratio and corner are all
    drawn again until it fits (unlike UniMatch's CutMix, which keeps the area); (n, size, size) bool. Drawn on the
    device as parallel candidates, the first that fits taken (``strong.cutmix_boxes`` does the same)."""
    u = torch.rand(n, device=device, generator=g)
    cand = torch.rand(n, BOX_CANDIDATES, 4, device=device, generator=g)
    target = (area[0] + (area[1] - area[0]) * cand[..., 0]) * size * size
    r = ratio[0] + (ratio[1] - ratio[0]) * cand[..., 1]
    w = torch.sqrt(target / r).floor()  # erase_w: columns
    h = torch.sqrt(target * r).floor()  # erase_h: rows
    x0 = (cand[..., 2] * size).floor().clamp(max=size - 1)
    y0 = (cand[..., 3] * size).floor().clamp(max=size - 1)
    return first_fitting_box(w, h, x0, y0, size) & (u < p).view(n, 1, 1)


def abd_strong_view(image: torch.Tensor, label: torch.Tensor, cfg: ABDConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """ABD's strong view of weakly augmented slices: cutout (random 0/1 pixels, background label) then colour
    jitter, each slice with its own draw. Returns (image, label)."""
    b, _, size, _ = image.shape
    box = cutout_boxes(b, size, cfg.cutout_p, image.device).unsqueeze(1)
    noise = torch.randint(0, 2, image.shape, device=image.device).to(image.dtype)
    image = torch.where(box, noise, image)
    label = torch.where(box[:, 0], torch.zeros_like(label), label)
    return color_jitter(image, None, cfg.jitter, cfg.jitter, cfg.jitter_p), label


def _patches(x: torch.Tensor, grid: int) -> torch.Tensor:
    """(..., H, W) -> (..., grid * grid, patch pixels): einops 'b (h p1) (w p2) -> b (h w) (p1 p2)'."""
    *lead, h, w = x.shape
    p, q = h // grid, w // grid
    x = x.reshape(*lead, grid, p, grid, q).transpose(-3, -2)
    return x.reshape(*lead, grid * grid, p * q)


def _unpatch(x: torch.Tensor, grid: int, h: int, w: int) -> torch.Tensor:
    *lead, _, _ = x.shape
    p, q = h // grid, w // grid
    return x.reshape(*lead, grid, grid, p, q).transpose(-3, -2).reshape(*lead, h, w)


def abd_r(conf1: torch.Tensor, conf2: torch.Tensor, image1: torch.Tensor, image2: torch.Tensor,
          logits1: torch.Tensor, logits2: torch.Tensor, use_kl: torch.Tensor, grid: int = 4,
          top_num: int = 4) -> torch.Tensor:
    """ABD-R (``ABD_R_BCP``): per image i, the least confident patch ``b`` of view 1 is replaced by patch ``c`` of
    view 2, then the least confident patch ``d`` of view 2 by patch ``a`` of the (already displaced) view 1.
    Confidence of a patch: its mean max-softmax. With ``use_kl[i]``: ``a`` is, among view 1's ``top_num`` most
    confident patches, the one whose mean-logit class distribution is closest (KL) to that of view 2's least
    confident patch, and ``c`` likewise the other way; otherwise ``a`` and ``c`` are the most confident patches.

    conf (B, H, W), image (B, 1, H, W), logits (B, K, H, W); returns (2B, H, W): view 1's images, then view 2's."""
    b_, _, h, w = image1.shape
    rows = torch.arange(b_, device=image1.device)
    mean1, mean2 = _patches(conf1.detach(), grid).mean(-1), _patches(conf2.detach(), grid).mean(-1)  # (B, N)
    img1, img2 = _patches(image1[:, 0], grid), _patches(image2[:, 0], grid)  # (B, N, P)
    out1 = _patches(logits1.detach().float(), grid).mean(-1).transpose(1, 2)  # (B, N, K); float32 under bf16 autocast
    out2 = _patches(logits2.detach().float(), grid).mean(-1).transpose(1, 2)
    top1, top2 = mean1.topk(top_num, dim=1).indices, mean2.topk(top_num, dim=1).indices  # (B, T)
    low1, low2 = mean1.argmin(1), mean2.argmin(1)  # b, d

    def kl(top, outs, target):  # kl_div(log(softmax(top_j)), softmax(target), 'sum') for each j
        logp = outs.gather(1, top.unsqueeze(-1).expand(-1, -1, outs.shape[-1])).softmax(-1).log()  # (B, T, K)
        q = target.softmax(-1).unsqueeze(1)
        return F.kl_div(logp, q.expand_as(logp), reduction="none").sum(-1)  # (B, T)

    a_kl = top1.gather(1, kl(top1, out1, out2[rows, low2]).argmin(1, keepdim=True)).squeeze(1)
    c_kl = top2.gather(1, kl(top2, out2, out1[rows, low1]).argmin(1, keepdim=True)).squeeze(1)
    a = torch.where(use_kl, a_kl, mean1.argmax(1))
    c = torch.where(use_kl, c_kl, mean2.argmax(1))
    new1 = img1.clone()
    new1[rows, low1] = img2[rows, c]
    new2 = img2.clone()
    new2[rows, low2] = new1[rows, a]
    return _unpatch(torch.cat([new1, new2]), grid, h, w)


class ABD(BCP):
    name = "abd"
    display_name = "ABD"
    Config = ABDConfig

    @classmethod
    def check_config(cls, cfg) -> None:
        super().check_config(cfg)
        size, grid = cfg.data.train_size, cfg.method_config.grid
        if size % grid or cfg.method_config.top_num > grid * grid:
            raise ConfigError(f"abd.grid={grid}, abd.top_num={cfg.method_config.top_num}: the {size}-pixel input "
                              f"must split into {grid} x {grid} equal patches, at least top_num of them")

    def __init__(self, config: ABDConfig, ctx: MethodContext):
        super().__init__(config, ctx)  # student = model1 (weak view), teacher = its EMA
        self.model2 = copy.deepcopy(self.student)  # strong view; replaced by the pre-train's best at stage 'train'

    def optimizer_params(self):
        return {"model1": list(self.student.parameters()), "model2": list(self.model2.parameters())}

    def stages(self) -> list[Stage]:
        return [Stage("pretrain", self.config.pretrain_iters, uses_unlabeled=False, optimizers=("model1",)),
                Stage("train", self.ctx.total_iters, optimizer_from=(("model2", "model1"),))]

    def begin_stage(self, stage: Stage) -> None:
        super().begin_stage(stage)
        self.model2.load_state_dict(self.student.state_dict())

    def training_step(self, labeled: Batch, unlabeled: Batch | None, step: StepInfo) -> dict[str, torch.Tensor]:
        if step.stage == "pretrain":
            return self.pretrain_step(self.student, labeled)
        cfg = self.config
        with torch.no_grad():
            strong_l, strong_lab = abd_strong_view(labeled.image, labeled.label, cfg)
            strong_u, _ = abd_strong_view(unlabeled.image, torch.zeros_like(unlabeled.image[:, 0], dtype=torch.long), cfg)
        pseudo_a, pseudo_b, pseudo_a_s, pseudo_b_s = self.pseudo_labels(*halves(unlabeled.image), *halves(strong_u))
        mask = self.mask(labeled.image)
        dice1, ce1, out1, mixed1 = self.bidirectional(self.student, labeled.image, labeled.label, unlabeled.image,
                                                      pseudo_a, pseudo_b, mask)
        dice2, ce2, out2, mixed2 = self.bidirectional(self.model2, strong_l, strong_lab, strong_u, pseudo_a_s,
                                                      pseudo_b_s, mask)
        soft1, soft2 = out1.float().softmax(1), out2.float().softmax(1)
        conf1, label1 = soft1.detach().max(1)
        conf2, label2 = soft2.detach().max(1)
        cross1, cross2 = dice_loss(soft1, label2), dice_loss(soft2, label1)

        # ABD-R on the mixed images of both views (in their order: the unlabeled-a mixes, then the labeled-b ones).
        use_kl = torch.rand(out1.shape[0], device=out1.device) < cfg.kl_p
        displaced = abd_r(conf1, conf2, mixed1, mixed2, out1, out2, use_kl, cfg.grid, cfg.top_num).unsqueeze(1)
        soft3 = self.student(displaced).float().softmax(1)
        soft4 = self.model2(displaced).float().softmax(1)
        cross3 = dice_loss(soft3, soft4.detach().argmax(1))
        cross4 = dice_loss(soft4, soft3.detach().argmax(1))

        w = cfg.cross_weight
        loss1 = (dice1 + ce1) / 2 + w * (cross1 + cross3)
        loss2 = (dice2 + ce2) / 2 + w * (cross2 + cross4)
        return {"loss": loss1 + loss2, "loss_model1": loss1.detach(), "loss_model2": loss2.detach(),
                "loss_cross_mixed": (cross1 + cross2).detach(), "loss_cross_displaced": (cross3 + cross4).detach()}

    @torch.no_grad()
    def predict(self, image: torch.Tensor) -> torch.Tensor:
        return (self.student if self.config.evaluate == "model1" else self.model2)(image)

    def evaluated_model(self) -> str:
        return self.config.evaluate
