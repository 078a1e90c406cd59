"""UniMatch (Yang et al., CVPR 2023), medical branch: weak-to-strong consistency with two strong views (colour
jitter, blur, CutMix) and a feature-perturbed weak view decoded in the same pass. ``fixmatch`` is its special case
with one strong view and no feature perturbation, registered as a method of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import torch
from pydantic import Field
from torch import nn

from ssbench.methods.api import Batch, Method, MethodContext, StepInfo
from ssbench.methods.blocks.losses import ce_dice_loss, dice_loss
from ssbench.methods.blocks.strong import cutmix_boxes, strong_view
from ssbench.methods.blocks.unet import UNetConfig


# Field types that FixMatchConfig re-declares with other defaults keep their constraints through these aliases.
StrongViews = Annotated[int, Field(ge=1, description="strong views per unlabeled image")]
FeaturePerturbation = Annotated[bool, Field(
    description="Dropout2d on every encoder level, decoded with the clean features")]
WeightS = Annotated[float, Field(ge=0, description="loss = (x + w_s * (s1 + s2) + w_fp * fp) / 2")]
WeightFP = Annotated[float, Field(ge=0, description="weight of the feature-perturbed view's loss")]
Probability = Annotated[float, Field(ge=0, le=1)]


@dataclass(frozen=True)
class UniMatchConfig(UNetConfig):
    conf_thresh: Annotated[Probability, Field(
        description="pixels whose weak-view confidence is below are ignored")] = 0.95
    strong_views: StrongViews = 2
    feature_perturbation: FeaturePerturbation = True
    fp_dropout: Annotated[Probability, Field(description="channel dropout rate of the feature perturbation")] = 0.5
    weight_s: WeightS = 0.25
    weight_fp: WeightFP = 0.5
    cutmix_p: Annotated[Probability, Field(description="probability that a strong view gets a CutMix box")] = 0.5


@dataclass(frozen=True)
class FixMatchConfig(UniMatchConfig):
    strong_views: StrongViews = 1
    feature_perturbation: FeaturePerturbation = False
    weight_s: WeightS = 1.0  # loss = (x + s) / 2
    weight_fp: WeightFP = 0.0


def mix_pseudo_labels(label, conf, mix_label, mix_conf, box):
    """Inside each sample's CutMix box the source image's pseudo-label and confidence apply.

    label, conf: (B, H, W); box: (B, H, W) bool."""
    return torch.where(box, mix_label, label), torch.where(box, mix_conf, conf)


def decode_with_fp(net, x: torch.Tensor, drop: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """One encoder pass, decoded twice in one batch: clean, and with ``drop`` (Dropout2d) on every encoder level
    (UniMatch's ``model(x, need_fp=True)``). Returns (clean logits, perturbed logits)."""
    feats = net.encode(x)
    return net.decode([torch.cat([f, drop(f)]) for f in feats]).chunk(2)


def unlabeled_dice(logits: torch.Tensor, pseudo: torch.Tensor, conf: torch.Tensor, thresh: float) -> torch.Tensor:
    """Dice over all classes on the pixels whose pseudo-label confidence reaches ``thresh``."""
    return dice_loss(logits.softmax(1), pseudo, ignore=conf < thresh)


class UniMatch(Method):
    name = "unimatch"
    display_name = "UniMatch"
    Config = UniMatchConfig
    uses_unlabeled = True
    unlabeled_batch_multiplier = 2  # a second unlabeled stream: the CutMix sources (UniMatch's trainloader_u_mix)

    @classmethod
    def recipe_overrides(cls, recipe: str) -> dict:
        # UniMatch's own length: 300 passes over the unlabeled slices (len(trainloader_u) = slices // 12 steps
        # each, the rest dropped: 31,800 / 30,900 / 29,400 iterations for 1 / 3 / 7 labeled ACDC patients),
        # validated once per pass. The CPU recipe keeps its 600 iterations.
        if recipe == "published":
            return {"schedule": "epochs", "epochs": 300, "val_every": "epoch"}
        return {}

    def __init__(self, config: UniMatchConfig, ctx: MethodContext):
        super().__init__(config, ctx)
        self.net = config.build_unet(ctx.in_channels, ctx.num_classes)
        self.fp_drop = nn.Dropout2d(config.fp_dropout)

    def training_step(self, labeled: Batch, unlabeled: Batch | None, step: StepInfo) -> dict[str, torch.Tensor]:
        cfg = self.config
        u_w, u_mix = unlabeled.image.chunk(2)
        b, _, h, w = u_w.shape
        n_lab = labeled.image.shape[0]

        with torch.no_grad():  # pseudo-labels of the CutMix sources, model in eval mode as in the original
            self.net.eval()
            mix_probs = self.net(u_mix).softmax(1)
            mix_conf, mix_label = mix_probs.max(1)
            self.net.train()

        strong, boxes = [], []
        for _ in range(cfg.strong_views):
            s = strong_view(u_w)
            s_mix = strong_view(u_mix)
            box = cutmix_boxes(b, h, p=cfg.cutmix_p, device=u_w.device)
            strong.append(torch.where(box.unsqueeze(1), s_mix, s))
            boxes.append(box)

        x = torch.cat([labeled.image, u_w])
        if cfg.feature_perturbation:
            logits, logits_fp = decode_with_fp(self.net, x, self.fp_drop)
            logits_u_fp = logits_fp[n_lab:]
        else:
            logits = self.net(x)
        logits_x, logits_u_w = logits[:n_lab], logits[n_lab:]
        logits_s = self.net(torch.cat(strong)).chunk(cfg.strong_views)

        with torch.no_grad():
            conf, pseudo = logits_u_w.detach().softmax(1).max(1)

        loss_x = ce_dice_loss(logits_x, labeled.label)
        out = {"loss_x": loss_x.detach()}
        total = loss_x
        for i, (logit_s, box) in enumerate(zip(logits_s, boxes), start=1):
            p_mix, c_mix = mix_pseudo_labels(pseudo, conf, mix_label, mix_conf, box)
            loss_s = unlabeled_dice(logit_s, p_mix, c_mix, cfg.conf_thresh)
            total = total + cfg.weight_s * loss_s
            out[f"loss_s{i}"] = loss_s.detach()
        if cfg.feature_perturbation:
            loss_fp = unlabeled_dice(logits_u_fp, pseudo, conf, cfg.conf_thresh)
            total = total + cfg.weight_fp * loss_fp
            out["loss_fp"] = loss_fp.detach()
        out["loss"] = total / 2.0
        out["conf_ratio"] = (conf >= cfg.conf_thresh).float().mean()
        return out

    @torch.no_grad()
    def predict(self, image: torch.Tensor) -> torch.Tensor:
        return self.net(image)  # logits: UniMatch's bilinear evaluation resizes logits


class FixMatch(UniMatch):
    """FixMatch: one strong view (colour jitter, blur, CutMix), no feature perturbation, loss (x + s) / 2."""

    name = "fixmatch"
    display_name = "FixMatch"
    Config = FixMatchConfig
