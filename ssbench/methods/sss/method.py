"""SSS: Semi-Supervised SAM-2 (Zhu et al. 2025, arXiv 2506.08949) with DFE and PCSW, on the real sam2 package.

One training step (every choice below is a config switch with the recorded default):
* labeled slices: SAM-2 prompted from the ground truth (a box per present class, optionally a point),
  BCE + Dice per class mask; a coarse mask head (as in the released code) is trained with the labeled loss too
  (the released code never trains it: ``train_coarse_head``);
* unlabeled slices: weak view x_w (crop, resize, flip, applied by the method itself so that prompt boxes follow
  the geometry), two strong views from x_w (colour jitter, blur, CutMix from a second unlabeled batch; the
  recipe's random grayscale is the identity on grayscale MR/CT); prompts from PCSW on the whole volume of each
  slice (``pcsw = off``: from the slice's own coarse mask); pseudo-labels from the weak prediction;
  DFE(x_w, x_s1) and DFE(x_w, x_s2) on SAM-2's three feature scales before decoding the strong predictions;
* teacher ``unimatch-v2`` (default): an EMA teacher (alpha = min(1 - 1/(it + 1), 0.996)) makes the pseudo-labels,
  pixels with confidence max(p, 1 - p) < 0.95 are ignored, complementary channel dropout on the strong views'
  embeddings, loss = (L_x + (L_s1 + L_s2) / 2) / 2. Teacher ``released``: the student's own weak prediction
  thresholded at 0.5, no EMA, no confidence mask, L = L_x + L_u. UniMatch V2's recipe is the default because the
  released code is schematic and V2's is a published, complete recipe for the same framework.

PCSW reads whole volumes: the engine hands the unlabeled volumes over once (``attach_unlabeled_volumes``) and a
per-volume prompt cache is refreshed from the current model's coarse head every ``pcsw_refresh`` iterations, for
the volumes a batch touches (the cache is part of the checkpoint). One prompt per class per volume.

Multi-class: one prompt (and one decoded mask) per foreground class; the label map takes, per pixel, the class
with the largest mask logit among those above 0 (sigmoid > 0.5), background elsewhere.

Evaluation prompts come from the model itself (coarse head, then PCSW over the test volume); ground-truth prompts
are never used at test time.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ssbench.methods.api import Batch, Method, MethodContext, StepInfo
from ssbench.methods.ema import ema_alpha, ema_update, freeze
from ssbench.methods.losses import ce_dice_loss
from ssbench.methods.sss.dfe import DFE
from ssbench.methods.sss.geometry import Crop, interior_point, mask_box, whole_image_box
from ssbench.methods.sss.pcsw import pcsw
from ssbench.methods.strong import cutmix_box, strong_view


@dataclass(frozen=True)
class SSSConfig:
    model: str = "sam2_hiera_s"  # the paper: Hiera-Small, sam2_hiera_small.pt
    image_size: int = 1024  # SAM-2 input size (slices are resized to it inside the method)
    checkpoint: str | None = None  # an official checkpoint file; None: the cache folder, else download
    init: Literal["pretrained", "random"] = "pretrained"
    cache_dir: str | None = None  # default ~/.cache/ssbench/sam2 (or $SSBENCH_CACHE/sam2)
    dfe: bool = True
    dfe_mode: Literal["add", "replace"] = "add"  # figure: add to the strong features; released code: replace
    pcsw: bool = True
    pcsw_threshold: float = 0.8
    pcsw_connectivity: Literal[6, 26] = 6
    pcsw_refresh: int = 500  # iterations between prompt refreshes of a volume
    # A box per class; with point_prompt also a point: an interior point of the ground truth for labeled slices,
    # PCSW's point for unlabeled slices and at test time (the box centre when pcsw = off).
    point_prompt: bool = False
    train_coarse_head: bool = True
    teacher: Literal["unimatch-v2", "released"] = "unimatch-v2"
    ema_decay: float = 0.996
    conf_thresh: float = 0.95
    complementary_dropout: bool = True  # UniMatch V2, with the unimatch-v2 teacher only
    jitter: tuple[float, float] = (0.4, 0.4)  # brightness, contrast of the strong colour jitter (p 0.8)
    cutmix_p: float = 0.5
    crop_scale: tuple[float, float] = (0.7, 1.0)  # weak view: random square crop of this area fraction, resized
    evaluate: Literal["teacher", "student"] = "teacher"  # UniMatch V2 evaluates the EMA model (student if none)


def box_centres(boxes: torch.Tensor) -> torch.Tensor:
    """(..., 4) x0 y0 x1 y1 -> (..., 2) centre x y."""
    return torch.stack([(boxes[..., 0] + boxes[..., 2]) / 2, (boxes[..., 1] + boxes[..., 3]) / 2], -1)


def mask_loss(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """BCE + soft Dice per mask, averaged. logits/target/valid: (N, S, S); invalid pixels are left out."""
    target = target.float()
    valid = torch.ones_like(target) if valid is None else valid.float()
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    bce = (bce * valid).sum((1, 2)) / valid.sum((1, 2)).clamp_min(1)
    p = torch.sigmoid(logits) * valid
    t = target * valid
    dice = 1 - (2 * (p * t).sum((1, 2)) + 1) / (p.sum((1, 2)) + t.sum((1, 2)) + 1)
    return (bce + dice).mean()


class CoarseHead(nn.Module):
    """Multi-class coarse masks from the 256-ch embedding and the 32-ch S/4 features (PCSW reads these)."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.reduce = nn.Sequential(nn.Conv2d(256, 64, 3, padding=1), nn.ReLU())
        self.fuse = nn.Sequential(nn.Conv2d(64 + 32, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, num_classes, 1))

    def forward(self, feats: list[torch.Tensor], size: int) -> torch.Tensor:
        s0, _, emb = feats
        x = F.interpolate(self.reduce(emb), size=s0.shape[-2:], mode="bilinear", align_corners=False)
        x = self.fuse(torch.cat([x, s0], 1))
        return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


class SAM2Segmenter(nn.Module):
    """SAM-2 plus the coarse head: the unit the EMA teacher copies."""

    def __init__(self, sam, num_classes: int):
        super().__init__()
        self.sam = sam
        self.coarse = CoarseHead(num_classes)

    def used_parameters(self) -> list[nn.Parameter]:
        """What single-image segmentation uses: SAM-2's video memory modules stay untouched."""
        sam = self.sam
        parts = [sam.image_encoder, sam.sam_prompt_encoder, sam.sam_mask_decoder, self.coarse]
        return [p for m in parts for p in m.parameters()] + [sam.no_mem_embed]

    def encode(self, x):
        from ssbench.methods.sss.sam2_net import encode

        return encode(self.sam, x)

    def decode(self, feats, index, boxes, points=None):
        from ssbench.methods.sss.sam2_net import decode

        return decode(self.sam, feats, index, boxes, points)


class SSS(Method):
    name = "sss"
    display_name = "SSS"
    Config = SSSConfig
    uses_unlabeled = True
    unlabeled_batch_multiplier = 2  # the second half are CutMix sources
    engine_weak_augmentation = False  # crop/resize/flip here, so that prompt boxes follow the geometry

    @classmethod
    def recipe_overrides(cls, recipe: str) -> dict:
        # The paper trains with batch 4; SAM-2 is fine-tuned with AdamW at 1e-4 as in MedSAM-2 (the SSS paper's
        # optimiser is not on record), with the engine's poly schedule.
        common = {"optimizer": "adamw", "lr": 1e-4, "weight_decay": 1e-4}
        if recipe == "cpu-small":
            return {**common, "iters": 120, "batch_labeled": 2, "batch_unlabeled": 2, "val_every": 40,
                    "checkpoint_every": 40, "eval_batch": 32}
        return {**common, "batch_labeled": 4, "batch_unlabeled": 4}

    @classmethod
    def for_evaluation(cls, config):
        return replace(config, init="random", checkpoint=None)  # the run's checkpoint holds every weight

    @classmethod
    def short_recipe(cls, config, iters, published_iters=30000):
        # The embedded CPU default: the smallest SAM-2 at a small input size, prompts refreshed often.
        return replace(config, model="sam2.1_hiera_t", image_size=128, pcsw_refresh=max(1, iters // 4))

    def __init__(self, config: SSSConfig, ctx: MethodContext):
        super().__init__(config, ctx)
        from ssbench.methods.sss import sam2_net

        sam = sam2_net.build(config.model, config.image_size, torch.device("cpu"))
        self._init_weights(sam, sam2_net)
        self.student = SAM2Segmenter(sam, ctx.num_classes)
        self.dfe = DFE(mode=config.dfe_mode) if config.dfe else None
        self.teacher = None
        if config.teacher == "unimatch-v2":
            self.teacher = freeze(copy.deepcopy(self.student))
        self.k = ctx.num_classes - 1
        self.volumes: dict[str, np.ndarray] = {}
        self.cache: dict[str, tuple[torch.Tensor, torch.Tensor, int]] = {}  # case -> boxes (K,4), points (K,2), it

    def _init_weights(self, sam, sam2_net) -> None:
        from pathlib import Path

        cfg = self.config
        if cfg.checkpoint:
            sam2_net.load_official(sam, cfg.checkpoint, cfg.model)
            return
        if cfg.init == "random" and not self.ctx.weights_from_checkpoint:
            self.warnings.append(f"SSS: SAM-2 ({cfg.model}) randomly initialised (sss.init=random): not the paper's "
                                 "pretrained model")
            return
        from ssbench.datasets.synthetic import cache_root

        cache = Path(cfg.cache_dir) if cfg.cache_dir else cache_root() / "sam2"
        file = cache / sam2_net.MODELS[cfg.model][1]
        if not file.is_file() and self.ctx.synthetic_data:
            self.warnings.append(
                f"SSS: no pretrained {cfg.model} checkpoint at {file}; on the embedded synthetic data SAM-2 is "
                "RANDOMLY INITIALISED. These numbers say nothing about SSS with pretrained SAM-2."
            )
            return
        sam2_net.load_official(sam, sam2_net.fetch_official(cfg.model, cache), cfg.model)

    # --- state -------------------------------------------------------------------------------------------

    def trainable_parameters(self):
        params = self.student.used_parameters()
        return params + (list(self.dfe.parameters()) if self.dfe is not None else [])

    def get_extra_state(self):
        cases = sorted(self.cache)
        if not cases:
            return {"cases": []}
        return {
            "cases": cases,
            "boxes": torch.stack([self.cache[c][0].cpu() for c in cases]),
            "points": torch.stack([self.cache[c][1].cpu() for c in cases]),
            "stamps": torch.tensor([self.cache[c][2] for c in cases]),
        }

    def set_extra_state(self, state):
        self.cache = {}
        for i, c in enumerate(state.get("cases", [])):
            self.cache[c] = (state["boxes"][i], state["points"][i], int(state["stamps"][i]))

    def attach_unlabeled_volumes(self, volumes: dict) -> None:
        self.volumes = volumes

    def train(self, mode: bool = True):
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # the teacher makes clean pseudo-labels
        return self

    # --- helpers -----------------------------------------------------------------------------------------

    @property
    def size(self) -> int:
        return self.config.image_size

    def _to_input(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] == self.size:
            return x
        return F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)

    def _label_to_input(self, y: torch.Tensor) -> torch.Tensor:
        if y.shape[-1] == self.size:
            return y
        return F.interpolate(y[:, None].float(), size=(self.size, self.size), mode="nearest")[:, 0].long()

    @torch.no_grad()
    def _coarse_probs(self, net: SAM2Segmenter, x: torch.Tensor, batch: int = 16) -> torch.Tensor:
        """(D, 1, S, S) at SAM size -> (D, K+1, S, S) softmax of the coarse head."""
        out = [net.coarse(net.encode(x[i : i + batch]), self.size).softmax(1) for i in range(0, len(x), batch)]
        return torch.cat(out)

    def _volume_prompts(self, probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """PCSW per class on (D, K+1, S, S) coarse probabilities -> boxes (K, 4), points (K, 2)."""
        boxes, points = [], []
        for c in range(1, self.k + 1):
            p = pcsw(probs[:, c].cpu().numpy(), self.config.pcsw_threshold, self.config.pcsw_connectivity)
            boxes.append(torch.tensor(p.box))
            points.append(torch.tensor(p.point))
        return torch.stack(boxes), torch.stack(points)

    def _slice_prompts(self, probs: torch.Tensor) -> torch.Tensor:
        """pcsw = off: per slice and class, the box of the slice's own coarse mask (whole image when empty)."""
        labels = probs.argmax(1)
        boxes = torch.empty(len(probs), self.k, 4)
        for i in range(len(probs)):
            for c in range(1, self.k + 1):
                box = mask_box(labels[i] == c)
                boxes[i, c - 1] = box.cpu() if box is not None else whole_image_box(self.size)
        return boxes

    def _prompt_net(self) -> SAM2Segmenter:
        return self.teacher if self.teacher is not None else self.student

    def _unlabeled_prompts(self, batch_images: torch.Tensor, case_ids, iteration: int):
        """Boxes (B, K, 4) and points (B, K, 2) in SAM input pixels for un-augmented unlabeled slices."""
        if not self.config.pcsw:
            boxes = self._slice_prompts(self._coarse_probs(self._prompt_net(), batch_images))
            return boxes, box_centres(boxes)
        boxes, points = [], []
        for cid in case_ids:
            entry = self.cache.get(cid)
            if entry is None or iteration - entry[2] >= self.config.pcsw_refresh:
                volume = torch.from_numpy(np.asarray(self.volumes[cid])).unsqueeze(1).to(batch_images.device)
                probs = self._coarse_probs(self._prompt_net(), self._to_input(volume))
                b, p = self._volume_prompts(probs)
                entry = (b, p, iteration)
                self.cache[cid] = entry
            boxes.append(entry[0])
            points.append(entry[1])
        return torch.stack(boxes), torch.stack(points)

    def _decode_all(self, net: SAM2Segmenter, feats, boxes: torch.Tensor, points: torch.Tensor | None = None):
        """Decode every (image, class) prompt: boxes (B, K, 4) [+ points (B, K, 2)] -> logits (B, K, S, S)."""
        b, k = boxes.shape[:2]
        device = feats[0].device
        index = torch.arange(b, device=device).repeat_interleave(k)
        pts = points.reshape(b * k, 2).to(device) if points is not None and self.config.point_prompt else None
        logits = net.decode(feats, index, boxes.reshape(b * k, 4).to(device), pts)
        return logits.view(b, k, self.size, self.size)

    # --- training ----------------------------------------------------------------------------------------

    def training_step(self, labeled: Batch, unlabeled: Batch | None, step: StepInfo) -> dict[str, torch.Tensor]:
        cfg = self.config
        device = labeled.image.device
        out: dict[str, torch.Tensor] = {}

        # Labeled: weak crop/flip on image and label together, GT prompts, BCE + Dice per class mask.
        x_l, y_l = [], []
        for img, lab in zip(self._to_input(labeled.image), self._label_to_input(labeled.label)):
            crop = Crop.random(self.size, cfg.crop_scale)
            x_l.append(crop.image(img, self.size))
            y_l.append(crop.image(lab[None], self.size, mode="nearest")[0].long())
        x_l, y_l = torch.stack(x_l), torch.stack(y_l)
        feats_l = self.student.encode(x_l)
        index, boxes, points, targets = [], [], [], []
        for i in range(len(x_l)):
            for c in range(1, self.k + 1):
                m = y_l[i] == c
                box = mask_box(m)
                if box is None:
                    continue
                index.append(i)
                boxes.append(box)
                points.append(interior_point(m))
                targets.append(m)
        loss_x = torch.zeros((), device=device)
        if index:
            logits = self.student.decode(feats_l, torch.tensor(index, device=device), torch.stack(boxes),
                                         torch.stack(points) if cfg.point_prompt else None)
            loss_x = mask_loss(logits, torch.stack(targets))
        out["loss_x"] = loss_x.detach()
        if cfg.train_coarse_head:
            loss_coarse = ce_dice_loss(self.student.coarse(feats_l, self.size), y_l)
            loss_x = loss_x + loss_coarse
            out["loss_coarse"] = loss_coarse.detach()

        # Unlabeled: prompts on the un-augmented slices (whole-volume PCSW), then the same crop for image and box.
        u = self._to_input(unlabeled.image)
        raw_boxes, raw_points = self._unlabeled_prompts(u, unlabeled.case_ids, step.iteration)
        xs, bxs, pts = [], [], []
        for img, bx, pt in zip(u, raw_boxes, raw_points):
            crop = Crop.random(self.size, cfg.crop_scale)
            xs.append(crop.image(img, self.size))
            bxs.append(torch.stack([crop.box(b, self.size) for b in bx]))
            pts.append(torch.stack([crop.point(q, self.size) for q in pt]))
        x_all, box_all, pt_all = torch.stack(xs), torch.stack(bxs).to(device), torch.stack(pts).to(device)
        x_w, x_mix = x_all.chunk(2)
        box_w, box_mix = box_all.chunk(2)
        pt_w, pt_mix = pt_all.chunk(2)
        n = len(x_w)

        feats_w = self.student.encode(x_w)
        with torch.no_grad():
            if self.teacher is not None:
                probs_w = torch.sigmoid(self._decode_all(self.teacher, self.teacher.encode(x_w), box_w, pt_w))
                probs_mix = torch.sigmoid(self._decode_all(self.teacher, self.teacher.encode(x_mix), box_mix,
                                                           pt_mix))
            else:
                probs_w = torch.sigmoid(self._decode_all(self.student, [f.detach() for f in feats_w], box_w, pt_w))
                probs_mix = torch.sigmoid(self._decode_all(self.student, self.student.encode(x_mix), box_mix,
                                                           pt_mix))
        pseudo_w, pseudo_mix = probs_w > 0.5, probs_mix > 0.5
        if self.teacher is not None:
            valid_w = torch.maximum(probs_w, 1 - probs_w) >= cfg.conf_thresh
            valid_mix = torch.maximum(probs_mix, 1 - probs_mix) >= cfg.conf_thresh
        else:
            valid_w, valid_mix = torch.ones_like(pseudo_w), torch.ones_like(pseudo_mix)

        strong_losses = []
        drop = None
        if self.teacher is not None and cfg.complementary_dropout:
            drop = (torch.rand(n, 256, 1, 1, device=device) < 0.5).float()
        for view in range(2):
            s = self._strong(x_w)
            s_mix = self._strong(x_mix)
            box = torch.stack([cutmix_box(self.size, p=cfg.cutmix_p) for _ in range(n)]).to(device)
            s = torch.where(box[:, None], s_mix, s)
            target = torch.where(box[:, None], pseudo_mix, pseudo_w)
            valid = torch.where(box[:, None], valid_mix, valid_w)
            feats_s = self.student.encode(s)
            if self.dfe is not None:
                feats_s = self.dfe(feats_w, feats_s)
            if drop is not None:
                mask = drop if view == 0 else 1 - drop
                feats_s = feats_s[:2] + [feats_s[2] * mask * 2]
            logits_s = self._decode_all(self.student, feats_s, box_w, pt_w)
            strong_losses.append(mask_loss(logits_s.flatten(0, 1), target.flatten(0, 1), valid.flatten(0, 1)))
            out[f"loss_s{view + 1}"] = strong_losses[-1].detach()
        loss_u = (strong_losses[0] + strong_losses[1]) / 2
        if self.teacher is not None:
            out["loss"] = (loss_x + loss_u) / 2
        else:
            out["loss"] = loss_x + loss_u
        out["conf_ratio"] = valid_w.float().mean()
        return out

    def _strong(self, x: torch.Tensor) -> torch.Tensor:
        b, c = self.config.jitter
        return strong_view(x, brightness=b, contrast=c)

    def after_optimizer_step(self, step: StepInfo) -> None:
        if self.teacher is not None:
            ema_update(self.teacher, self.student, ema_alpha(step.iteration, self.config.ema_decay))

    # --- evaluation --------------------------------------------------------------------------------------

    @torch.no_grad()
    def predict_volume(self, slices: torch.Tensor, batch: int = 16) -> torch.Tensor:
        """Prompts from the model itself: coarse head over the volume, PCSW per class, then SAM-2 per slice."""
        net = self.teacher if self.teacher is not None and self.config.evaluate == "teacher" else self.student
        x = self._to_input(slices)
        feats = [net.encode(x[i : i + batch]) for i in range(0, len(x), batch)]  # encoded once, used twice
        probs = torch.cat([net.coarse(f, self.size).softmax(1) for f in feats])
        if self.config.pcsw:
            boxes, points = self._volume_prompts(probs)
            boxes, points = boxes.expand(len(x), -1, -1), points.expand(len(x), -1, -1)
        else:
            boxes = self._slice_prompts(probs)
            points = box_centres(boxes)
        logits = torch.cat([self._decode_all(net, f, boxes[i * batch : i * batch + len(f[0])],
                                             points[i * batch : i * batch + len(f[0])])
                            for i, f in enumerate(feats)])
        scores = torch.cat([torch.zeros_like(logits[:, :1]), logits], 1)  # background logit 0 = sigmoid 0.5
        if scores.shape[-1] != slices.shape[-1]:
            scores = F.interpolate(scores, size=slices.shape[-2:], mode="bilinear", align_corners=False)
        return scores.softmax(1)

    @torch.no_grad()
    def predict(self, image: torch.Tensor) -> torch.Tensor:
        return self.predict_volume(image)
