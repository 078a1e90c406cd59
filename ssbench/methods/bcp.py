"""BCP — Bidirectional Copy-Paste (Bai et al., CVPR 2023), the ACDC recipe of the official code
(DeepMed-Lab-ECNU/BCP ``code/ACDC_BCP_train.py``): a labeled-only pre-train on copy-pasted pairs of labeled
slices, then a mean teacher whose largest-component pseudo-labels supervise two bidirectionally copy-pasted images.

Stage ``pretrain`` (``pre_train``, ``pretrain_iters`` = 10,000 steps): the labeled batch is split in halves a and
b; ``a`` outside a zero box of 2/3 x 2/3 of the image (``generate_mask``: one box per batch, its corner uniform
in [0, size - box)), ``b`` inside it; the target is mixed the same way; loss (Dice + CE)/2 with both regions
weighted 1. Stage ``train`` (``self_train``, ``train.iters`` = 30,000): student and teacher start from the
pre-train's best checkpoint (the student with its SGD state, which the engine restores); the teacher, in train
mode as in the official code, predicts the unlabeled halves (one forward each), the argmax is reduced to the
largest connected component per class; the student sees unlabeled-a with a labeled-a box pasted in and labeled-b
with an unlabeled-b box pasted in (one forward each), the pseudo-labelled region weighted ``u_weight`` = 0.5 and
the ground truth 1; loss (Dice + CE)/2 over both; EMA 0.99 over the teacher's whole state (BN buffers included),
from the first step. SGD 0.01 with a constant learning rate in both stages (the official loops never set it).
Evaluated: the student, best on val (``unet_best_model.pth``). Where this file and the official code were
compared: benchmarks/peer_check.py (``--bcp``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from ssbench.errors import ConfigError
from ssbench.methods.api import Batch, Method, MethodContext, Stage, StepInfo
from ssbench.methods.blocks.ema import ema_update, freeze
from ssbench.methods.blocks.postprocess import largest_component_per_class
from ssbench.methods.blocks.unet import UNetConfig

# BCP's DiceLoss with a mask. 'masked': every class over the region (BCP's code since a925e30, 2023-10-29, its
# issue 25); 'background-unmasked': the background class over the whole image, as BCP's code before that fix
# (when its paper's numbers were produced) and ABD's code (which copied it) compute it.
DiceMask = Literal["masked", "background-unmasked"]
MASKED_DICE_SMOOTH = 1e-10  # BCP's and ABD's _dice_mask_loss


@dataclass(frozen=True)
class BCPConfig(UNetConfig):
    pretrain_iters: Annotated[int, Field(ge=1, description=(
        "steps of the labeled-only pre-train stage (--pre_iterations); train.iters: the self-training stage's"))
    ] = 10000
    box_fraction: Annotated[float, Field(gt=0, lt=1, description=(
        "side of the pasted box as a fraction of the image side (int(size * 2/3): 170 at 256)"))] = 2 / 3
    u_weight: Annotated[float, Field(ge=0, description="weight of the pseudo-labelled region (ground truth: 1)")] = 0.5
    ema_decay: Annotated[float, Field(ge=0, le=1, description="teacher EMA decay, constant from the first step")] = 0.99
    ema_buffers: Annotated[bool, Field(description=(
        "average BatchNorm buffers too (the official update_model_ema averages the whole state_dict)"))] = True
    teacher_mode: Annotated[Literal["train", "eval"], Field(
        description="teacher dropout/BN mode when it predicts pseudo-labels (the official code: train)")] = "train"
    pseudo_lcc: Annotated[bool, Field(description=(
        "keep only the largest connected component of each class in the pseudo-labels (get_ACDC_2DLargestCC)"))] = True
    lcc_connectivity: Annotated[Literal[4, 8], Field(
        description="pixel connectivity of the components (skimage's default in 2-D, the official code's: 8)")] = 8
    dice_mask: Annotated[DiceMask, Field(description=(
        "region Dice of the mixed loss: masked (BCP since its fix a925e30) or background-unmasked (before it)"))
    ] = "masked"


def box_size(size: int, fraction: float) -> int:
    return int(size * fraction)


def copy_paste_mask(size: int, fraction: float, device, g: torch.Generator | None = None) -> torch.Tensor:
    """BCP's ``generate_mask``: (size, size) float mask, 0 inside one box of int(size * fraction) pixels a side
    and 1 outside; the box's first row and column uniform in [0, size - side) (``np.random.randint``), drawn on
    ``device`` (no host synchronisation)."""
    side = box_size(size, fraction)
    corner = torch.randint(0, size - side, (2,), device=device, generator=g)
    return box_mask(size, side, corner)


def box_mask(size: int, side: int, corner: torch.Tensor) -> torch.Tensor:
    """1 outside, 0 inside the square box of ``side`` pixels whose first (row, column) is ``corner``."""
    idx = torch.arange(size, device=corner.device)
    rows = (idx >= corner[0]) & (idx < corner[0] + side)
    cols = (idx >= corner[1]) & (idx < corner[1] + side)
    return 1.0 - (rows.view(-1, 1) & cols.view(1, -1)).float()


def paste(outside: torch.Tensor, inside: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``outside * mask + inside * (1 - mask)`` for images (B, C, H, W) or label maps (B, H, W)."""
    if outside.dim() == 4:
        return outside * mask + inside * (1 - mask)
    m = mask.to(outside.dtype)
    return outside * m + inside * (1 - m)


def region_dice(probs: torch.Tensor, target: torch.Tensor, region: torch.Tensor, mode: DiceMask,
                smooth: float = MASKED_DICE_SMOOTH) -> torch.Tensor:
    """BCP's DiceLoss with a mask: per class 1 - (2 sum(p t m) + s) / (sum(p^2 m) + sum(t^2 m) + s), averaged over
    the classes; m = ``region`` (B, H, W) for every class, or for the foreground classes only
    (``background-unmasked``)."""
    k = probs.shape[1]
    onehot = F.one_hot(target.long(), k).permute(0, 3, 1, 2).to(probs.dtype)
    m = region.to(probs.dtype).unsqueeze(1).expand(-1, k, -1, -1)
    if mode == "background-unmasked":
        m = torch.cat([torch.ones_like(m[:, :1]), m[:, 1:]], dim=1)
    dims = (0, 2, 3)
    inter = (probs * onehot * m).sum(dims)
    denom = (probs * probs * m).sum(dims) + (onehot * onehot * m).sum(dims)
    return (1 - (2 * inter + smooth) / (denom + smooth)).mean()


def mix_loss(logits: torch.Tensor, image_label: torch.Tensor, patch_label: torch.Tensor, mask: torch.Tensor,
             image_weight: float, patch_weight: float, dice_mask: DiceMask = "masked"
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """BCP's ``mix_loss``: (Dice, CE) of a copy-pasted image whose own pixels (``mask`` 1) have ``image_label``,
    weighted ``image_weight``, and whose pasted box (``mask`` 0) has ``patch_label``, weighted ``patch_weight``.
    The CE of each region is its mean over the region's pixels."""
    logits = logits.float()
    probs = logits.softmax(1)
    keep = mask.expand(logits.shape[0], -1, -1) if mask.dim() == 2 else mask
    own, box = keep > 0.5, keep < 0.5
    dice = (image_weight * region_dice(probs, image_label, own, dice_mask)
            + patch_weight * region_dice(probs, patch_label, box, dice_mask))
    own_f, box_f = own.float(), box.float()
    ce_own = F.cross_entropy(logits, image_label.long(), reduction="none")
    ce_box = F.cross_entropy(logits, patch_label.long(), reduction="none")
    ce = (image_weight * (ce_own * own_f).sum() / (own_f.sum() + 1e-16)
          + patch_weight * (ce_box * box_f).sum() / (box_f.sum() + 1e-16))
    return dice, ce


def halves(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    n = x.shape[0] // 2
    return x[:n], x[n:]


class BCP(Method):
    name = "bcp"
    display_name = "BCP"
    Config = BCPConfig
    uses_unlabeled = True

    @classmethod
    def recipe_overrides(cls, recipe: str) -> dict:
        return {"lr_schedule": "constant"}  # neither stage of the official code changes the learning rate

    @classmethod
    def eval_overrides(cls, recipe: str) -> dict:
        return {"also_protocols": ["bcp"]}  # its published numbers come from code/test_ACDC.py

    @classmethod
    def short_recipe(cls, config, iters: int, published_iters: int = 30000):
        return replace(config, pretrain_iters=max(1, round(config.pretrain_iters * iters / published_iters)))

    scale_schedule = short_recipe  # it scales schedules only: the same under --iters on any data

    @classmethod
    def check_config(cls, cfg) -> None:
        t = cfg.train
        if t.batch_labeled % 2 or t.batch_labeled != t.batch_unlabeled:
            raise ConfigError(f"train.batch_labeled={t.batch_labeled}, train.batch_unlabeled={t.batch_unlabeled}: "
                              f"{cls.name} splits both into halves that are pasted into each other, so they must be "
                              "equal and even (the recipe: 12 + 12)")

    def __init__(self, config: BCPConfig, ctx: MethodContext):
        super().__init__(config, ctx)
        self.student = config.build_unet(ctx.in_channels, ctx.num_classes)
        self.teacher = freeze(copy.deepcopy(self.student))  # replaced by the pre-train's best at stage 'train'

    def trainable_parameters(self):
        return list(self.student.parameters())

    def stages(self) -> list[Stage]:
        return [Stage("pretrain", self.config.pretrain_iters, uses_unlabeled=False),
                Stage("train", self.ctx.total_iters)]

    def begin_stage(self, stage: Stage) -> None:
        self.teacher.load_state_dict(self.student.state_dict())  # both from the pre-train's best checkpoint

    def train(self, mode: bool = True):
        super().train(mode)
        if mode:
            self.teacher.train(self.config.teacher_mode == "train")
        return self

    def mask(self, image: torch.Tensor) -> torch.Tensor:
        return copy_paste_mask(image.shape[-1], self.config.box_fraction, image.device)

    def pseudo_labels(self, *images: torch.Tensor) -> list[torch.Tensor]:
        """The teacher's pseudo-labels of each unlabeled half in ``images`` (``get_ACDC_masks(output, nms=1)``):
        one teacher forward per half, as the official code (the batch statistics of a train-mode teacher are the
        half's), argmax of the softmax, then the largest component of each class, for all halves in one host
        round trip."""
        with torch.no_grad():
            labels = [self.teacher(x).softmax(1).argmax(1) for x in images]
            if self.config.pseudo_lcc:
                labels = largest_component_per_class(torch.cat(labels), self.ctx.num_classes,
                                                     self.config.lcc_connectivity).split([len(x) for x in images])
        return list(labels)

    def pretrain_step(self, net, labeled: Batch) -> dict[str, torch.Tensor]:
        """``pre_train``: labeled-a outside the box, labeled-b inside, both regions weighted 1."""
        img_a, img_b = halves(labeled.image)
        lab_a, lab_b = halves(labeled.label)
        mask = self.mask(img_a)
        dice, ce = mix_loss(net(paste(img_a, img_b, mask)), lab_a, lab_b, mask, 1.0, 1.0, self.config.dice_mask)
        return {"loss": (dice + ce) / 2, "loss_dice": dice.detach(), "loss_ce": ce.detach()}

    def bidirectional(self, net, labeled_image, labeled_label, unlabeled_image, pseudo_a, pseudo_b, mask):
        """Self-training's two copy-pasted images and their mixed losses (``self_train``): unlabeled-a with a
        labeled-a box, labeled-b with an unlabeled-b box; one forward each. Returns (dice, ce, the logits of both
        and the mixed images, each in that order)."""
        cfg = self.config
        img_a, img_b = halves(labeled_image)
        lab_a, lab_b = halves(labeled_label)
        uimg_a, uimg_b = halves(unlabeled_image)
        mixed_unl, mixed_l = paste(uimg_a, img_a, mask), paste(img_b, uimg_b, mask)
        out_unl, out_l = net(mixed_unl), net(mixed_l)
        unl_dice, unl_ce = mix_loss(out_unl, pseudo_a, lab_a, mask, cfg.u_weight, 1.0, cfg.dice_mask)
        l_dice, l_ce = mix_loss(out_l, lab_b, pseudo_b, mask, 1.0, cfg.u_weight, cfg.dice_mask)
        return unl_dice + l_dice, unl_ce + l_ce, torch.cat([out_unl, out_l]), torch.cat([mixed_unl, mixed_l])

    def training_step(self, labeled: Batch, unlabeled: Batch | None, step: StepInfo) -> dict[str, torch.Tensor]:
        if step.stage == "pretrain":
            return self.pretrain_step(self.student, labeled)
        pseudo_a, pseudo_b = self.pseudo_labels(*halves(unlabeled.image))
        mask = self.mask(labeled.image)
        dice, ce, _, _ = self.bidirectional(self.student, labeled.image, labeled.label, unlabeled.image, pseudo_a,
                                         pseudo_b, mask)
        return {"loss": (dice + ce) / 2, "loss_dice": dice.detach(), "loss_ce": ce.detach()}

    def after_optimizer_step(self, step: StepInfo) -> None:
        if step.stage == "train":
            ema_update(self.teacher, self.student, self.config.ema_decay, self.config.ema_buffers)

    @torch.no_grad()
    def predict(self, image: torch.Tensor) -> torch.Tensor:
        return self.student(image)

    def evaluated_model(self) -> str:
        return "student"
