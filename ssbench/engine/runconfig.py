"""The run configuration: shared sections plus the dataset's options and the method's hyper-parameters.

Saved as config.yaml with one section per name:
  data    which data, which split            train   the optimisation recipe and schedule
  eval    the metric policy                  <dataset name>  the loader's protocol options (e.g. bhsd.window)
  <method name>   the method's hyper-parameters (e.g. mean-teacher.ema_decay)
``--set section.key=value`` overrides any field; ``method.key`` is an alias of the method's own section.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import Field

from ssbench.fields import apply_override, check_section, check_value, config_hash, field_types, from_dict, to_dict
from ssbench.errors import ConfigError
from ssbench.runfolder import UNHASHED_DATA  # recorded, never hashed (the run folder's owner lists them)
from ssbench.metrics.evaluation import MetricPolicy


# Bounds shared by the fields below.
Count = Annotated[int, Field(ge=1)]
Seed = Annotated[int, Field(ge=0, lt=2**31)]


@dataclass(frozen=True)
class DataConfig:
    dataset: Annotated[str, Field(description="registered dataset name (set by --dataset)")] = "acdc"
    root: Annotated[str | None, Field(
        description="data folder (set by --data-root); none: the embedded synthetic phantom, generated once into the "
                    "cache")] = None
    split: Annotated[str, Field(description="labeled patients: N, P% or all (set by --split)")] = "10%"
    split_seed: Annotated[Seed, Field(
        description="seed of the labeled draw (datasets without a frozen protocol)")] = 0
    train_size: Annotated[int, Field(ge=16, multiple_of=16, description=(
        "the method's square input size (the UNet literature: 256; a multiple of 16 for the UNet's 4 poolings)"))] = 256
    # How native slices become train_size (ssbench.resize): 'order0' = scipy zoom order 0 for image and label
    # (SSL4MIS, UniMatch training); 'bilinear' = images bilinear, labels nearest (SAM-2's pre-processing).
    train_resize: Annotated[Literal["order0", "bilinear"], Field(
        description="how native training slices become train_size")] = "order0"
    # At test time: 'order0' = image in and label map back with order 0 (SSL4MIS's test script, the benchmark's
    # default for every method); 'bilinear' = image in and class scores back bilinearly (UniMatch's evaluation).
    inference_resize: Annotated[Literal["order0", "bilinear"], Field(
        description="how val/test volumes go to train_size and predictions back to the native grid")] = "order0"
    synthetic: Annotated[bool, Field(description="the embedded phantom (set by the engine, never by --set)")] = False
    # GPU memory for training slices (engine.data.DevicePool), copied before training (seconds for the default);
    # the rest is read from the prepared cache when drawn.
    # Where a slice comes from changes no pixel, so this is recorded but not hashed (as data.root).
    device_budget_gb: Annotated[float, Field(ge=0, description=(
        "GiB of device memory for resident training slices (augment on device); the rest streamed; not hashed"))
    ] = 4.0
    # Which data (Dataset.identity): runs on different data never share a hash, a folder or a table cell.
    name: Annotated[str, Field(description=(
        "the dataset's own name where its files give one (nnU-Net: dataset.json's name; names the results folder; "
        "set by the engine)"))] = ""
    identity: Annotated[str, Field(description=(
        "digest of the dataset's name, classes and case list (set by the engine)"))] = ""


@dataclass(frozen=True)
class TrainConfig:
    recipe: Annotated[Literal["published", "cpu-small"], Field(
        description="'published' on real data, 'cpu-small' on the embedded phantom (set by the engine)")] = "published"
    # 'iterations': train.iters steps (SSL4MIS). 'epochs': train.epochs passes over the epoch pool (the unlabeled
    # slices for methods that use them, else the labeled ones), each of len(pool) // batch steps with the rest
    # dropped (UniMatch's loaders); the resulting train.iters is derived from the data and recorded.
    schedule: Annotated[Literal["iterations", "epochs"], Field(
        description="length in train.iters steps, or in train.epochs passes over the epoch pool")] = "iterations"
    iters: Annotated[Count, Field(description="training steps (derived from the data when schedule = epochs)")] = 30000
    epochs: Annotated[Count, Field(description="passes over the epoch pool, with schedule = epochs")] = 300
    batch_labeled: Annotated[Count, Field(description="labeled slices per step")] = 12
    batch_unlabeled: Annotated[int, Field(
        ge=0, description="unlabeled slices per step (methods that use unlabeled data need at least 1)")] = 12
    optimizer: Annotated[Literal["sgd", "adamw"], Field(
        description="SGD with momentum (the UNet recipes) or AdamW (SAM-2 fine-tuning)")] = "sgd"
    lr: Annotated[float, Field(gt=0, lt=3.4e38, description="initial learning rate")] = 0.01
    momentum: Annotated[float, Field(ge=0, lt=1, description="SGD momentum")] = 0.9
    weight_decay: Annotated[float, Field(ge=0, description="weight decay of the optimizer")] = 1e-4
    # 'poly': lr = lr0 (1 - k/iters)^poly_power, set after each step as SSL4MIS and UniMatch do; 'constant': lr0
    # throughout (BCP and ABD never touch the learning rate). A method with stages restarts it in each stage.
    lr_schedule: Annotated[Literal["poly", "constant"], Field(
        description="poly decay of the learning rate, or constant (BCP, ABD)")] = "poly"
    poly_power: Annotated[float, Field(ge=0, description="lr = lr0 * (1 - it / iters) ** poly_power")] = 0.9
    val_every: Annotated[Count | Literal["epoch"], Field(
        description="iterations between validations, or 'epoch' for once per epoch (UniMatch)")] = 200
    val_epochs: Annotated[Count, Field(description=(
        "with val_every=epoch: validate after the first epoch and then every val_epochs-th (AD-MT: 2)"))] = 1
    checkpoint_every: Annotated[Count, Field(
        description="iterations between resumable checkpoints (model, optimizer, RNG, sampler position)")] = 1000
    seed: Annotated[Seed, Field(description="training seed (the literature's 1337)")] = 1337
    augment: Annotated[Literal["rotflip-rotate", "rotflip-or-rotate", "none"], Field(
        description=("the engine's weak augmentation: rotflip-rotate = UniMatch's (rot90/flip p 0.5, else a "
                     "rotation p 0.5, else none); rotflip-or-rotate = SSL4MIS's since 24db034 (always one of the two)"))
    ] = "rotflip-rotate"
    eval_batch: Annotated[Count, Field(description="slices per forward pass at validation and test time")] = 16
    # bf16 autocast of the training step ('auto': on CUDA, off elsewhere; resolved and recorded, since precision
    # can change numbers). DistributedDataParallel runs may synchronise BatchNorm across ranks (UniMatch's runs).
    amp: Annotated[Literal["auto", "bf16", "off"], Field(
        description="bf16 autocast of the training step (auto: on CUDA only; resolved and recorded)")] = "auto"
    # Several processes (DDP) train like one only where they can: BatchNorm synchronised across ranks ('auto': on
    # under DDP on CUDA, as UniMatch's official runs; gloo on CPU has no SyncBatchNorm), losses averaged over the
    # ranks before they are logged. The process count is recorded and hashed: runs on different counts of
    # processes never share a folder or a table row (docs/guarantees.md says what differs).
    sync_bn: Annotated[Literal["auto", "on", "off"], Field(
        description="synchronise BatchNorm across DDP ranks (auto: on under DDP on CUDA; resolved and recorded)")
    ] = "auto"
    # torch.compile of the method's networks (nn.Module.compile: parameters and checkpoints unchanged). Off by
    # default: benchmarks/train_step.py measures what it gains against eager in the same call, per device.
    compile: Annotated[Literal["off", "on"], Field(
        description="torch.compile the method's networks (Method.compile_targets); recorded, since kernels differ")
    ] = "off"
    world_size: Annotated[Count, Field(
        description="training processes (set by the engine from torchrun / --gpus; part of the hash)")] = 1
    # Model selection set. 'legacy-val+test' reproduces UniMatch's own protocol (best epoch on val+test: test
    # leakage); it is never a default, and its runs carry the name in their folder and a warning.
    selection: Annotated[Literal["val", "legacy-val+test"], Field(
        description="the set that picks the best checkpoint; legacy-val+test leaks the test set (UniMatch's own)")
    ] = "val"
    deterministic: Annotated[bool, Field(description=(
        "deterministic torch algorithms, for GPU runs that repeat (--deterministic; see docs/guarantees.md)"))
    ] = False


# The embedded default's recipe: small enough for a few minutes on 2 CPU cores. Only the schedule and the batch
# change; losses, optimizer and augmentation stay as published.
CPU_SMALL = {"iters": 600, "batch_labeled": 4, "batch_unlabeled": 4, "val_every": 100, "checkpoint_every": 200}
CPU_SMALL_TRAIN_SIZE = 128

SHARED_SECTIONS = ("data", "train", "eval")
# Fields the engine sets from the command line or the data: a --set would make the record disagree with the run.
SET_BY_ENGINE = {
    "data.dataset": "--dataset",
    "data.root": "--data-root",
    "data.synthetic": "--data-root (omitted: the embedded phantom)",
    "data.name": "the dataset's files (e.g. nnU-Net's dataset.json name)",
    "data.identity": "the dataset's files (its name, classes and case list)",
    "train.recipe": "--data-root (real data: published; the embedded phantom: cpu-small)",
    "train.world_size": "the process count (--gpus N, torchrun)",
}


@dataclass
class RunConfig:
    data: DataConfig
    train: TrainConfig
    eval: MetricPolicy
    dataset_options: object
    method_config: object
    method_name: str
    variant: str = ""  # method fields set away from the recipe, e.g. 'dfe=false' (derived; names the folder)
    protocol_variant: str = ""  # evaluation protocol away from the recipe, e.g. 'legacy-valtest' (derived)
    unused: tuple[str, ...] = ()  # shared fields that do not act in this run (derived; not recorded): unused_fields

    def sections(self) -> dict:
        return {
            "data": self.data,
            "train": self.train,
            "eval": self.eval,
            self.data.dataset: self.dataset_options,
            self.method_name: self.method_config,
        }

    def to_dict(self) -> dict:
        out = {name: to_dict(section) for name, section in self.sections().items()}
        for dotted in self.unused:
            section, _, key = dotted.partition(".")
            out[section].pop(key, None)
        out["method"] = self.method_name
        return out

    def hash(self) -> str:
        """Hash of everything that can change the numbers (the data root's location is not part of it)."""
        d = self.to_dict()
        d["data"] = {k: v for k, v in d["data"].items() if k not in UNHASHED_DATA}
        return config_hash(d)

    def check(self) -> "RunConfig":
        """Validate every value of every section against its declared constraints (code may have replaced some)."""
        for name, section in self.sections().items():
            check_section(section, name)
        return self

    def override(self, dotted: str, raw: str) -> "RunConfig":
        section, _, rest = dotted.partition(".")
        if section == "method":
            section = self.method_name
        sections = self.sections()
        if section not in sections or not rest:
            raise ConfigError(f"--set {dotted}: unknown section {section!r} (known: {', '.join(sections)})")
        new = apply_override(sections[section], rest, raw, label=dotted)
        return self._replace_section(section, new)

    def set(self, dotted: str, value, label: str) -> "RunConfig":
        """``dotted`` set to a typed value (a parsed command-line option, a value the engine derived), checked
        against the field's declared type and bounds; an error names ``label`` (the option as typed)."""
        section, _, key = dotted.partition(".")
        obj = self.sections()[section]
        checked = check_value(value, field_types(type(obj))[key], label)
        return self._replace_section(section, dataclasses.replace(obj, **{key: checked}))

    def _replace_section(self, section: str, new) -> "RunConfig":
        if section in SHARED_SECTIONS:
            return dataclasses.replace(self, **{section: new})
        if section == self.data.dataset:
            return dataclasses.replace(self, dataset_options=new)
        return dataclasses.replace(self, method_config=new)

    @classmethod
    def from_dict(cls, d: dict, method_cls, dataset_cls) -> "RunConfig":
        if not isinstance(d, dict) or not isinstance(d.get("method"), str) or "data" not in d:
            raise ConfigError("config: expected a mapping with 'method' and a 'data' section")
        d = dict(d)
        method_name = d.pop("method")
        data = from_dict(DataConfig, d.pop("data"), "data")
        known = {"train", "eval", data.dataset, method_name}
        extra = set(d) - known
        if extra:
            raise ConfigError(f"config: unknown section {sorted(extra)[0]!r}")
        train = from_dict(TrainConfig, d.get("train", {}), "train")
        return cls(
            data=data,
            train=train,
            eval=from_dict(MetricPolicy, d.get("eval", {}), "eval"),
            dataset_options=from_dict(dataset_cls.Options, d.get(data.dataset, {}), data.dataset),
            method_config=from_dict(method_cls.Config, d.get(method_name, {}), method_name),
            method_name=method_name,
            unused=unused_fields(method_cls, train),
        )


def unused_fields(method_cls, train: TrainConfig) -> tuple[str, ...]:
    """Shared fields that cannot act in a run of ``method_cls`` with ``train``: left out of its config.yaml and hash
    (and refused on the command line), so that the record lists only what shaped the run."""
    out = []
    if train.optimizer != "sgd":
        out.append("train.momentum")  # AdamW has no momentum field (its betas are PyTorch's defaults)
    if not method_cls.engine_weak_augmentation:
        out.append("train.augment")  # the method augments its own inputs
    return tuple(out)
