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
from typing import Literal

from ssbench.config import apply_override, config_hash, from_dict, to_dict
from ssbench.errors import ConfigError
from ssbench.metrics.evaluation import MetricPolicy


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "acdc"
    root: str | None = None  # None: the embedded synthetic phantom, generated once into the cache
    split: str = "10%"
    split_seed: int = 0  # seeded labeled draws (datasets without a frozen protocol)
    train_size: int = 256  # the method's square input size (the UNet literature: 256)
    # How native slices become train_size (ssbench.resize): 'order0' = scipy zoom order 0 for image and label
    # (SSL4MIS, UniMatch training); 'bilinear' = images bilinear, labels nearest (SAM-2's pre-processing).
    train_resize: Literal["order0", "bilinear"] = "order0"
    # At test time: 'order0' = image in and label map back with order 0 (SSL4MIS's test script, the benchmark's
    # default for every method); 'bilinear' = image in and class scores back bilinearly (UniMatch's evaluation).
    inference_resize: Literal["order0", "bilinear"] = "order0"
    synthetic: bool = False  # set by the engine when root is the embedded phantom


@dataclass(frozen=True)
class TrainConfig:
    recipe: str = "published"  # 'published' or 'cpu-small' (the embedded default)
    # 'iterations': train.iters steps (SSL4MIS). 'epochs': train.epochs passes over the epoch pool (the unlabeled
    # slices for methods that use them, else the labeled ones), each of len(pool) // batch steps with the rest
    # dropped (UniMatch's loaders); the resulting train.iters is derived from the data and recorded.
    schedule: Literal["iterations", "epochs"] = "iterations"
    iters: int = 30000
    epochs: int = 300  # with schedule = epochs
    batch_labeled: int = 12
    batch_unlabeled: int = 12
    optimizer: Literal["sgd", "adamw"] = "sgd"  # SGD with momentum: the UNet recipes; AdamW: SAM-2 fine-tuning
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    poly_power: float = 0.9  # lr = lr0 * (1 - it / iters) ** poly_power
    val_every: int | Literal["epoch"] = 200  # iterations between validations, or once per epoch (UniMatch)
    checkpoint_every: int = 1000  # the resumable checkpoint (model, optimizer, RNG, sampler position)
    seed: int = 1337
    augment: Literal["rotflip-rotate", "none"] = "rotflip-rotate"
    eval_batch: int = 16
    # bf16 autocast of the training step ('auto': on CUDA, off elsewhere; resolved and recorded, since precision
    # can change numbers). DistributedDataParallel runs may synchronise BatchNorm across ranks (UniMatch's runs).
    amp: Literal["auto", "bf16", "off"] = "auto"
    sync_bn: bool = False
    # Model selection set. 'legacy-val+test' reproduces UniMatch's own protocol (best epoch on val+test: test
    # leakage); it is never a default, and its runs carry the name in their folder and a warning.
    selection: Literal["val", "legacy-val+test"] = "val"


# The embedded default's recipe: small enough for a few minutes on 2 CPU cores. Only the schedule and the batch
# change; losses, optimizer and augmentation stay as published.
CPU_SMALL = {"iters": 600, "batch_labeled": 4, "batch_unlabeled": 4, "val_every": 100, "checkpoint_every": 200}
CPU_SMALL_TRAIN_SIZE = 128

SHARED_SECTIONS = ("data", "train", "eval")


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
        out["method"] = self.method_name
        return out

    def hash(self) -> str:
        """Hash of everything that can change the numbers (the data root's location is not part of it)."""
        d = self.to_dict()
        d["data"] = {k: v for k, v in d["data"].items() if k != "root"}
        return config_hash(d)

    def override(self, dotted: str, raw: str) -> "RunConfig":
        section, _, rest = dotted.partition(".")
        if section == "method":
            section = self.method_name
        sections = self.sections()
        if section not in sections or not rest:
            raise ConfigError(f"--set {dotted}: unknown section {section!r} (known: {', '.join(sections)})")
        new = apply_override(sections[section], rest, raw, label=dotted)
        return self._replace_section(section, new)

    def _replace_section(self, section: str, new) -> "RunConfig":
        if section in SHARED_SECTIONS:
            return dataclasses.replace(self, **{section: new})
        if section == self.data.dataset:
            return dataclasses.replace(self, dataset_options=new)
        return dataclasses.replace(self, method_config=new)

    @classmethod
    def from_dict(cls, d: dict, method_cls, dataset_cls) -> "RunConfig":
        d = dict(d)
        method_name = d.pop("method")
        data = from_dict(DataConfig, d.pop("data"), "data")
        known = {"train", "eval", data.dataset, method_name}
        extra = set(d) - known
        if extra:
            raise ConfigError(f"config: unknown section {sorted(extra)[0]!r}")
        return cls(
            data=data,
            train=from_dict(TrainConfig, d.get("train", {}), "train"),
            eval=from_dict(MetricPolicy, d.get("eval", {}), "eval"),
            dataset_options=from_dict(dataset_cls.Options, d.get(data.dataset, {}), data.dataset),
            method_config=from_dict(method_cls.Config, d.get(method_name, {}), method_name),
            method_name=method_name,
        )
