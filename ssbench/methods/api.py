"""The Method API (version 1): what a segmentation method implements, and nothing of the engine's internals.

A method is a ``torch.nn.Module`` that

* declares ``name``, a ``Config`` dataclass whose defaults are the published recipe, and ``uses_unlabeled``;
* builds its networks in ``__init__(config, ctx)`` from a :class:`MethodContext`;
* takes one training step in ``training_step(labeled, unlabeled, step)`` and returns its losses, with the total
  under ``"loss"`` (the engine calls backward, the optimizer step and the LR schedule);
* may update non-gradient state (an EMA teacher) in ``after_optimizer_step(step)``;
* predicts class scores for evaluation in ``predict(image)`` (slices) or ``predict_volume(slices)`` (all
  slices of one volume at once, for methods whose prompts come from the whole volume). Scores are logits or
  probabilities: the engine takes their argmax, after resizing them bilinearly to the native grid when the run's
  ``data.inference_resize`` is ``bilinear`` (UniMatch resizes logits, so the UNet methods return logits).

Co-training and staged methods (added within version 1; the defaults keep single-network methods as they were):

* ``optimizer_params()`` names one optimizer per entry (ABD's two students, CPS's two UNets); the engine builds each
  from ``train.*`` (or from a param group's own ``lr``), steps them all after one ``backward``, schedules their
  learning rates and saves and restores every one of them;
* ``stages()`` splits the run into stages run one after the other (BCP: a labeled-only pre-train, then
  self-training), each with its own length, validation and best checkpoint; a later stage starts from the best
  checkpoint of the one before (weights and optimizer states), then ``begin_stage`` initialises what that stage
  adds (a teacher, a second student);
* ``evaluated_model()`` names the network ``predict`` uses (recorded in run.json).

Everything it owns (students, teachers, buffers) is in its ``state_dict``, so checkpoints and ``--resume`` need
nothing else from it. Batches arrive at ``ctx.image_size`` — the native slice, weakly augmented by the engine
(the literature's rotation/flip) unless the method sets ``engine_weak_augmentation = False`` to augment itself,
then resized with the run's ``data.train_resize`` (``ctx.resize``). Methods that need whole volumes (SSS's
slice-window prompts, clips of neighbouring slices) get them once, at native size, through
``attach_unlabeled_volumes`` and ``attach_labeled_volumes``; each batch names the case and slice of every image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Iterable

import torch
from torch import nn

API_VERSION = 1


@dataclass(frozen=True)
class MethodContext:
    in_channels: int  # 1 for the grayscale MR/CT slices of the built-in datasets
    num_classes: int  # including background
    image_size: int  # square input size of the method (data.train_size)
    total_iters: int  # for methods whose schedules depend on the run length
    device: torch.device
    synthetic_data: bool = False  # the embedded phantom (methods may relax requirements, loudly)
    weights_from_checkpoint: bool = False  # rebuilt for evaluation: a run checkpoint will replace every weight
    resize: str = "order0"  # data.train_resize: how native slices become image_size (ssbench.resize)


@dataclass
class Batch:
    image: torch.Tensor  # (B, C, H, W) float in [0, 1]
    label: torch.Tensor | None = None  # (B, H, W) int64 class indices; None for unlabeled batches
    case_ids: list[str] | None = None  # the volume of each image
    slice_indices: list[int] | None = None  # its slice index in that volume


@dataclass(frozen=True)
class StepInfo:
    iteration: int  # 0-based index of this step (within its stage)
    total: int  # steps of the run (of the stage, for a method with stages)
    stage: str = "train"  # the stage's name (Stage.name); single-stage methods run one stage called 'train'


@dataclass(frozen=True)
class Stage:
    """One stage of a method that trains in stages, in the order returned by ``Method.stages()``.

    Each stage runs ``iters`` steps (``StepInfo.iteration`` counts from 0 in each and the LR schedule restarts), is
    validated every ``train.val_every`` of its steps and keeps its own best checkpoint. A stage after the first
    starts from the best checkpoint of the stage before it: the method's whole state and every optimizer's state
    as they were then; ``optimizer_from`` lets an optimizer start from another one's state there (ABD:
    ``(("model2", "model1"),)``). Then ``Method.begin_stage`` runs."""

    name: str
    iters: int
    uses_unlabeled: bool = True  # False: no unlabeled batch is drawn (``unlabeled`` is None)
    optimizers: tuple[str, ...] | None = None  # the optimizers stepped in this stage (None: all of them)
    optimizer_from: tuple[tuple[str, str], ...] = ()  # (optimizer, optimizer whose state it starts from)


class Method(nn.Module):
    name: ClassVar[str]
    # How tables and figures name the method (the literature's name, e.g. "Mean Teacher"); recorded in run.json.
    display_name: ClassVar[str | None] = None
    Config: ClassVar[type]
    uses_unlabeled: ClassVar[bool] = False
    # Unlabeled images per step = train.batch_unlabeled x this (UniMatch draws a second batch as CutMix sources).
    unlabeled_batch_multiplier: ClassVar[int] = 1
    # False: the engine hands over un-augmented slices and the method applies its own weak augmentation.
    engine_weak_augmentation: ClassVar[bool] = True
    api_version: ClassVar[int] = API_VERSION

    @classmethod
    def recipe_overrides(cls, recipe: str) -> dict:
        """Training-recipe fields (``train.*``) this method changes for ``recipe`` ('published' or 'cpu-small'),
        e.g. another batch size or optimizer. Applied before the command line, which still wins."""
        return {}

    @classmethod
    def data_overrides(cls, recipe: str) -> dict:
        """Input-protocol fields (``data.*``: ``train_size``, ``train_resize``, ``inference_resize``) this method
        changes for ``recipe``, e.g. SAM-2's own input size. Applied before the command line, which still wins."""
        return {}

    @classmethod
    def eval_overrides(cls, recipe: str) -> dict:
        """Metric-policy fields (``eval.*``) this method's recipe sets, e.g. ``{"also_protocols": ["bcp"]}``: the
        test predictions are also scored under the protocol its published numbers used (the benchmark's own
        policy stays the main one). Applied before the command line, which still wins."""
        return {}

    @classmethod
    def resolve_config(cls, config, synthetic: bool):
        """The config as it will run, after every ``--set``: a field whose effective value depends on this machine
        (e.g. whether pretrained weights are there) set to that value, so that config.yaml, its hash and the run's
        folder say what ran (UniMatch V2 without DINOv2 weights on the embedded phantom: ``init: random``).
        ``synthetic``: the run is on the embedded phantom. Raise ``UserError`` for a run that cannot start.
        ``ssbench run`` calls it again once the method is built (a download may have completed: SSS records the
        checkpoint's SHA-256 then), so it must be idempotent; ``ssbench eval`` does not call it. Fields the Config
        lists in a ``resolved_fields`` ClassVar are recorded and hashed but do not name the run's folder.
        Default: the config unchanged."""
        return config

    @classmethod
    def check_config(cls, cfg) -> None:
        """Refuse a run config this method cannot train with, before anything runs: raise ``ConfigError`` naming
        the key (BCP: ``train.batch_labeled`` must equal ``train.batch_unlabeled`` and be even). ``cfg`` is the
        resolved run config (``cfg.train``, ``cfg.data``, ``cfg.method_config``)."""

    @classmethod
    def for_evaluation(cls, config):
        """Config to rebuild the method when its weights come from a run's checkpoint (``ssbench eval``): e.g.
        skip loading pretrained weights that the checkpoint replaces anyway."""
        return config

    @classmethod
    def prepare(cls, config, synthetic_data: bool = False) -> list[str]:
        """Fetch what runs of ``config`` load from outside (pretrained weights into a cache), once, before a sweep
        submits its jobs, so that no job downloads on its own. Returns lines to show the user. A failure that the
        run itself would report (e.g. offline) is left to the run."""
        return []

    @classmethod
    def short_recipe(cls, config, iters: int, published_iters: int = 30000):
        """Config for a run much shorter than the published one (the embedded CPU default). Methods whose
        schedules are in absolute iterations scale them here; the result is what the run's config records."""
        return config

    @classmethod
    def scale_schedule(cls, config, iters: int, published_iters: int = 30000):
        """Config for a run of ``iters`` iterations (``--iters``, on any data): the absolute schedules (a
        pre-train stage, ramp-ups) scaled to the run's length, nothing else. A method whose ``short_recipe`` only
        scales schedules says ``scale_schedule = short_recipe``."""
        return config

    def __init__(self, config, ctx: MethodContext):
        super().__init__()
        self.config = config
        self.ctx = ctx
        self.warnings: list[str] = []  # recorded in run.json (e.g. random initialisation)

    def attach_unlabeled_volumes(self, volumes: dict) -> None:
        """case id -> (D, H, W) float32 array of all slices of that unlabeled volume, at native size
        (``ssbench.resize.resize_volume(v, ctx.image_size, ctx.resize)`` brings it to the input size)."""

    def attach_labeled_volumes(self, volumes: dict) -> None:
        """case id -> (image (D, H, W) float32, label (D, H, W) uint8) of each labeled volume, at native size."""

    def compile_targets(self) -> list[nn.Module]:
        """The networks ``train.compile=on`` compiles (``nn.Module.compile``, in place: state-dict keys and
        checkpoints unchanged). Default: every direct child module that holds parameters."""
        return [m for m in self.children() if next(m.parameters(), None) is not None]

    def trainable_parameters(self) -> Iterable[nn.Parameter]:
        """Parameters the optimizer updates (override to leave out a teacher)."""
        return [p for p in self.parameters() if p.requires_grad]

    def optimizer_params(self) -> dict[str, Iterable]:
        """One optimizer per entry: name -> its parameters (or torch param-group dicts, which may set their own
        ``lr``, or ``lr_scale``: that group's rate = ``train.lr`` x the scale, e.g. UniMatch V2's head at x40).
        Each is built from ``train.*`` (SGD or AdamW, momentum, weight decay) and follows
        ``train.lr_schedule``. Default: one optimizer, ``main``, over ``trainable_parameters()``. All of them are
        stepped after the same ``backward`` of ``"loss"``, as the co-training codes do."""
        return {"main": list(self.trainable_parameters())}

    def stages(self) -> list[Stage]:
        """The run's stages, in order. Default: one stage of ``ctx.total_iters`` (``train.iters``) steps. A method
        with stages takes their lengths from its config (e.g. ``pretrain_iters``) and, by convention, gives its
        last stage ``ctx.total_iters`` steps (so ``train.iters`` and ``--iters`` set the main stage)."""
        return [Stage("train", self.ctx.total_iters)]

    def begin_stage(self, stage: Stage) -> None:
        """Called as a stage after the first starts, once the engine has put back the previous stage's best
        checkpoint (weights and optimizer states): initialise what the stage adds, e.g. copy the student into the
        teacher. Not called for the first stage, nor again when a run resumes inside a stage."""

    def evaluated_model(self) -> str | None:
        """The name of the network ``predict`` uses, recorded in run.json (``evaluated_model``). Default: the
        config's ``evaluate`` field if it has one (Mean Teacher: student or teacher)."""
        value = getattr(self.config, "evaluate", None)
        return None if value is None else str(value)

    def training_step(self, labeled: Batch, unlabeled: Batch | None, step: StepInfo) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def after_optimizer_step(self, step: StepInfo) -> None:
        """Called after each optimizer step (EMA updates go here)."""

    @torch.no_grad()
    def predict(self, image: torch.Tensor) -> torch.Tensor:
        """(B, C, S, S) images -> (B, K, S, S) class scores (logits or probabilities)."""
        raise NotImplementedError

    @torch.no_grad()
    def predict_volume(self, slices: torch.Tensor, batch: int = 16) -> torch.Tensor:
        """(D, C, S, S) all slices of one volume -> (D, K, S, S) class scores. Never sees a label."""
        return torch.cat([self.predict(slices[i : i + batch]) for i in range(0, len(slices), batch)])
