"""One run: resolve the config, load and validate the data, train with validation-based selection, evaluate the
test set once at the end (best-val and final checkpoints) and publish the results folder atomically.

The results folder is assembled in a hidden staging folder ``.<name>.incomplete`` beside its final place and
renamed into place only when everything is written: a run that dies leaves nothing that looks complete, and
``--resume`` continues from the staging folder's periodic checkpoint.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ssbench import registry
from ssbench.atomic import make_dirs, write_csv, write_json, write_text, write_yaml
from ssbench.config import from_dict, to_dict
from ssbench.datasets.base import check_case
from ssbench.engine.config import (CPU_SMALL, CPU_SMALL_TRAIN_SIZE, SET_BY_ENGINE, UNHASHED_DATA, DataConfig,
                                   RunConfig, TrainConfig, unused_fields)
from ssbench.errors import ConfigError, UserError
from ssbench.metrics.evaluation import MetricPolicy
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
    data_cache: str | None = None  # --data-cache: prepared-data folder, or 'off' (ssbench.datasets.cache)


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


def build_config(req: RunRequest):
    """Resolve the full config (defaults, recipe, CLI options, --set) and open the dataset. No files written."""
    from ssbench.datasets import synthetic
    from ssbench.engine.runtime import distributed_env

    method_cls = registry.method(req.method)
    dataset_cls = registry.dataset(req.dataset)
    root = req.data_root
    is_synthetic = root is None
    if is_synthetic:
        root = str(synthetic.embedded(req.dataset))
    train = TrainConfig()
    data = DataConfig(dataset=req.dataset, root=root, split=req.split, synthetic=is_synthetic,
                      train_size=dataset_cls.train_size)
    if is_synthetic:
        train = dataclasses.replace(train, recipe="cpu-small", **CPU_SMALL)
        data = dataclasses.replace(data, train_size=CPU_SMALL_TRAIN_SIZE)
    overrides = method_cls.recipe_overrides(train.recipe)
    if overrides:
        train = from_dict(TrainConfig, {**to_dict(train), **overrides}, "train")
    data_overrides = method_cls.data_overrides(train.recipe)
    if data_overrides:
        data = from_dict(DataConfig, {**to_dict(data), **data_overrides}, "data")
    if req.world is not None and req.world < 1:
        raise UserError(f"--gpus {req.world}: must be at least 1")
    world = req.world if req.world is not None else distributed_env()[1]
    train = dataclasses.replace(train, world_size=world)
    policy = MetricPolicy()
    eval_overrides = method_cls.eval_overrides(train.recipe)
    if eval_overrides:
        policy = from_dict(MetricPolicy, {**to_dict(policy), **eval_overrides}, "eval")
    cfg = RunConfig(data, train, policy, dataset_cls.Options(), method_cls.Config(), method_cls.name)
    if req.seed is not None:
        cfg = cfg.override("train.seed", str(req.seed))
    if req.split_seed is not None:
        cfg = cfg.override("data.split_seed", str(req.split_seed))
    if req.amp is not None:
        cfg = cfg.override("train.amp", req.amp)
    if req.iters is not None:  # --iters is a length in iterations, whatever the recipe's schedule
        cfg = cfg.override("train.schedule", "iterations").override("train.iters", str(req.iters))
    if req.deterministic:
        cfg = cfg.override("train.deterministic", "true")
    if cfg.train.recipe == "cpu-small":  # scale the method's absolute schedules to the short run; --set still wins
        cfg = dataclasses.replace(cfg, method_config=method_cls.short_recipe(cfg.method_config, cfg.train.iters))
    recipe = cfg
    for item in req.sets:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"--set {item}: expected key=value")
        if key.strip() in SET_BY_ENGINE:
            raise ConfigError(f"--set {key.strip()}: set by {SET_BY_ENGINE[key.strip()]}, not by --set")
        cfg = cfg.override(key.strip(), value.strip())
        if key.strip() == "train.iters" and cfg.train.schedule == "epochs":
            raise ConfigError(f"--set {item}: the schedule is in epochs (train.epochs={cfg.train.epochs}); "
                              "use --iters N or --set train.schedule=iterations to give a length in iterations")
    # What depends on this machine (e.g. whether pretrained weights are there) as it will run: recorded, so that
    # the config, its hash and the folder say what ran (Method.resolve_config).
    cfg = dataclasses.replace(cfg, method_config=method_cls.resolve_config(cfg.method_config, cfg.data.synthetic))
    cfg = dataclasses.replace(cfg, unused=unused_fields(method_cls, cfg.train))
    for item in req.sets:
        key = item.partition("=")[0].strip()
        if key in cfg.unused:
            raise ConfigError(f"--set {key}: does not act in a {cfg.method_name} run with train.optimizer="
                              f"{cfg.train.optimizer} (so its config does not record it)")
    _check_values(cfg.check(), method_cls)
    cfg = dataclasses.replace(cfg, variant=variant_tag(recipe.method_config, cfg.method_config),
                              protocol_variant=protocol_tag(recipe, cfg))
    dataset = dataset_cls(cfg.data.root, cfg.dataset_options)
    return cfg, method_cls, dataset


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
                from ssbench.config import config_hash

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
    return "-".join(parts)


def _check_values(cfg: RunConfig, method_cls) -> None:
    """Checks that involve the method; each field's own constraints are declared with it (RunConfig.check)."""
    t = cfg.train
    if method_cls.uses_unlabeled and t.batch_unlabeled < 1:
        raise ConfigError(f"train.batch_unlabeled={t.batch_unlabeled}: method {method_cls.name} trains on unlabeled "
                          "batches and needs at least 1")
    method_cls.check_config(cfg)


def dataset_tag(cfg: RunConfig) -> str:
    return f"{cfg.data.dataset}-phantom" if cfg.data.synthetic else cfg.data.dataset


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
    """The 'auto' settings, resolved and then recorded: HD units from the data (mm where spacing is known), bf16
    autocast and SyncBatchNorm from the device and the process count."""
    from ssbench.engine.runtime import resolve_amp, resolve_sync_bn

    cfg = resolve_hd_units(cfg, dataset)
    t = cfg.train
    return dataclasses.replace(cfg, train=dataclasses.replace(
        t, amp=resolve_amp(t.amp, device), sync_bn=resolve_sync_bn(t.sync_bn, device, t.world_size)))


def load_cases(dataset, patients, with_label: bool):
    """The cases of ``patients``, each checked against the dataset contract (whichever loader made it). Cases read
    through the prepared cache were checked when they were prepared: their arrays stay on disk until used."""
    if getattr(dataset, "prepared", False):
        return [dataset.load_case(cid, with_label) for p in patients for cid in dataset.case_ids(p)]
    return [check_case(dataset.load_case(cid, with_label), dataset.num_classes)
            for p in patients for cid in dataset.case_ids(p)]


def open_prepared(dataset, split, method_cls, location: str | None, rank: int, world: int, console, say):
    """The dataset read through its prepared cache (``ssbench.datasets.cache``), the cases this run needs prepared
    first (rank 0 prepares, the other ranks then map the same files); the dataset itself with ``--data-cache
    off``. Returns (dataset, what run.json records of the cache)."""
    from ssbench.datasets import cache

    folder = cache.cache_location(location)
    if folder is None:
        return dataset, {"path": None}
    prepared = cache.PreparedData(dataset, folder)
    needs = cache.needs_of(dataset, split, method_cls.uses_unlabeled)
    if rank == 0:
        report = prepare_with_progress(prepared, needs, console, say)
    _barrier(world)
    if rank > 0:
        report = prepared.prepare(needs)  # everything is there now: nothing is written
    return prepared, {**prepared.record(), "cases_prepared_now": report.prepared, "cases_reused": report.reused,
                      "bytes": report.bytes}


def prepare_with_progress(prepared, needs, console, say, again: bool = False, jobs: int = 1):
    """``prepared.prepare(needs)`` with a progress bar on a terminal; says what was prepared and the disk use."""
    from ssbench.datasets.cache import human_bytes

    todo = [n for n in needs if prepared.case_info(n[0]) is None]
    bar = task = None
    if todo:
        others = prepared.others()
        why = (f" (the cache at {others[0]} was prepared by another loader version, code or options: not used)"
               if others else "")
        say(f"data: preparing {len(todo)} case(s) into {prepared.dir}{why}")
        if console is not None and console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            bar = Progress(TextColumn("prepare"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                           console=console, transient=True)
            bar.start()
            task = bar.add_task("prepare", total=len(todo))
    try:
        report = prepared.prepare(needs, (lambda done, total, cid: bar.update(task, completed=done))
                                  if bar is not None else None, again=again, jobs=jobs)
    finally:
        if bar is not None:
            bar.stop()
    if report.prepared or again:
        say(f"data: {report.prepared} case(s) prepared ({report.again} of them again: their sources changed), "
            f"{report.reused} reused; {human_bytes(report.bytes)} on disk in {prepared.dir}")
    return report


def provenance() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    def v(pkg):
        try:
            return version(pkg)
        except PackageNotFoundError:
            return None

    src = Path(__file__).resolve().parents[2]
    commit = dirty = None
    try:
        proc = subprocess.run(["git", "-C", str(src), "rev-parse", "--verify", "-q", "HEAD"], capture_output=True,
                              text=True, timeout=10)
        commit = proc.stdout.strip() if proc.returncode == 0 else None
        if commit:
            dirty = bool(subprocess.run(["git", "-C", str(src), "status", "--porcelain", "--untracked-files=no"],
                                        capture_output=True, text=True, timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return {
        "versions": {p: v(p) for p in ("ssbench", "torch", "torchvision", "sam2", "timm", "numpy", "scipy", "nibabel")},
        "python": platform.python_version(),
        "torch_threads": _torch_threads(),  # CPU results repeat exactly for the same versions and thread count
        "git_commit": commit,
        "git_dirty": dirty,
        "host": platform.node(),
        "command": sys.argv,
    }


def _torch_threads() -> int | None:
    torch = sys.modules.get("torch")
    return torch.get_num_threads() if torch is not None else None


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


@dataclass
class Inputs:
    """Everything a run reads before it writes anything."""

    split: object
    labeled: list
    unlabeled: list
    val: list
    pools: dict


def load_inputs(cfg: RunConfig, method_cls, dataset, split, say) -> Inputs:
    """Load and validate every input. Test volumes are read here only to check that they load (shape, label
    values); their arrays are dropped and read again after training."""
    from ssbench.engine.data import SlicePool

    say(f"[bold]{cfg.method_name}[/] on {dataset_tag(cfg)}: split {cfg.data.split} -> {len(split.labeled)} labeled "
        f"patients, {len(split.unlabeled)} unlabeled, {len(split.val)} val, {len(split.test)} test")
    labeled = load_cases(dataset, split.labeled, True)
    unlabeled = load_cases(dataset, split.unlabeled, False) if method_cls.uses_unlabeled else []
    val = load_cases(dataset, split.val, True)
    for p in split.test:  # one at a time: checked, then dropped (a prepared cache checked them when preparing)
        for cid in dataset.case_ids(p):
            case = dataset.load_case(cid, True)
            if not getattr(dataset, "prepared", False):
                check_case(case, dataset.num_classes)
    if method_cls.uses_unlabeled and not unlabeled:
        raise UserError(f"--split {cfg.data.split}: method {cfg.method_name} needs unlabeled patients, none left")
    pools = {"labeled": SlicePool.from_cases(labeled, True)}
    if unlabeled:
        pools["unlabeled"] = SlicePool.from_cases(unlabeled, False)
    return Inputs(split, labeled, unlabeled, val, pools)


def resolve_schedule(cfg: RunConfig, method_cls, pools) -> tuple[RunConfig, dict]:
    """With ``train.schedule = epochs`` the length in iterations follows from the data (recorded in the config)."""
    from ssbench.engine.train import epoch_pool, iters_per_epoch

    per_epoch = iters_per_epoch(method_cls, cfg, pools)
    if cfg.train.schedule == "epochs":
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, iters=cfg.train.epochs * per_epoch))
    return cfg, {"epoch_pool": epoch_pool(method_cls, cfg), "epoch_pool_slices": len(pools[epoch_pool(method_cls, cfg)]),
                 "iters_per_epoch": per_epoch}


def build_method(cfg: RunConfig, method_cls, dataset, device, inputs: Inputs | None = None,
                 weights_from_checkpoint: bool = False):
    """The method on ``device``, seeded, with the volumes it asked for attached. A bad checkpoint or option stops
    here, before anything is written."""
    import torch

    from ssbench.methods.api import MethodContext

    torch.manual_seed(cfg.train.seed)
    ctx = MethodContext(1, dataset.num_classes, cfg.data.train_size, cfg.train.iters, device, cfg.data.synthetic,
                        weights_from_checkpoint=weights_from_checkpoint, resize=cfg.data.train_resize)
    config = method_cls.for_evaluation(cfg.method_config) if weights_from_checkpoint else cfg.method_config
    method = method_cls(config, ctx).to(device)
    if inputs is not None:
        method.attach_labeled_volumes(inputs.pools["labeled"].labeled_volumes())
        if "unlabeled" in inputs.pools:
            method.attach_unlabeled_volumes(inputs.pools["unlabeled"].volumes())
    return method


def execute(req: RunRequest, console=None) -> Path:
    """Run end to end: load and check, build, train, evaluate the test set once, publish. Returns the folder.

    Under torchrun every rank runs this; rank 0 alone writes, validates and evaluates, the others train their
    share of each batch and wait for it at the end."""
    import torch

    from ssbench.engine.evaluate import evaluate_checkpoints, rescore_under_protocol, summary_of
    from ssbench.engine.runtime import init_distributed, make_runtime
    from ssbench.engine.train import deterministic_algorithms, train

    rank, world, rank_device = init_distributed(req.device)
    if req.world is not None and req.world != world:
        raise UserError(f"this run was planned for {req.world} process(es) and runs as {world}: start it with "
                        f"--gpus {req.world} (or as a sweep job of {req.world} GPUs)")
    say = console.print if console is not None and not req.quiet and rank == 0 else (lambda *a, **k: None)
    cfg, method_cls, dataset = build_config(req)
    device = rank_device or resolve_device(req.device)
    cfg = resolve_where_it_runs(cfg, dataset, device)
    runtime = make_runtime(device, cfg.train.amp, cfg.train.deterministic, rank, world,
                           **(req.execution or {}))
    split = dataset.split(cfg.data.split, cfg.data.split_seed)
    final_dir = run_dir_for(cfg, req.out)
    staging = final_dir.with_name(f".{final_dir.name}.incomplete")
    if final_dir.exists() and not req.overwrite:
        raise UserError(f"{final_dir}: a completed run is already there (pass --overwrite to replace it)")

    # 1. Load and check every input, 2. build the method: both before anything is written (but the data cache).
    dataset, data_cache = open_prepared(dataset, split, method_cls, req.data_cache, rank, world, console, say)
    inputs = load_inputs(cfg, method_cls, dataset, split, say)
    cfg, schedule = resolve_schedule(cfg, method_cls, inputs.pools)
    if req.resume:
        check_resumable(staging, cfg)
        if _finished(staging):  # interrupted between its last write and its publication
            if rank == 0:
                _check_lock(staging)
                publish(staging, final_dir)
            _barrier(world)
            return final_dir
    method = build_method(cfg, method_cls, dataset, device, inputs)
    # resolved again now that the method holds its weights (a download may have completed): what config.yaml records
    cfg = dataclasses.replace(cfg, method_config=method_cls.resolve_config(cfg.method_config, cfg.data.synthetic))
    if rank > 0:  # model-side randomness (dropout, strong views) differs per rank; rank 0 keeps the 1-process stream
        torch.manual_seed(cfg.train.seed + rank)
    for w in method.warnings:
        say(f"[bold red]WARNING[/]: {w}")

    # 3. Open the staging folder and record the protocol.
    t0 = time.time()
    run_info = {
        "status": "running",
        "config_hash": cfg.hash(),
        "method": cfg.method_name,
        "method_display_name": method_cls.display_name or cfg.method_name,
        "method_source": registry.source(registry.METHODS_GROUP, cfg.method_name),
        "dataset": dataset_tag(cfg),
        "split": cfg.data.split,
        "labeled_patients": len(split.labeled),
        "seed": cfg.train.seed,
        "device": str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
        "world_size": world,
        "execution": runtime.record(),
        "data": dataset.describe(),
        "data_cache": data_cache,  # where the prepared arrays are: recorded, never hashed (no number depends on it)
        "split_protocol": split.protocol,
        "schedule": schedule,
        **method_layout(method),
        "warnings": list(method.warnings),
        "start": _now(),
        **provenance(),
    }
    if cfg.train.selection != "val":
        run_info["warnings"].append(
            "LEGACY selection on val+test (UniMatch's own protocol): the test set chose the checkpoint, so the "
            "best-checkpoint numbers are optimistic; compare only with runs that used the same protocol"
        )
    if cfg.data.synthetic:
        run_info["warnings"].append(
            "embedded synthetic phantom data: numbers are a smoke test of the pipeline, not ACDC/BHSD results"
        )
    if runtime.is_main:  # only rank 0 writes; the other ranks wait at the barriers
        _check_lock(staging)
        if staging.exists() and not req.resume:
            shutil.rmtree(staging)
        make_dirs(staging)
        write_text(staging / LOCK, str(os.getpid()))
    try:
        if runtime.is_main:
            write_yaml(staging / "config.yaml", {"config_hash": cfg.hash(), **cfg.to_dict()})
            write_json(staging / "split.json", {**split.as_dict(), "protocol": split.protocol})
            write_json(staging / "run.json", run_info)
        _barrier(world)

        # 4. Train, selecting on val (or, named and warned, on val+test). 5. The test set, once, for the best-val
        # and the final checkpoint (rank 0).
        selection_cases = inputs.val
        if cfg.train.selection == "legacy-val+test" and runtime.is_main:
            selection_cases = inputs.val + load_cases(dataset, split.test, True)
        nondeterministic_ops: list[str] = []
        with deterministic_algorithms(cfg.train.deterministic, nondeterministic_ops):
            best = train(cfg, method, inputs.pools, selection_cases, staging, runtime, req.resume,
                         console if not req.quiet else None)
            if runtime.is_main:
                test = load_cases(dataset, split.test, True)
                frame = evaluate_checkpoints(method, test, dataset, cfg, device, staging / "checkpoints",
                                             staging / "predictions")
        if runtime.is_main:
            write_csv(staging / "metrics_per_case.csv", frame)
            selection = {"set": cfg.train.selection, "metric": "mean foreground Dice",
                         "best_iteration": best["iteration"], "best_score": best["dice"], "cases": len(selection_cases),
                         **({"stages": best["stages"]} if "stages" in best else {})}
            write_json(staging / "summary.json", summary_of(frame, cfg, selection=selection))
            for name in cfg.eval.also_protocols:  # the published numbers' protocol, from the same predictions
                rescore_under_protocol(staging, test, dataset, cfg, name)
            if cfg.train.deterministic:
                run_info["deterministic_ops_warned"] = nondeterministic_ops  # ops without a deterministic kernel
            run_info.update(status="complete", end=_now(), wall_time_s=round(time.time() - t0, 1))
            write_json(staging / "run.json", run_info)

            # 6. Publish in one rename.
            publish(staging, final_dir)
        _barrier(world)
    finally:
        if runtime.is_main:
            _release_lock(staging)
    return final_dir


def method_layout(method) -> dict:
    """What run.json records of a method's networks: the evaluated one, its optimizers and (several) stages."""
    stages = method.stages()
    out = {"evaluated_model": method.evaluated_model(), "optimizers": list(method.optimizer_params())}
    if len(stages) > 1:
        out["stages"] = [{"name": s.name, "iters": s.iters, "uses_unlabeled": s.uses_unlabeled,
                          "optimizers": list(s.optimizers) if s.optimizers is not None else out["optimizers"],
                          **({"optimizer_from": dict(s.optimizer_from)} if s.optimizer_from else {})}
                         for s in stages]
    return out


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def check_resumable(staging: Path, cfg: RunConfig) -> None:
    """``--resume`` continues only the run that the staging folder holds: the same config, key for key."""
    import yaml

    path = staging / "config.yaml"
    if not path.is_file():
        return  # nothing recorded yet: the run starts from the beginning
    try:
        recorded = yaml.safe_load(path.read_text())
        recorded_hash = recorded.pop("config_hash")
    except (OSError, yaml.YAMLError, AttributeError, KeyError) as exc:
        raise UserError(f"{path}: unreadable ({type(exc).__name__}); run without --resume to start over") from None
    if recorded_hash == cfg.hash():
        return
    now = _flatten(cfg.to_dict())
    before = _flatten(recorded)
    diffs = [f"{k}: {before.get(k, '(absent)')} -> {now.get(k, '(absent)')}" for k in sorted(set(now) | set(before))
             if k.removeprefix("data.") not in UNHASHED_DATA and before.get(k) != now.get(k)]
    raise UserError(f"--resume: the interrupted run in {staging} has another config "
                    f"({'; '.join(diffs[:3]) or 'hash'}); use its options, or run without --resume to start over")


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _finished(staging: Path) -> bool:
    import json

    try:
        done = json.loads((staging / "run.json").read_text()).get("status") == "complete"
    except (OSError, ValueError, AttributeError):
        return False
    return done and all((staging / f).is_file() for f in ("summary.json", "metrics_per_case.csv",
                                                          "checkpoints/best.pt", "checkpoints/final.pt"))


LOCK = "LOCK"


def _release_lock(staging: Path) -> None:
    lock = staging / LOCK
    try:
        if lock.read_text().strip() == str(os.getpid()):
            lock.unlink()
    except OSError:
        pass


def _check_lock(staging: Path) -> None:
    """Refuse to touch a staging folder that a live process is writing (two runs of one config at once)."""
    lock = staging / LOCK
    if not lock.is_file():
        return
    try:
        pid = int(lock.read_text().strip())
        os.kill(pid, 0)
    except (ValueError, ProcessLookupError, PermissionError, OSError):
        return  # a stale lock from a dead run
    if pid != os.getpid():
        raise UserError(f"{staging}: another ssbench run (pid {pid}) is writing this run folder")


def publish(staging: Path, final_dir: Path) -> None:
    """Move the finished staging folder into place in one rename. A run it replaces is moved aside first and
    deleted only once the new one is in place; the aside name ends in '.incomplete', which no reader takes for a
    result (even if this process dies between the two renames)."""
    ckpt = staging / "checkpoints"
    for state in [ckpt / "last.pt", *ckpt.glob("best-at-*.pt")]:  # the resume state is not needed any more
        state.unlink(missing_ok=True)
    for stray in staging.rglob(".*.tmp"):  # temporary files of writes that a killed attempt never finished
        stray.unlink(missing_ok=True)
    (staging / LOCK).unlink(missing_ok=True)
    if final_dir.exists():
        trash = final_dir.with_name(f".{final_dir.name}.replaced-{os.getpid()}.incomplete")
        os.replace(final_dir, trash)
    os.replace(staging, final_dir)
    for old in final_dir.parent.glob(f".{final_dir.name}.replaced-*"):
        shutil.rmtree(old, ignore_errors=True)
