"""One run: resolve the config, load and validate the data, train with validation-based selection, evaluate the
test set once at the end (best-val and final checkpoints) and publish the results folder atomically.

The results folder is assembled in a hidden staging folder ``.<name>.incomplete`` beside its final place and
renamed into place only when everything is written: a run that dies leaves nothing that looks complete, and
``--resume`` continues from the staging folder's periodic checkpoint.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ssbench import registry
from ssbench.atomic import write_csv, write_json, write_yaml
from ssbench.config import from_dict, to_dict
from ssbench.engine.config import CPU_SMALL, CPU_SMALL_TRAIN_SIZE, DataConfig, RunConfig, TrainConfig
from ssbench.engine.results import summarize
from ssbench.errors import ConfigError, UserError
from ssbench.metrics.evaluation import MetricPolicy, evaluate_case
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


def resolve_device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available")
    if name not in ("cpu", "cuda"):
        raise UserError(f"--device {name}: expected auto, cpu or cuda")
    return torch.device(name)


def build_config(req: RunRequest):
    """Resolve the full config (defaults, recipe, CLI options, --set) and open the dataset. No files written."""
    from ssbench.datasets import synthetic

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
    cfg = RunConfig(data, train, MetricPolicy(), dataset_cls.Options(), method_cls.Config(), method_cls.name)
    if req.seed is not None:
        cfg = cfg.override("train.seed", str(req.seed))
    if req.split_seed is not None:
        cfg = cfg.override("data.split_seed", str(req.split_seed))
    if req.iters is not None:
        cfg = cfg.override("train.iters", str(req.iters))
    if cfg.train.recipe == "cpu-small":  # scale the method's absolute schedules to the short run; --set still wins
        cfg = dataclasses.replace(cfg, method_config=method_cls.short_recipe(cfg.method_config, cfg.train.iters))
    recipe_method_config = cfg.method_config
    for item in req.sets:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"--set {item}: expected key=value")
        cfg = cfg.override(key.strip(), value.strip())
    _check_values(cfg)
    cfg = dataclasses.replace(cfg, variant=variant_tag(recipe_method_config, cfg.method_config))
    dataset = dataset_cls(cfg.data.root, cfg.dataset_options)
    return cfg, method_cls, dataset


def variant_tag(recipe_config, config) -> str:
    """'dfe=false,pcsw=false' for the method fields set away from the recipe (an ablation gets its own folder)."""
    parts = []
    for f in dataclasses.fields(config):
        a, b = getattr(recipe_config, f.name), getattr(config, f.name)
        if a != b:
            text = ",".join(map(str, b)) if isinstance(b, tuple) else str(b)
            if len(text) > 24 or not all(ch.isalnum() or ch in "._-," for ch in text):
                from ssbench.config import config_hash

                text = config_hash({"v": text})[:8]
            parts.append(f"{f.name}={text.lower()}")
    return ",".join(parts)


def _check_values(cfg: RunConfig) -> None:
    t = cfg.train
    for key in ("iters", "batch_labeled", "val_every", "checkpoint_every", "eval_batch"):
        if getattr(t, key) < 1:
            raise ConfigError(f"train.{key} must be at least 1, got {getattr(t, key)}")
    if t.batch_unlabeled < 0 or t.lr <= 0:
        raise ConfigError("train.batch_unlabeled must be >= 0 and train.lr > 0")
    if cfg.data.train_size < 16 or cfg.data.train_size % 16:
        raise ConfigError(f"data.train_size {cfg.data.train_size}: must be a multiple of 16 (UNet down-sampling)")


def dataset_tag(cfg: RunConfig) -> str:
    return f"{cfg.data.dataset}-phantom" if cfg.data.synthetic else cfg.data.dataset


def run_dir_for(cfg: RunConfig, out: str) -> Path:
    seed = f"seed{cfg.train.seed}"
    if cfg.train.selection != "val":  # a leaky protocol never shares a folder name with an honest run
        seed += "-" + cfg.train.selection.replace("+", "")
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


def load_cases(dataset, patients, with_label: bool):
    return [dataset.load_case(cid, with_label) for p in patients for cid in dataset.case_ids(p)]


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
        "versions": {p: v(p) for p in ("ssbench", "torch", "torchvision", "sam2", "numpy", "scipy", "nibabel")},
        "python": platform.python_version(),
        "git_commit": commit,
        "git_dirty": dirty,
        "host": platform.node(),
        "command": sys.argv,
    }


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def execute(req: RunRequest, console=None) -> Path:
    """Run end to end; return the published results folder."""
    import torch

    from ssbench.engine.data import SlicePool
    from ssbench.methods.api import MethodContext

    cfg, method_cls, dataset = build_config(req)
    cfg = resolve_hd_units(cfg, dataset)
    device = resolve_device(req.device)
    split = dataset.split(cfg.data.split, cfg.data.split_seed)
    final_dir = run_dir_for(cfg, req.out)
    staging = final_dir.with_name(f".{final_dir.name}.incomplete")
    if final_dir.exists() and not req.overwrite:
        raise UserError(f"{final_dir}: a completed run is already there (pass --overwrite to replace it)")

    # Validate and load every input before anything is written. Test volumes are read here only to check that
    # they load (shape, label values); their arrays are dropped and read again after training.
    say = console.print if console is not None and not req.quiet else (lambda *a, **k: None)
    n_lab = len(split.labeled)
    say(f"[bold]{cfg.method_name}[/] on {dataset_tag(cfg)}: split {cfg.data.split} -> {n_lab} labeled patients, "
        f"{len(split.unlabeled)} unlabeled, {len(split.val)} val, {len(split.test)} test")
    labeled = load_cases(dataset, split.labeled, True)
    unlabeled = load_cases(dataset, split.unlabeled, False) if method_cls.uses_unlabeled else []
    val = load_cases(dataset, split.val, True)
    for p in split.test:
        for cid in dataset.case_ids(p):
            dataset.load_case(cid, True)

    # The method is built before anything is written too: a bad checkpoint or option stops here.
    if method_cls.uses_unlabeled and not unlabeled:
        raise UserError(f"--split {cfg.data.split}: method {cfg.method_name} needs unlabeled patients, none left")
    torch.manual_seed(cfg.train.seed)
    ctx = MethodContext(1, dataset.num_classes, cfg.data.train_size, cfg.train.iters, device, cfg.data.synthetic)
    method = method_cls(cfg.method_config, ctx).to(device)
    for w in method.warnings:
        say(f"[bold red]WARNING[/]: {w}")
    size = cfg.data.train_size
    pools = {"labeled": SlicePool.from_cases(labeled, size, True)}
    if method_cls.uses_unlabeled:
        pools["unlabeled"] = SlicePool.from_cases(unlabeled, size, False)
        method.attach_unlabeled_volumes(pools["unlabeled"].volumes())

    _check_lock(staging)
    if staging.exists() and not req.resume:
        shutil.rmtree(staging)
    staging.mkdir(parents=True, exist_ok=True)
    (staging / LOCK).write_text(str(os.getpid()))
    started = _now()
    t0 = time.time()
    run_info = {
        "status": "running",
        "config_hash": cfg.hash(),
        "method": cfg.method_name,
        "dataset": dataset_tag(cfg),
        "split": cfg.data.split,
        "labeled_patients": n_lab,
        "seed": cfg.train.seed,
        "device": str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
        "data": dataset.describe(),
        "split_protocol": split.protocol,
        "warnings": list(method.warnings),
        "start": started,
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
    write_yaml(staging / "config.yaml", {"config_hash": cfg.hash(), **cfg.to_dict()})
    write_json(staging / "split.json", {**split.as_dict(), "protocol": split.protocol})
    write_json(staging / "run.json", run_info)

    selection_cases = val
    if cfg.train.selection == "legacy-val+test":
        selection_cases = val + load_cases(dataset, split.test, True)

    from ssbench.engine.train import train

    best_iter = train(cfg, method, pools, selection_cases, staging, device, req.resume,
                      console if not req.quiet else None)

    # The test set, once, for the best-val and the final checkpoint.
    test = load_cases(dataset, split.test, True)
    frame = evaluate_checkpoints(method, test, dataset, cfg, device, staging / "checkpoints", staging / "predictions")
    write_csv(staging / "metrics_per_case.csv", frame)
    selection = {"set": cfg.train.selection, "metric": "mean foreground Dice", "best_iteration": best_iter}
    write_json(staging / "summary.json", summary_of(frame, cfg, selection=selection))
    run_info.update(status="complete", end=_now(), wall_time_s=round(time.time() - t0, 1))
    write_json(staging / "run.json", run_info)
    (staging / "checkpoints" / "last.pt").unlink(missing_ok=True)  # the resume state is not needed any more
    publish(staging, final_dir)
    return final_dir


LOCK = "LOCK"


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
    """Move the finished staging folder into place in one rename (an old run, if replaced, goes first)."""
    (staging / LOCK).unlink(missing_ok=True)
    if final_dir.exists():
        trash = final_dir.with_name(f".{final_dir.name}.replaced-{os.getpid()}")
        os.replace(final_dir, trash)
        os.replace(staging, final_dir)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(staging, final_dir)


def evaluate_checkpoints(method, cases, dataset, cfg: RunConfig, device, checkpoints: Path,
                         predictions_dir: Path | None = None) -> pd.DataFrame:
    """Per-case rows of the best and final checkpoints on ``cases``; optionally save the predicted label maps."""
    import torch

    rows = []
    for ckpt in ("best", "final"):
        state = torch.load(checkpoints / f"{ckpt}.pt", map_location=device, weights_only=True)
        method.load_state_dict(state["method"])
        predictions: dict[str, np.ndarray] | None = {} if predictions_dir is not None else None
        rows += evaluate_cases(method, cases, dataset, cfg, device, ckpt, predictions)
        if predictions_dir is not None:
            save_predictions(predictions_dir / f"{ckpt}.npz", predictions)
    return pd.DataFrame(rows)


def summary_of(frame: pd.DataFrame, cfg: RunConfig, **extra) -> dict:
    return {
        "config_hash": cfg.hash(),
        "metric_policy": dataclasses.asdict(cfg.eval),
        **extra,
        "test_cases": int(frame["case_id"].nunique()),
        "checkpoints": summarize(frame),
    }


def save_predictions(path: Path, predictions: dict) -> None:
    """The predicted label maps of the test volumes (uint8, native grid), compressed: figures and audits."""
    from ssbench.atomic import atomic_path

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **predictions)


def evaluate_cases(method, cases, dataset, cfg: RunConfig, device, checkpoint: str,
                   predictions: dict | None = None) -> list[dict]:
    from ssbench.engine.inference import predict_volume

    names = {i + 1: n for i, n in enumerate(dataset.class_names)}
    rows = []
    for case in cases:
        pred = predict_volume(method, case.image, cfg.data.train_size, device, cfg.train.eval_batch)
        if predictions is not None:
            predictions[case.case_id] = pred
        spacing = case.spacing if cfg.eval.hd_units == "mm" else None
        for r in evaluate_case(pred, case.label, list(names), spacing, cfg.eval, cfg.eval.hd_units):
            rows.append({
                "checkpoint": checkpoint, "case_id": case.case_id, "patient_id": case.patient_id,
                "class": names[r["class_id"]], **r, "hd_units": cfg.eval.hd_units, "empty_policy": cfg.eval.empty,
            })
    return rows


def mean_val_dice(method, cases, cfg: RunConfig, device) -> float:
    """Selection metric: mean over classes of the mean Dice over val volumes (absent classes left out)."""
    from ssbench.engine.inference import predict_volume

    per_class: dict[int, list[float]] = {}
    k = method.ctx.num_classes
    for case in cases:
        pred = predict_volume(method, case.image, cfg.data.train_size, device, cfg.train.eval_batch)
        for c in range(1, k):
            p, r = pred == c, case.label == c
            total = int(p.sum()) + int(r.sum())
            if total:
                per_class.setdefault(c, []).append(2.0 * int((p & r).sum()) / total)
    means = [float(np.mean(v)) for v in per_class.values()]
    return float(np.mean(means)) if means else math.nan
