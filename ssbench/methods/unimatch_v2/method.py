"""UniMatch V2 (Yang et al., TPAMI 2025; LiheYoung/UniMatch-V2 ``unimatch_v2.py`` at f6afb4d), ported to 2-D
medical slices. V2 has no medical release: this is a PORT, not a reproduction. What is V2's and what is ours:

V2's, as its code runs it:
* network: DINOv2 ViT-S/14 + DPT head (``network.py``), weights of the official DINOv2 release;
* an EMA teacher, alpha = min(1 - 1/(iteration + 1), 0.996), parameters and buffers, in eval mode, predicts the
  weak view; pseudo-label = its argmax, confidence = its max softmax;
* two strong views of each unlabeled slice (colour jitter p 0.8, blur p 0.5; V2's grayscale p 0.2 and its
  saturation/hue jitter leave a one-channel slice unchanged), each with its own CutMix box (p 0.5) pasted from the
  batch in reverse order (``flip(0)``, as V2), the pseudo-labels and confidences mixed the same way;
* both strong views through the student in one batch with complementary channel dropout on the four token levels
  (``perturb.complementary_masks``: for half of the images both views keep every channel);
* unlabeled loss per view: cross-entropy on the pixels whose confidence reaches 0.95, summed and divided by ALL
  non-ignored pixels (not by the confident ones); loss = (loss_x + (loss_s1 + loss_s2) / 2) / 2, loss_x = CE;
* AdamW (betas 0.9, 0.999; weight decay 0.01), lr 5e-6 for the backbone and 40 x for the head, poly 0.9 with the
  LR set after each step (``optimizer_params`` with ``lr_scale``);
* the best checkpoint by the student's score (V2 keeps ``best.pth`` on the student's mIoU).

Ours (the port): one input channel repeated to RGB and normalised with ImageNet's statistics; the slice size fitted
to the patch size 14 (``fit``: V2's own evaluation resize to the nearest multiple by default, 256 -> 252 and
128 -> 126, logits resized back; or zero padding); the benchmark's weak augmentation (rotation/flip) instead of
V2's random rescale, crop and flip; the medical UniMatch's ACDC schedule (batch 12 + 12, 300 passes over the
unlabeled slices, validated once per pass) instead of V2's natural-image epochs; no ignore label (every pixel of a
slice is valid). ``supervised_loss=ce-dice`` switches loss_x to the medical literature's (CE + Dice)/2.

Weights: ``--set unimatch-v2.checkpoint=PATH`` (an official ``dinov2_vit{s,b,l}14_pretrain.pth``), else the cache
``$SSBENCH_CACHE/dinov2/`` (default ``~/.cache/ssbench/dinov2/``); nothing is downloaded. Without them on real
data the run stops before it starts; on the embedded phantom it trains from a RANDOM initialisation, with a loud
warning, and records ``init: random`` in its config (its own folder ``unimatch-v2@init=random`` and hash).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from ssbench.errors import ConfigError, UserError
from ssbench.methods.blocks import perturb
from ssbench.methods.api import Batch, Method, MethodContext, StepInfo
from ssbench.methods.blocks.ema import ema_alpha, ema_update, freeze
from ssbench.methods.blocks.losses import ce_dice_loss
from ssbench.methods.blocks.strong import cutmix_boxes, strong_view
from ssbench.methods.unimatch_v2 import network

Probability = Annotated[float, Field(ge=0, le=1)]


@dataclass(frozen=True)
class UniMatchV2Config:
    backbone: Annotated[Literal["small", "base", "large"], Field(
        description="DINOv2 ViT size (V2's configs: small by default)")] = "small"
    init: Annotated[Literal["pretrained", "random"], Field(description=(
        "pretrained DINOv2 (V2) or random; on the embedded phantom without weights the run records random"))
    ] = "pretrained"
    checkpoint: Annotated[str | None, Field(description=(
        "an official DINOv2 .pth (dinov2_vits14_pretrain.pth); none: the cache folder"))] = None
    cache_dir: Annotated[str | None, Field(
        description="where official DINOv2 files are looked for (default $SSBENCH_CACHE/dinov2)")] = None
    fit: Annotated[Literal["resize", "pad"], Field(description=(
        "slice size to a multiple of 14: resize to the nearest (V2's evaluation; 256 -> 252) or zero-pad (-> 266)"))
    ] = "resize"
    conf_thresh: Annotated[Probability, Field(description="pseudo-label confidence threshold (V2 configs)")] = 0.95
    ema_decay: Annotated[Probability, Field(
        description="teacher EMA: alpha = min(1 - 1/(iteration + 1), ema_decay)")] = 0.996
    lr_multiplier: Annotated[float, Field(gt=0, description="the DPT head's lr = train.lr x this (V2: lr_multi)")
                             ] = 40.0
    lock_backbone: Annotated[bool, Field(description="freeze DINOv2 (V2's lock_backbone; false for Pascal)")] = False
    complementary_dropout: Annotated[bool, Field(
        description="complementary channel dropout between the two strong views (V2)")] = True
    cutmix_p: Annotated[Probability, Field(description="probability that a strong view gets a CutMix box")] = 0.5
    supervised_loss: Annotated[Literal["ce", "ce-dice"], Field(
        description="loss on labeled slices: V2's CE, or the medical literature's (CE + Dice)/2")] = "ce"
    evaluate: Annotated[Literal["student", "teacher"], Field(
        description="the network evaluated (V2 keeps the best checkpoint by the student)")] = "student"


def weights_file(cfg: UniMatchV2Config) -> Path:
    """The official DINOv2 file this config loads: ``checkpoint``, else the cache folder's official file name."""
    if cfg.checkpoint:
        return Path(cfg.checkpoint)
    if cfg.cache_dir:
        return Path(cfg.cache_dir) / network.OFFICIAL_FILES[cfg.backbone]
    from ssbench.datasets.synthetic import cache_root

    return cache_root() / "dinov2" / network.OFFICIAL_FILES[cfg.backbone]


def unlabeled_ce(logits: torch.Tensor, pseudo: torch.Tensor, conf: torch.Tensor, thresh: float,
                 ignore: torch.Tensor | None = None) -> torch.Tensor:
    """V2's unlabeled loss: per-pixel CE on the confident (>= thresh), non-ignored pixels, summed, divided by all
    non-ignored pixels (B x H x W without an ignore mask)."""
    ce = F.cross_entropy(logits.float(), pseudo, reduction="none")
    keep = conf >= thresh
    if ignore is None:
        return (ce * keep).sum() / ce.numel()
    return (ce * (keep & ~ignore)).sum() / (~ignore).sum()


def mix_targets(pseudo: torch.Tensor, conf: torch.Tensor, box: torch.Tensor):
    """Inside each CutMix box the reversed batch's pseudo-label and confidence apply (V2: ``.flip(0)``)."""
    return torch.where(box, pseudo.flip(0), pseudo), torch.where(box, conf.flip(0), conf)


def mix_view(s: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
    """A strong view with each image's CutMix box pasted from the reversed batch (V2: ``img_u_s1.flip(0)``)."""
    return torch.where(box.unsqueeze(1), s.flip(0), s)


def v2_loss(logits_x: torch.Tensor, label: torch.Tensor, logits_s: list[torch.Tensor], targets: list[tuple],
            thresh: float, supervised: str = "ce") -> dict[str, torch.Tensor]:
    """(loss_x + (loss_s1 + loss_s2) / 2) / 2 (unimatch_v2.py:202-204); ``targets``: the (pseudo-label,
    confidence) of each view, CutMix applied."""
    if supervised == "ce":
        loss_x = F.cross_entropy(logits_x.float(), label)
    else:
        loss_x = ce_dice_loss(logits_x.float(), label)
    loss_s = [unlabeled_ce(logits, *target, thresh) for logits, target in zip(logits_s, targets)]
    out = {"loss": (loss_x + sum(loss_s) / len(loss_s)) / 2.0, "loss_x": loss_x}
    out.update({f"loss_s{i}": v for i, v in enumerate(loss_s, start=1)})
    return out


class UniMatchV2(Method):
    """UniMatch V2 (a port to 2-D slices): DINOv2 + DPT, EMA teacher, two CutMix strong views with complementary
    channel dropout."""

    name = "unimatch-v2"
    display_name = "UniMatch V2"
    Config = UniMatchV2Config
    uses_unlabeled = True

    @classmethod
    def recipe_overrides(cls, recipe: str) -> dict:
        # V2: AdamW (betas 0.9, 0.999, weight decay 0.01), lr 5e-6 (x40 for the head), poly 0.9. The length and
        # batch are the medical UniMatch's ACDC schedule (a port choice: V2 has no medical config).
        common = {"optimizer": "adamw", "lr": 5e-6, "weight_decay": 0.01}
        if recipe == "cpu-small":  # ViT-S on 2 CPU cores: a smoke run of the pipeline
            return {**common, "iters": 40, "batch_labeled": 2, "batch_unlabeled": 2, "val_every": 20,
                    "checkpoint_every": 20}
        return {**common, "schedule": "epochs", "epochs": 300, "val_every": "epoch"}

    @classmethod
    def resolve_config(cls, config: UniMatchV2Config, synthetic: bool) -> UniMatchV2Config:
        """The effective initialisation, recorded: without weights on the embedded phantom, ``init: random``."""
        if config.init == "random":
            return config
        file = weights_file(config)
        if file.is_file():
            return config
        if config.checkpoint:
            raise ConfigError(f"unimatch-v2.checkpoint {file}: file not found")
        if synthetic:
            return replace(config, init="random")
        raise UserError(f"unimatch-v2: no DINOv2 {config.backbone} weights at {file}: put the official "
                        f"{network.OFFICIAL_FILES[config.backbone]} there or pass --set unimatch-v2.checkpoint=PATH "
                        "(or --set unimatch-v2.init=random)")

    @classmethod
    def for_evaluation(cls, config):
        return replace(config, init="random", checkpoint=None)  # the run's checkpoint holds every weight

    def __init__(self, config: UniMatchV2Config, ctx: MethodContext):
        super().__init__(config, ctx)
        if ctx.in_channels not in (1, 3):
            raise ConfigError(f"unimatch-v2: {ctx.in_channels} input channels; DINOv2 reads 1 (repeated) or 3")
        self.student = network.Segmenter(config.backbone, ctx.num_classes, config.fit)
        self.warnings.append(
            "UniMatch V2 is a PORT: V2 has no medical release. V2's network, teacher, strong views, complementary "
            "dropout, losses and optimizer; ssbench's one-channel input, fit to the patch size "
            f"(unimatch-v2.fit={config.fit}), weak augmentation and schedule (see ssbench/methods/unimatch_v2)")
        if not ctx.weights_from_checkpoint:
            if config.init == "pretrained":
                network.load_official(self.student.dpt.backbone, weights_file(config), config.backbone)
            else:
                self.warnings.append(
                    f"UniMatch V2: DINOv2 {config.backbone} RANDOMLY INITIALISED (unimatch-v2.init=random; the "
                    f"pretrained file is looked for at {weights_file(config)}): not V2's pretrained backbone, and "
                    "these numbers say nothing about UniMatch V2")
        if config.lock_backbone:
            freeze(self.student.dpt.backbone)
        self.teacher = freeze(copy.deepcopy(self.student))

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()  # V2: model_ema.eval()
        return self

    def optimizer_params(self):
        dpt = self.student.dpt
        backbone = [p for p in dpt.backbone.parameters() if p.requires_grad]
        groups = [{"params": list(dpt.head.parameters()), "lr_scale": self.config.lr_multiplier}]
        return {"main": ([{"params": backbone}] if backbone else []) + groups}

    def trainable_parameters(self):
        return [p for p in self.student.parameters() if p.requires_grad]

    def training_step(self, labeled: Batch, unlabeled: Batch | None, step: StepInfo) -> dict[str, torch.Tensor]:
        cfg = self.config
        u_w = unlabeled.image
        b, size = u_w.shape[0], u_w.shape[-1]
        with torch.no_grad():
            probs = self.teacher(u_w).float().softmax(1)
            conf, pseudo = probs.max(1)
        views, targets = [], []
        for _ in range(2):
            s = strong_view(u_w)  # V2's dataset: each view's augmentation, then its box
            box = cutmix_boxes(b, size, p=cfg.cutmix_p, device=u_w.device)
            views.append(mix_view(s, box))
            targets.append(mix_targets(pseudo, conf, box))
        logits_x = self.student(labeled.image)
        drop = None
        if cfg.complementary_dropout:
            first, second = perturb.complementary_masks(b, (self.student.dpt.backbone.embed_dim,), u_w.device)
            drop = torch.cat([first[0], second[0]])
        logits_s = self.student(torch.cat(views), drop).chunk(2)
        out = v2_loss(logits_x, labeled.label, list(logits_s), targets, cfg.conf_thresh, cfg.supervised_loss)
        return {**{k: v if k == "loss" else v.detach() for k, v in out.items()},
                "conf_ratio": (conf >= cfg.conf_thresh).float().mean()}

    def after_optimizer_step(self, step: StepInfo) -> None:
        ema_update(self.teacher, self.student, ema_alpha(step.iteration, self.config.ema_decay))

    @torch.no_grad()
    def predict(self, image: torch.Tensor) -> torch.Tensor:
        net = self.student if self.config.evaluate == "student" else self.teacher
        return net(image)
