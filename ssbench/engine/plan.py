"""One plan for a run: its config, method, dataset, device, folder and schedule, resolved once and in one order.

    1. defaults            the shared sections, the dataset's Options, the method's Config
    2. the recipe          published on real data; cpu-small on the embedded phantom; the method's recipe, data and
                           eval overrides
    3. typed options       --seed, --split-seed, --amp, --iters, --deterministic, the process count
    4. the short recipe    on cpu-small, the method scales its absolute schedules to the run's length
    5. --set               text, parsed against each field's declared type
    6. this machine        Method.prepare (fetches pretrained weights, when the plan is for a run), then
                           Method.resolve_config: what the run will really be (e.g. init: random without weights)
    7. where it runs       HD units from the data; bf16 and SyncBatchNorm from the device and the process count
    8. the folder          dataset / method[@variant] / split / seed[-protocol]
    9. the schedule        (once the data are loaded) train.iters from train.epochs and the epoch pool's slices

``execute`` (a run), ``ssbench config``, the sweep's planner and the benchmarks' cached-run check all call
``plan``; nothing else resolves a config. No file is written here.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

from ssbench import registry
from ssbench.fields import config_hash, from_dict, to_dict
from ssbench.engine.runconfig import (CPU_SMALL, CPU_SMALL_TRAIN_SIZE, SET_BY_ENGINE, DataConfig, RunConfig,
                                   TrainConfig, unused_fields)
from ssbench.errors import ConfigError, UserError
from ssbench.metrics.evaluation import MetricPolicy
from ssbench.runfolder import Staging
from ssbench.splits import split_tag


@dataclass
class RunRequest:
    method: str
    dataset: str = "acdc"
    data_root: str | None = None
    split: str = "10%"
    split_seed: int | None = None
    seed: int | None = None
    iters: int | None = None
    sets: tuple[str, ...] = ()
    out: str = "results"
    device: str = "auto"
    resume: bool = False
    overwrite: bool = False
    quiet: bool = False
    amp: str | None = None  # 'bf16' or 'off' (--amp / --no-amp); None: the config's train.amp ('auto')
    execution: dict | None = None  # Runtime overrides (channels_last, augment_on_device, log_every): benchmarks
    deterministic: bool = False
    world: int | None = None  # training processes; None: this process's (torchrun's WORLD_SIZE, else 1)
    log: tuple[str, ...] = ("tensorboard",)  # tracking backends (--log; engine.tracking): run.json, not the hash
    data_cache: str | None = None  # --data-cache: prepared-data folder, or 'off' (ssbench.datasets.cache)


@dataclass(frozen=True)
class Plan:
    request: RunRequest
    cfg: RunConfig
    method_cls: type
    dataset: object
    run_dir: Path
    device: object = None  # torch.device; None: planned without one (a sweep's planner), cfg's 'auto' unresolved
    schedule: dict | None = None  # after with_schedule: the epoch pool, its slices, iterations per epoch
    notes: tuple[str, ...] = field(default=())  # what Method.prepare said (a download)

    @property
    def staging(self) -> Staging:
        return Staging(self.run_dir)

    def split(self):
        return self.dataset.split(self.cfg.data.split, self.cfg.data.split_seed)

    def with_schedule(self, pools) -> "Plan":
        """Step 9: with ``train.schedule = epochs`` the length in iterations follows from the data (recorded)."""
        from ssbench.engine.schedule import epoch_pool, iters_per_epoch

        cfg = self.cfg
        per_epoch = iters_per_epoch(self.method_cls, cfg, pools)
        if cfg.train.schedule == "epochs":
            cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, iters=cfg.train.epochs * per_epoch))
        pool = epoch_pool(self.method_cls, cfg)
        schedule = {"epoch_pool": pool, "epoch_pool_slices": len(pools[pool]), "iters_per_epoch": per_epoch}
        return dataclasses.replace(self, cfg=cfg, schedule=schedule)


def plan(req: RunRequest, *, device="resolve", fetch: bool = False) -> Plan:
    """Steps 1-8. ``device``: 'resolve' (from ``req.device``), a torch.device (a rank's), or None (no step 7: the
    sweep plans folders on a machine that may not be the one it runs on). ``fetch``: let the method fetch what it
    loads from outside before its config is resolved (a run does; ``ssbench config`` does not)."""
    cfg, method_cls, dataset, notes = _resolve_config(req, fetch)
    if device == "resolve":
        device = resolve_device(req.device)
    if device is not None:
        cfg = resolve_where_it_runs(cfg, dataset, device)
    return Plan(req, cfg, method_cls, dataset, run_dir_for(cfg, req.out), device, notes=tuple(notes))


def build_config(req: RunRequest):
    """Steps 1-6 without fetching: the config, the method class and the opened dataset. No files written."""
    cfg, method_cls, dataset, _ = _resolve_config(req, fetch=False)
    return cfg, method_cls, dataset


def resolve_device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available (CUDA_VISIBLE_DEVICES="
                        f"{os.environ.get('CUDA_VISIBLE_DEVICES', '(unset)')})")
    if name not in ("cpu", "cuda"):
        raise UserError(f"--device {name}: expected auto, cpu or cuda")
    return torch.device(name)


def _resolve_config(req: RunRequest, fetch: bool):
    from ssbench.datasets import synthetic
    from ssbench.engine.runtime import distributed_env

    method_cls = registry.method(req.method)
    dataset_cls = registry.dataset(req.dataset)
    if req.world is not None and req.world < 1:
        raise UserError(f"--gpus {req.world}: must be at least 1")

    # 1-2. defaults and the recipe
    # the embedded phantom, or `ssbench data synth`'s output (marked by its PHANTOM.json): always filed as a phantom
    is_synthetic = req.data_root is None or synthetic.phantom_of(req.data_root) is not None
    root = str(synthetic.embedded(req.dataset)) if req.data_root is None else req.data_root
    root = os.path.abspath(Path(root).expanduser())  # recorded: `ssbench eval` must not depend on the cwd
    train = TrainConfig()
    data = DataConfig(dataset=req.dataset, root=root, split=req.split, synthetic=is_synthetic,
                      train_size=dataset_cls.train_size)
    if is_synthetic:
        train = dataclasses.replace(train, recipe="cpu-small", **CPU_SMALL)
        data = dataclasses.replace(data, train_size=CPU_SMALL_TRAIN_SIZE)
    train = _overridden(TrainConfig, train, method_cls.recipe_overrides(train.recipe), "train")
    data = _overridden(DataConfig, data, method_cls.data_overrides(train.recipe), "data")
    policy = _overridden(MetricPolicy, MetricPolicy(), method_cls.eval_overrides(train.recipe), "eval")
    cfg = RunConfig(data, train, policy, dataset_cls.Options(), method_cls.Config(), method_cls.name)

    # 3. the command line's typed options
    world = req.world if req.world is not None else distributed_env()[1]
    cfg = cfg.set("train.world_size", world, "--gpus")
    if req.seed is not None:
        cfg = cfg.set("train.seed", req.seed, "--seed")
    if req.split_seed is not None:
        cfg = cfg.set("data.split_seed", req.split_seed, "--split-seed")
    if req.amp is not None:
        cfg = cfg.set("train.amp", req.amp, "--amp")
    if req.iters is not None:  # --iters is a length in iterations, whatever the recipe's schedule
        cfg = cfg.set("train.schedule", "iterations", "--iters").set("train.iters", req.iters, "--iters")
    if req.deterministic:
        cfg = cfg.set("train.deterministic", True, "--deterministic")

    # 4. the method's absolute schedules (BCP's pre-train, ramp-ups) scale with the run's length: on the phantom
    # with its CPU default, and under --iters on any data (Method.scale_schedule); --set still wins
    if cfg.train.recipe == "cpu-small":
        cfg = dataclasses.replace(cfg, method_config=method_cls.short_recipe(cfg.method_config, cfg.train.iters))
    elif req.iters is not None:
        cfg = dataclasses.replace(cfg, method_config=method_cls.scale_schedule(cfg.method_config, cfg.train.iters))
    recipe = cfg

    # 5. --set
    for item in req.sets:
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or not key:
            raise ConfigError(f"--set {item}: expected key=value")
        if key in SET_BY_ENGINE:
            raise ConfigError(f"--set {key}: set by {SET_BY_ENGINE[key]}, not by --set")
        cfg = cfg.override(key, value.strip())
        if req.iters is not None and ((key == "train.iters" and cfg.train.iters != req.iters)
                                      or cfg.train.schedule != "iterations"):  # never one of two lengths, silently
            raise ConfigError(f"--iters {req.iters} and --set {item}: two training lengths; give one of them")
        if key == "train.iters" and cfg.train.schedule == "epochs":
            raise ConfigError(f"--set {item}: the schedule is in epochs (train.epochs={cfg.train.epochs}); "
                              "use --iters N or --set train.schedule=iterations to give a length in iterations")

    # 6. what this machine will run, recorded so that the config, its hash and the folder say what ran
    notes = list(method_cls.prepare(cfg.method_config, cfg.data.synthetic) or ()) if fetch else []
    cfg = dataclasses.replace(cfg, method_config=method_cls.resolve_config(cfg.method_config, cfg.data.synthetic))
    cfg = dataclasses.replace(cfg, unused=unused_fields(method_cls, cfg.train))
    for item in req.sets:
        key = item.partition("=")[0].strip()
        if key in cfg.unused:
            raise ConfigError(f"--set {key}: does not act in a {cfg.method_name} run with train.optimizer="
                              f"{cfg.train.optimizer} (so its config does not record it)")
    _check_values(cfg.check(), method_cls)
    if cfg.data.split_seed != 0 and dataset_cls.frozen_split is not None:
        raise UserError(f"--split-seed {cfg.data.split_seed}: the {req.dataset} split is frozen (the literature's "
                        "patient lists); a split seed would change nothing")
    cfg = dataclasses.replace(cfg, variant=variant_tag(recipe.method_config, cfg.method_config),
                              protocol_variant=protocol_tag(recipe, cfg))
    dataset = dataset_cls(cfg.data.root, cfg.dataset_options)
    ident = dataset.identity()  # which data: runs on different data never share a hash, a folder or a table cell
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, name=ident["name"], identity=ident["digest"]))
    return cfg, method_cls, dataset, notes


def _overridden(cls, section, overrides: dict | None, name: str):
    return from_dict(cls, {**to_dict(section), **overrides}, name) if overrides else section


def variant_tag(recipe_config, config) -> str:
    """'dfe=false,pcsw=false' for the method fields set away from the recipe (an ablation gets its own folder).
    Fields the Config lists in ``resolved_fields`` (e.g. a checkpoint's hash) are recorded but name nothing."""
    parts = []
    resolved = getattr(type(config), "resolved_fields", ())
    for f in dataclasses.fields(config):
        if f.name in resolved:
            continue
        a, b = getattr(recipe_config, f.name), getattr(config, f.name)
        if a != b:
            text = ",".join(map(str, b)) if isinstance(b, tuple) else str(b)
            if len(text) > 24 or not all(ch.isalnum() or ch in "._-," for ch in text):
                text = config_hash({"v": text})[:8]
            parts.append(f"{f.name}={text.lower()}")
    return ",".join(parts)


def protocol_tag(recipe: RunConfig, cfg: RunConfig) -> str:
    """'legacy-valtest', 'infer-bilinear', 'ddp2', ...: protocol choices away from the method's recipe (how it is
    selected, evaluated, and by how many processes trained). They name the seed folder, so that such a run never
    shares a folder (or a table cell) with a recipe run."""
    parts = []
    if cfg.train.selection != "val":
        parts.append(cfg.train.selection.replace("+", ""))
    if cfg.data.inference_resize != recipe.data.inference_resize:
        parts.append(f"infer-{cfg.data.inference_resize}")
    if cfg.train.world_size > 1:  # trained by several processes (DDP): not the same run as one process's
        parts.append(f"ddp{cfg.train.world_size}")
    if cfg.data.split_seed != 0:  # another labeled draw: never the folder of split seed 0's run
        parts.append(f"split{cfg.data.split_seed}")
    return "-".join(parts)


def _check_values(cfg: RunConfig, method_cls) -> None:
    """Checks that involve the method; each field's own constraints are declared with it (RunConfig.check)."""
    t = cfg.train
    if method_cls.uses_unlabeled and t.batch_unlabeled < 1:
        raise ConfigError(f"train.batch_unlabeled={t.batch_unlabeled}: method {method_cls.name} trains on unlabeled "
                          "batches and needs at least 1")
    method_cls.check_config(cfg)
    from ssbench.engine.prompted_eval import PROMPTED, check_promptable

    for name in cfg.eval.also_protocols:
        if name in PROMPTED:
            check_promptable(method_cls, name)


def dataset_tag(cfg: RunConfig) -> str:
    """The dataset's folder: the loader's name, plus the data's own name where it has one ('nnunet-Liver')."""
    if cfg.data.synthetic:  # ssbench's own phantoms (their identity still tells two of them apart)
        return f"{cfg.data.dataset}-phantom"
    tag = cfg.data.dataset
    if cfg.data.name and cfg.data.name.lower() != tag.lower():
        tag += f"-{cfg.data.name}"
    return tag


def run_dir_for(cfg: RunConfig, out: str) -> Path:
    seed = f"seed{cfg.train.seed}"
    if cfg.protocol_variant:  # e.g. a leaky selection never shares a folder name with an honest run
        seed += "-" + cfg.protocol_variant
    method = cfg.method_name + (f"@{cfg.variant}" if cfg.variant else "")
    return Path(out) / dataset_tag(cfg) / method / split_tag(cfg.data.split) / seed


def resolve_hd_units(cfg: RunConfig, dataset) -> RunConfig:
    units = cfg.eval.hd_units
    if units == "auto":
        units = "mm" if dataset.spacing_known() else "voxel"
    elif units == "mm" and not dataset.spacing_known():
        raise UserError(f"eval.hd_units=mm: the {dataset.describe().get('layout', '')} data at {dataset.root} keep no "
                        "voxel spacing; use --hd-units voxel")
    return dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, hd_units=units))


def resolve_where_it_runs(cfg: RunConfig, dataset, device) -> RunConfig:
    """Step 7: the 'auto' settings, resolved and then recorded: HD units from the data (mm where spacing is known),
    bf16 autocast and SyncBatchNorm from the device and the process count."""
    from ssbench.engine.runtime import resolve_amp, resolve_sync_bn

    cfg = resolve_hd_units(cfg, dataset)
    t = cfg.train
    return dataclasses.replace(cfg, train=dataclasses.replace(
        t, amp=resolve_amp(t.amp, device), sync_bn=resolve_sync_bn(t.sync_bn, device, t.world_size)))


# ---- what a run says before its first step: data sets in patients, volumes and slices, every stage with its length,
# the total, where it runs and in what precision, where its results go

def _slices(cases) -> int:
    return sum(int(c.image.shape[0]) for c in cases)


def _set(name: str, patients, cases) -> str:
    return f"{name} {len(patients)} patients / {len(cases)} volumes / {_slices(cases)} slices"


def plan_text(cfg, method, inputs, split, dataset, runtime, final_dir: Path) -> str:
    """Three lines: data, schedule, execution. ``inputs``: the loaded training and validation cases
    (``engine.run.Inputs``); the test volumes are counted, not read (they are read once, at the end)."""
    test_volumes = sum(len(dataset.case_ids(p)) for p in split.test)
    unlabeled = (_set("unlabeled", split.unlabeled, inputs.unlabeled) if inputs.unlabeled
                 else f"unlabeled {len(split.unlabeled)} patients (not used by {cfg.method_name})")
    data = (f"plan: {cfg.method_name} on {dataset_tag(cfg)}, split {cfg.data.split}: "
            f"{_set('labeled', split.labeled, inputs.labeled)}; {unlabeled}; "
            f"{_set('val', split.val, inputs.val)}; test {len(split.test)} patients / {test_volumes} volumes")
    stages = list(method.stages())
    total = sum(s.iters for s in stages)
    parts = [f"{s.name} {s.iters}" + ("" if s.uses_unlabeled or not type(method).uses_unlabeled else
                                      " (labeled only)") for s in stages]
    schedule = (f"plan: {len(stages)} stage{'s' if len(stages) > 1 else ''} ({' -> '.join(parts)} iterations), "
                f"{total} iterations in all; validation every {cfg.train.val_every}"
                + (f" (every {cfg.train.val_epochs} epochs)" if cfg.train.val_every == "epoch" else " iterations")
                + f", checkpoint every {cfg.train.checkpoint_every}")
    device = str(runtime.device)
    if runtime.device.type == "cuda":
        import torch

        device += f" ({torch.cuda.get_device_name(runtime.device)})"
    execution = (f"plan: {device} x {runtime.world} process{'es' if runtime.world > 1 else ''}, "
                 f"{'bf16 autocast' if runtime.amp else 'fp32'}; results: {final_dir}")
    return "\n".join((data, schedule, execution))
