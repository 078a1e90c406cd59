"""SSS: Semi-Supervised SAM-2 (Zhu et al. 2025, arXiv 2506.08949) with DFE and PCSW, on the real sam2 package, in
the MedSAM-2 framework the paper builds on: a volume is a sequence of slices and SAM-2's memory carries one prompt
per structure through it.

One training step (the sources of every choice are in ``config.py``):
* labeled: clips of consecutive slices with memory, every class prompted on the first slice (absent ones with a
  decoy box and presence target 0), BCE + Dice on masks, BCE on SAM-2's object score, the coarse head's CE + Dice
  (``clips.py``);
* unlabeled: each slice prompted by its volume's sequence (PCSW on the prompt network's coarse prediction, carried
  by memory; refreshed every ``pcsw_refresh`` iterations), weak-to-strong consistency with DFE and UniMatch V2's
  teacher (``consistency.py``);
* loss ``unimatch-v2``: (L_x + (L_s1 + L_s2) / 2) / 2 (V2 unimatch_v2.py:202-204); ``released``: L_x + L_u.

Evaluation (``predict_volume``): the model's own coarse prediction, PCSW per class, the sequence (``sequence.py``).
No label is read at test time.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ssbench.methods.api import Batch, Method, MethodContext, StepInfo
from ssbench.methods.ema import ema_alpha, ema_update, freeze
from ssbench.methods.sss import clips, sam2_net, sequence
from ssbench.methods.sss.config import SSSConfig
from ssbench.methods.sss.consistency import unlabeled_losses
from ssbench.methods.sss.dfe import DFE
from ssbench.methods.sss.geometry import Crop
from ssbench.methods.sss.network import SAM2Segmenter
from ssbench.methods.sss.sequence import SlicePrompts
from ssbench.resize import resize_volume


class SSS(Method):
    name = "sss"
    display_name = "SSS"
    Config = SSSConfig
    uses_unlabeled = True
    engine_weak_augmentation = False  # crop/resize/flip here, so that prompt boxes follow the geometry

    @classmethod
    def recipe_overrides(cls, recipe: str) -> dict:
        # ssbench's choices (the SSS paper's optimiser and schedule are not on record): AdamW 1e-4 (MedSAM-2 uses
        # Adam 1e-4, train_3d.py:50), weight decay 1e-4, the engine's poly schedule; batch 4 (SSS README: -b 4).
        common = {"optimizer": "adamw", "lr": 1e-4, "weight_decay": 1e-4}
        if recipe == "cpu-small":  # the README's first command: within 5 minutes on 2 cores
            return {**common, "iters": 80, "batch_labeled": 2, "batch_unlabeled": 2, "val_every": 40,
                    "checkpoint_every": 40, "eval_batch": 32}
        return {**common, "batch_labeled": 4, "batch_unlabeled": 4}

    @classmethod
    def data_overrides(cls, recipe: str) -> dict:
        # SAM-2 reads 1024x1024 (its configs' image_size; SSS README: -image_size 1024), resized from the native
        # slice bilinearly (SAM2Transforms: torchvision Resize, bilinear) and its mask logits resized back
        # bilinearly (SAM2Transforms.postprocess_masks). The CPU recipe keeps the protocol at 128.
        return {"train_size": 128 if recipe == "cpu-small" else 1024, "train_resize": "bilinear",
                "inference_resize": "bilinear"}

    @classmethod
    def prepare(cls, config, synthetic_data=False):
        # A sweep fetches the official weights once, before its jobs start (on the embedded phantom a missing
        # checkpoint means random initialisation, so nothing is fetched there).
        if config.checkpoint or config.init != "pretrained" or synthetic_data:
            return []
        file = sam2_net.fetch_official(config.model, _weights_cache(config))
        return [f"sss: pretrained {config.model} at {file}"]

    @classmethod
    def for_evaluation(cls, config):
        return replace(config, init="random", checkpoint=None)  # the run's checkpoint holds every weight

    @classmethod
    def short_recipe(cls, config, iters, published_iters=30000):
        # The embedded CPU default: the smallest SAM-2, prompts re-propagated four times over the run.
        return replace(config, model="sam2.1_hiera_t", pcsw_refresh=max(1, iters // 4))

    def __init__(self, config: SSSConfig, ctx: MethodContext):
        super().__init__(config, ctx)
        if config.clip_length < 1:
            from ssbench.errors import ConfigError

            raise ConfigError(f"sss.clip_length {config.clip_length}: must be at least 1")
        sam = sam2_net.build(config.model, ctx.image_size, torch.device("cpu"))
        self._init_weights(sam)
        self.student = SAM2Segmenter(sam, ctx.num_classes)
        self.dfe = DFE(mode=config.dfe_mode) if config.dfe else None
        self.teacher = freeze(copy.deepcopy(self.student)) if config.teacher == "unimatch-v2" else None
        self.k = ctx.num_classes - 1
        self.unlabeled: dict[str, np.ndarray] = {}
        self.labeled: dict[str, clips.LabeledVolume] = {}
        self.cache: dict[str, tuple[SlicePrompts, int]] = {}  # unlabeled case -> its slices' prompts, iteration

    def _init_weights(self, sam) -> None:
        cfg = self.config
        if self.ctx.weights_from_checkpoint:
            return  # `ssbench eval`: the run's checkpoint replaces every weight; nothing is loaded or fetched
        if cfg.checkpoint:
            sam2_net.load_official(sam, cfg.checkpoint, cfg.model)
            return
        if cfg.init == "random":
            self.warnings.append(f"SSS: SAM-2 ({cfg.model}) randomly initialised (sss.init=random): not the paper's "
                                 "pretrained model")
            return
        cache = _weights_cache(cfg)
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
        # all of SAM-2 (memory modules included), the coarse head and DFE; parameters without a gradient in a
        # step (e.g. the memory modules with memory = false) are left alone by the optimizer
        params = list(self.student.parameters())
        return params + (list(self.dfe.parameters()) if self.dfe is not None else [])

    def get_extra_state(self):
        cases = sorted(self.cache)
        if not cases:
            return {"cases": []}
        entries = [self.cache[c][0] for c in cases]
        return {
            "cases": cases,
            "slices": torch.tensor([len(e.present) for e in entries]),
            "boxes": torch.cat([e.boxes for e in entries]),
            "points": torch.cat([e.points for e in entries]),
            "present": torch.cat([e.present for e in entries]),
            "stamps": torch.tensor([self.cache[c][1] for c in cases]),
        }

    def set_extra_state(self, state):
        self.cache = {}
        if not state.get("cases"):
            return
        bounds = np.concatenate([[0], np.cumsum(state["slices"].tolist())])
        for i, c in enumerate(state["cases"]):
            a, b = int(bounds[i]), int(bounds[i + 1])
            entry = SlicePrompts(state["boxes"][a:b], state["points"][a:b], state["present"][a:b])
            self.cache[c] = (entry, int(state["stamps"][i]))

    def attach_unlabeled_volumes(self, volumes: dict) -> None:
        self.unlabeled = volumes

    def attach_labeled_volumes(self, volumes: dict) -> None:
        self.labeled = {cid: clips.LabeledVolume.of(img, lab, self.k) for cid, (img, lab) in volumes.items()}

    def train(self, mode: bool = True):
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # the teacher makes clean pseudo-labels
        return self

    # --- helpers -----------------------------------------------------------------------------------------

    @property
    def size(self) -> int:
        return self.ctx.image_size

    def _prompt_net(self) -> SAM2Segmenter:
        return self.teacher if self.teacher is not None else self.student

    @contextmanager
    def _inference(self, net: SAM2Segmenter):
        """Run ``net`` in eval mode (dropout off, SAM-2's inference settings), restoring its mode afterwards."""
        was = net.training
        net.eval()
        try:
            with torch.no_grad():
                yield net
        finally:
            net.train(was)

    def _segment(self, net: SAM2Segmenter, x: torch.Tensor, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(D, 1, S, S) one volume -> mask logits (D, K, S, S), object scores (D, K): coarse head, PCSW, sequence."""
        feats = net.encode_chunks(x, batch)
        prompts = sequence.class_prompts(net.coarse_probs(feats), self.config.pcsw, self.config.pcsw_threshold,
                                         self.config.pcsw_connectivity, with_slices=not self.config.memory)
        return sequence.segment_volume(net.sam, feats, prompts, self.config.memory, self.config.point_prompt)

    def _slice_prompts(self, case_id: str, iteration: int, device) -> SlicePrompts:
        """The sequence's prompts for every slice of an unlabeled volume, re-propagated when stale."""
        entry = self.cache.get(case_id)
        if entry is None or iteration - entry[1] >= self.config.pcsw_refresh:
            x = torch.from_numpy(resize_volume(self.unlabeled[case_id], self.size, self.ctx.resize))
            with self._inference(self._prompt_net()) as net:
                logits, scores = self._segment(net, x[:, None].to(device), batch=16)
            entry = (sequence.slice_prompts(logits, scores), iteration)
            self.cache[case_id] = entry
        return entry[0]

    # --- training ----------------------------------------------------------------------------------------

    def _labeled_clips(self, labeled: Batch) -> clips.ClipBatch:
        cfg = self.config
        volumes = [self.labeled[c] for c in labeled.case_ids]
        length = clips.clip_length(volumes, cfg.clip_length if cfg.memory else 1)
        drawn = [clips.draw_clip(v, z, length, self.size, self.ctx.resize, cfg.crop_scale, cfg.absent_prompts)
                 for v, z in zip(volumes, labeled.slice_indices)]
        device = labeled.image.device
        return clips.ClipBatch(*(torch.stack([d[i] for d in drawn]).to(device) for i in range(4)))

    def _weak_unlabeled(self, unlabeled: Batch, iteration: int):
        """Weak views of the unlabeled slices and their sequence prompts, moved through the same crop; a structure
        the crop removes is absent from the view."""
        x_w, boxes, points, present = [], [], [], []
        device = unlabeled.image.device
        for img, cid, z in zip(unlabeled.image, unlabeled.case_ids, unlabeled.slice_indices):
            prompts = self._slice_prompts(cid, iteration, device)
            crop = Crop.random(self.size, self.config.crop_scale)
            x_w.append(crop.image(img, self.size))
            b, p, there = torch.zeros(self.k, 4), torch.zeros(self.k, 2), prompts.present[z].clone()
            for c in range(self.k):
                moved = crop.box(prompts.boxes[z, c], self.size) if there[c] else None
                there[c] = moved is not None
                if moved is not None:
                    b[c], p[c] = moved, crop.point(prompts.points[z, c], self.size)
            boxes.append(b)
            points.append(p)
            present.append(there)
        return (torch.stack(x_w), torch.stack(boxes).to(device), torch.stack(points).to(device),
                torch.stack(present).to(device))

    def training_step(self, labeled: Batch, unlabeled: Batch | None, step: StepInfo) -> dict[str, torch.Tensor]:
        cfg = self.config
        parts = clips.clip_losses(self.student, self._labeled_clips(labeled), cfg.point_prompt, cfg.train_coarse_head)
        loss_x = sum(parts.values())
        out = {k: v.detach() for k, v in parts.items()}
        out["loss_x"] = loss_x.detach()
        x_w, boxes, points, present = self._weak_unlabeled(unlabeled, step.iteration)
        u = unlabeled_losses(self.student, self.teacher, self.dfe, x_w, boxes, points, present, cfg)
        loss_u = (u["loss_s1"] + u["loss_s2"]) / 2
        out.update(loss_s1=u["loss_s1"].detach(), loss_s2=u["loss_s2"].detach(), conf_ratio=u["conf_ratio"])
        out["loss"] = (loss_x + loss_u) / 2 if self.teacher is not None else loss_x + loss_u
        return out

    def after_optimizer_step(self, step: StepInfo) -> None:
        if self.teacher is not None:
            ema_update(self.teacher, self.student, ema_alpha(step.iteration, self.config.ema_decay))

    # --- evaluation --------------------------------------------------------------------------------------

    @torch.no_grad()
    def predict_volume(self, slices: torch.Tensor, batch: int = 16) -> torch.Tensor:
        """(D, 1, S', S') all slices of one volume -> (D, K+1, S', S') class scores; never sees a label."""
        net = self.teacher if self.teacher is not None and self.config.evaluate == "teacher" else self.student
        x = slices
        if x.shape[-1] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        with self._inference(net):
            logits, _ = self._segment(net, x, batch)
        scores = sequence.class_scores(logits)
        if scores.shape[-1] != slices.shape[-1]:
            scores = F.interpolate(scores, size=slices.shape[-2:], mode="bilinear", align_corners=False)
        return scores

    @torch.no_grad()
    def predict(self, image: torch.Tensor) -> torch.Tensor:
        return self.predict_volume(image)


def _weights_cache(cfg) -> Path:
    """Where official SAM-2 checkpoints are looked for and downloaded to (``sss.cache_dir`` or the ssbench cache)."""
    from ssbench.datasets.synthetic import cache_root

    return Path(cfg.cache_dir) if cfg.cache_dir else cache_root() / "sam2"
