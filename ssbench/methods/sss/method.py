"""SSS: Semi-Supervised SAM-2 (Zhu et al. 2025, arXiv 2506.08949) with DFE and PCSW, on the real sam2 package, in
the MedSAM-2 framework the paper builds on: a volume is a sequence of slices and SAM-2's memory carries one prompt
per structure through it.

One training step (the sources of every choice are in ``config.py``):
* labeled: clips of consecutive slices (8 by default, up or down the volume, starting on a slice holding a class)
  with memory, the classes on the first slice (at most ``max_objects``) prompted there and tracked, the others
  decoy-prompted there only (``absent_prompts``); BCE + Dice
  on the lowest-loss candidate mask, L1 on SAM-2's IoU predictions, BCE on its object score, the coarse head's
  CE + Dice (``clips.py``);
* unlabeled: each slice prompted by its volume's sequence (PCSW on the prompt network's coarse prediction, carried
  by memory; refreshed every ``pcsw_refresh`` iterations), weak-to-strong consistency with DFE and UniMatch V2's
  teacher, decoded per slice in image mode (``consistency.py``), with what it taught returned per class;
* loss ``unimatch-v2``: (L_x + (L_s1 + L_s2) / 2) / 2 (V2 unimatch_v2.py:202-204); ``released``: L_x + L_u.

Evaluation (``predict_volume``): the model's own coarse prediction, PCSW per class, the sequence (``sequence.py``).
No label is read at test time.

Host synchronisation in the step: the labeled volumes live on the run's device at native size and each clip is
resized, cropped and prompted there; the unlabeled slices' prompts are cached there; every loss is a weighted mean
of fixed-shape tensors. What remains (the lead's recorder in tests/ counts it): SAM-2's own memory read, which
builds the object pointers' temporal positions on the host once per propagated frame (sam2_base.py
``torch.tensor(pos_list)``), and, every ``pcsw_refresh`` iterations per unlabeled volume, its re-propagation
(the volume copied to the device, PCSW's connected components on the host).
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ssbench.errors import ConfigError, UserError
from ssbench.methods.api import Batch, Method, MethodContext, StepInfo
from ssbench.methods.blocks.ema import ema_alpha, ema_update, freeze
from ssbench.methods.sss import clips, sam2_net, sequence
from ssbench.methods.sss.hparams import SSSConfig
from ssbench.methods.sss.consistency import unlabeled_losses
from ssbench.methods.sss.dfe import DFE
from ssbench.methods.sss.geometry import Crop
from ssbench.methods.sss.network import SAM2Segmenter
from ssbench.methods.sss.sam2_net import NO_OBJECT
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
        if recipe == "cpu-small":  # the README's first command: within 5 minutes on 2 cores (one 8-slice clip)
            return {**common, "iters": 64, "batch_labeled": 1, "batch_unlabeled": 2, "val_every": 32,
                    "checkpoint_every": 32, "eval_batch": 32}
        return {**common, "batch_labeled": 4, "batch_unlabeled": 4}

    @classmethod
    def data_overrides(cls, recipe: str) -> dict:
        # SAM-2 reads 1024x1024 (its configs' image_size; SSS README: -image_size 1024), resized from the native
        # slice bilinearly (SAM2Transforms: torchvision Resize, bilinear) and its mask logits resized back
        # bilinearly (SAM2Transforms.postprocess_masks). The CPU recipe keeps the protocol at 96 (a multiple of 32).
        return {"train_size": 96 if recipe == "cpu-small" else 1024, "train_resize": "bilinear",
                "inference_resize": "bilinear"}

    @classmethod
    def prepare(cls, config, synthetic_data=False):
        # A sweep fetches the official weights once, before its jobs start (on the embedded phantom a missing
        # checkpoint means random initialisation, so nothing is fetched there; a file already in the cache is not
        # fetched again, and the configs of the sweep's other runs then record its SHA-256).
        if config.checkpoint or config.init != "pretrained" or synthetic_data or cls._cached_file(config).is_file():
            return []
        file = sam2_net.fetch_official(config.model, _weights_cache(config))
        return [f"sss: pretrained {config.model} at {file}"]

    @classmethod
    def for_evaluation(cls, config):
        return replace(config, init="random", checkpoint=None)  # the run's checkpoint holds every weight

    @classmethod
    def short_recipe(cls, config, iters, published_iters=30000):
        # The embedded CPU default: the smallest SAM-2, prompts re-propagated four times over the run, and the EMA
        # teacher's horizon (1 / (1 - decay) = 250 of V2's ~30k iterations) scaled to the run, at least 2
        # iterations: at 0.996 the teacher of an 80-iteration run is the mean of every weight since the start, whose
        # coarse head finds no class for half the run, so PCSW prompts nothing and the unlabeled branch never acts.
        horizon = max(2.0, iters / published_iters / (1 - config.ema_decay))
        return replace(config, model="sam2.1_hiera_t", pcsw_refresh=max(1, iters // 4), ema_decay=1 - 1 / horizon)

    @classmethod
    def resolve_config(cls, config: SSSConfig, synthetic: bool) -> SSSConfig:
        """The initialisation a run will really have (Method.resolve_config): the checkpoint's SHA-256 for a
        pretrained run whose file is there; on the embedded phantom without one, random (the fallback, loud in
        run.json); on real data without one, unchanged (the run downloads it, then the engine resolves again)."""
        if config.init == "random":
            return replace(config, checkpoint_sha256=None)
        path = Path(config.checkpoint) if config.checkpoint else cls._cached_file(config)
        if path.is_file():
            sha = sam2_net.checkpoint_sha256(path)
            if config.checkpoint_sha256 not in (None, sha):
                raise UserError(f"sss.checkpoint_sha256 {config.checkpoint_sha256}: the checkpoint {path} has "
                                f"SHA-256 {sha}")
            return replace(config, checkpoint_sha256=sha)
        if config.checkpoint:
            raise UserError(f"sss.checkpoint {path}: file not found")
        if synthetic:
            return replace(config, init="random", checkpoint_sha256=None)
        return config

    @staticmethod
    def _cached_file(config: SSSConfig) -> Path:
        cache = _weights_cache(config)
        return cache / sam2_net.MODELS[config.model][1] if config.model in sam2_net.MODELS else cache / config.model

    def __init__(self, config: SSSConfig, ctx: MethodContext):
        super().__init__(config, ctx)
        sam = sam2_net.build(config.model, ctx.image_size, torch.device("cpu"), config.multimask_tracking,
                             config.postprocess)
        self._init_weights(sam)
        sam.image_encoder.requires_grad_(config.train_image_encoder)
        sam.sam_prompt_encoder.requires_grad_(config.train_prompt_encoder)
        self.student = SAM2Segmenter(sam, ctx.num_classes, config.activation_checkpointing == "encoder")
        self.dfe = DFE(mode=config.dfe_mode) if config.dfe else None
        self.teacher = freeze(copy.deepcopy(self.student)) if config.teacher == "unimatch-v2" else None
        self.k = ctx.num_classes - 1
        self.unlabeled: dict[str, np.ndarray] = {}
        self.labeled: dict[str, clips.LabeledVolume] = {}
        self.cache: dict[str, tuple[SlicePrompts, int]] = {}  # unlabeled case -> its slices' prompts, iteration
        self.fill_hole_area = 8 if config.postprocess else 0  # SAM-2's video predictor: fill_hole_area=8

    def _init_weights(self, sam) -> None:
        cfg = self.config
        if self.ctx.weights_from_checkpoint:
            return  # `ssbench eval`: the run's checkpoint replaces every weight; nothing is loaded or fetched
        if cfg.init == "random":
            fallback = (f" On the embedded phantom this is also what a run without a pretrained checkpoint at "
                        f"{self._cached_file(cfg)} does." if self.ctx.synthetic_data else "")
            self.warnings.append(f"SSS: SAM-2 ({cfg.model}) randomly initialised (sss.init=random): not the paper's "
                                 f"pretrained model; these numbers say nothing about SSS with pretrained SAM-2."
                                 + fallback)
            return
        path = Path(cfg.checkpoint) if cfg.checkpoint else self._cached_file(cfg)
        if not cfg.checkpoint and not path.is_file():
            path = sam2_net.fetch_official(cfg.model, path.parent)
        self.resolve_config(cfg, self.ctx.synthetic_data)  # a required SHA-256 is checked against the file
        sam2_net.load_official(sam, path, cfg.model)

    # --- state -------------------------------------------------------------------------------------------

    def trainable_parameters(self):
        # SAM-2 (memory modules included, encoders unless frozen), the coarse head and DFE; parameters without a
        # gradient in a step (e.g. the memory modules with memory = false) are left alone by the optimizer
        params = [p for p in self.student.parameters() if p.requires_grad]
        return params + (list(self.dfe.parameters()) if self.dfe is not None else [])

    def optimizer_params(self):
        """One optimizer; the memory modules and the mask decoder in their own groups at ``lr_scale_memory`` and
        ``lr_scale_decoder`` x train.lr (the engine's parameter groups), the rest at train.lr."""
        cfg = self.config
        groups = {"memory": [], "decoder": [], "rest": []}
        for name, p in self.student.named_parameters():
            if p.requires_grad:
                groups[sam2_net.module_group(name)].append(p)
        groups["rest"] += list(self.dfe.parameters()) if self.dfe is not None else []
        scales = {"memory": cfg.lr_scale_memory, "decoder": cfg.lr_scale_decoder, "rest": 1.0}
        return {"main": [{"params": ps, "lr_scale": scales[g]} for g, ps in groups.items() if ps]}

    @classmethod
    def check_config(cls, cfg) -> None:
        # SSS calls SAM-2's submodules and its private track step directly, never the networks' __call__, so
        # nn.Module.compile would compile only what is not run: refused rather than recorded as if it acted
        if cfg.train.compile == "on":
            raise ConfigError("train.compile=on: not supported for sss (SAM-2 is driven through its submodules and "
                              "track step, which nn.Module.compile does not reach); use train.compile=off")

    def get_extra_state(self):
        cases = sorted(self.cache)
        if not cases:
            return {"cases": []}
        entries = [self.cache[c][0] for c in cases]
        return {
            "cases": cases,
            "slices": torch.tensor([len(e.present) for e in entries]),
            "boxes": torch.cat([e.boxes for e in entries]).cpu(),
            "points": torch.cat([e.points for e in entries]).cpu(),
            "present": torch.cat([e.present for e in entries]).cpu(),
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
            self.cache[c] = (entry.to(self.student.sam.maskmem_tpos_enc.device), int(state["stamps"][i]))

    def _apply(self, fn, *args, **kwargs):
        """``.to(device)`` and the like also move what SSS keeps beside its weights: the labeled volumes and the
        cached prompts live with the model (state for the step, not weights: not in the state dict)."""
        super()._apply(fn, *args, **kwargs)
        device = self.student.sam.maskmem_tpos_enc.device
        for net in filter(None, (getattr(self, "student", None), getattr(self, "teacher", None))):
            sam2_net.move_rope_tables(net.sam, device)
        for v in getattr(self, "labeled", {}).values():
            v.image, v.label = v.image.to(device), v.label.to(device)
            if v.components is not None:
                v.components, v.main_component = v.components.to(device), v.main_component.to(device)
        self.cache = {c: (e.to(device), stamp) for c, (e, stamp) in getattr(self, "cache", {}).items()}
        return self

    def attach_unlabeled_volumes(self, volumes: dict) -> None:
        self.unlabeled = volumes

    def attach_labeled_volumes(self, volumes: dict) -> None:
        # native volumes on the run's device, once: each clip is resized and cropped there, outside the host
        device = self.student.sam.maskmem_tpos_enc.device
        conn = self.config.pcsw_connectivity if self.config.train_box == "component" else None
        self.labeled = {cid: clips.LabeledVolume.of(img, lab, self.k, device, conn) for cid, (img, lab) in
                        volumes.items()}

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
        prompts = sequence.class_prompts(net.coarse_probs(feats), self.config, with_slices=not self.config.memory)
        return sequence.segment_volume(net.sam, feats, prompts, self.config.memory, self.config.point_prompt,
                                       self.fill_hole_area)

    def _slice_prompts(self, case_id: str, iteration: int, device) -> SlicePrompts:
        """The sequence's prompts for every slice of an unlabeled volume, re-propagated when stale."""
        entry = self.cache.get(case_id)
        if entry is None or iteration - entry[1] >= self.config.pcsw_refresh:
            x = torch.from_numpy(resize_volume(self.unlabeled[case_id], self.size, self.ctx.resize))
            with self._inference(self._prompt_net()) as net:
                logits, scores = self._segment(net, x[:, None].to(device), batch=self.config.refresh_batch)
            entry = (sequence.slice_prompts(logits, scores), iteration)
            self.cache[case_id] = entry
        return entry[0]

    # --- training ----------------------------------------------------------------------------------------

    def _labeled_clips(self, labeled: Batch) -> clips.ClipBatch:
        cfg = self.config
        volumes = [self.labeled[c] for c in labeled.case_ids]
        length = clips.clip_length(volumes, cfg.clip_length if cfg.memory else 1)
        drawn, on_first = [], []
        for v, z in zip(volumes, labeled.slice_indices):
            z = clips.clip_start(v, z, cfg.clip_start)
            backward = cfg.clip_directions == "both" and bool(torch.rand(()) < 0.5)  # host RNG: no device read
            drawn.append(clips.draw_clip(v, z, length, self.size, self.ctx.resize, cfg.crop_scale, backward, cfg))
            on_first.append(v.on_slice(clips.clip_slices(v.depth, z, length, backward)[0]))
        objects, decoys = clips.choose_objects(on_first, self.k, cfg.max_objects, cfg.absent_prompts)
        return clips.ClipBatch(*(torch.stack([d[i] for d in drawn]) for i in range(5)), objects, decoys)

    def _weak_unlabeled(self, unlabeled: Batch, iteration: int):
        """Weak views of the unlabeled slices and their sequence prompts, moved through the same crop; a structure
        the crop removes is absent from the view. Device arithmetic only (the crop is drawn on the host)."""
        x_w, boxes, points, present = [], [], [], []
        device = unlabeled.image.device
        for img, cid, z in zip(unlabeled.image, unlabeled.case_ids, unlabeled.slice_indices):
            prompts = self._slice_prompts(cid, iteration, device)
            crop = Crop.random(self.size, self.config.crop_scale, self.config.flip_p, self.config.crop_min)
            x_w.append(crop.image(img, self.size))
            moved, inside = crop.boxes(prompts.boxes[z], self.size)
            there = prompts.present[z] & inside
            boxes.append(torch.where(there[:, None], moved, 0.0))
            points.append(torch.where(there[:, None], crop.point(prompts.points[z], self.size), 0.0))
            present.append(there)
        return torch.stack(x_w), torch.stack(boxes), torch.stack(points), torch.stack(present)

    def training_step(self, labeled: Batch, unlabeled: Batch | None, step: StepInfo) -> dict[str, torch.Tensor]:
        cfg = self.config
        parts = clips.clip_losses(self.student, self._labeled_clips(labeled), cfg.point_prompt, cfg.absent_prompts)
        loss_x = sum(parts.values())
        out = {k: v.detach() for k, v in parts.items()}
        out["loss_x"] = loss_x.detach()
        x_w, boxes, points, present = self._weak_unlabeled(unlabeled, step.iteration)
        u = unlabeled_losses(self.student, self.teacher, self.dfe, x_w, boxes, points, present, cfg)
        loss_u = cfg.unlabeled_weight * (u["loss_s1"] + u["loss_s2"]) / 2
        out.update({k: v.detach() for k, v in u.items()})
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
        if tuple(x.shape[-2:]) != (self.size, self.size):  # both sides: a non-square slice is resized too
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        with self._inference(net):
            logits, _ = self._segment(net, x, batch)
        scores = sequence.class_scores(logits)
        if scores.shape[-2:] != slices.shape[-2:]:
            scores = F.interpolate(scores, size=slices.shape[-2:], mode="bilinear", align_corners=False)
        return scores

    @torch.no_grad()
    def predict_prompted(self, x: torch.Tensor, prompts: dict[int, dict[int, tuple | None]]) -> torch.Tensor:
        """The ``medsam2`` protocol's prediction (``metrics/medsam2.py``): x (F, 1, S, S) slices at the input size,
        prompts {slice: {class: box or None}} -> (F, K, S, S) mask logits. As SAM-2's video predictor in MedSAM-2's
        validation: per object, every prompted slice a conditioning frame (a box, or an all-zero mask prompt),
        decoded first; then the other slices in increasing order with memory of all of them."""
        net = self.teacher if self.teacher is not None and self.config.evaluate == "teacher" else self.student
        f, size = x.shape[0], self.size
        logits = torch.full((f, self.k, size, size), NO_OBJECT, device=x.device)
        with self._inference(net):
            feats = net.encode_chunks(x, 16)
            classes = sorted({c for per in prompts.values() for c in per})
            for c in classes:
                memory = sam2_net.new_memory()
                for z, per in sorted(prompts.items()):
                    rows = feats.rows(z, z + 1)
                    box = per.get(c)
                    if box is None:
                        frame = sam2_net.track(net.sam, rows, z, memory, f, fill_hole_area=self.fill_hole_area,
                                               mask_inputs=torch.zeros(1, 1, size, size, device=x.device))
                    else:
                        inputs = sam2_net.prompt_inputs(torch.tensor([box], dtype=torch.float32, device=x.device))
                        frame = sam2_net.track(net.sam, rows, z, memory, f, inputs, fill_hole_area=self.fill_hole_area)
                    logits[z, c - 1] = frame.mask[0]
                for z in range(f):
                    if z not in prompts:
                        frame = sam2_net.track(net.sam, feats.rows(z, z + 1), z, memory, f,
                                               fill_hole_area=self.fill_hole_area)
                        logits[z, c - 1] = frame.mask[0]
        return logits

    @torch.no_grad()
    def predict(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 1, S', S') slices that need not form a volume (the Method API): each is its own one-slice volume."""
        return torch.cat([self.predict_volume(image[i : i + 1]) for i in range(len(image))])


def _weights_cache(cfg) -> Path:
    """Where official SAM-2 checkpoints are looked for and downloaded to (``sss.cache_dir`` or the ssbench cache)."""
    from ssbench.datasets.synthetic import cache_root

    return Path(cfg.cache_dir) if cfg.cache_dir else cache_root() / "sam2"
