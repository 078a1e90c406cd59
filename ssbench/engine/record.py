"""The run record (run.json): what ran, where, how and from which code. Never part of the config hash: nothing here
can change a number, but every figure can be traced to it."""

from __future__ import annotations

import datetime as dt
import platform
import subprocess
import sys
from pathlib import Path

from ssbench import registry


def run_info(plan, split, runtime, method, dataset, data_cache: dict) -> dict:
    """run.json as a run opens it (status 'running'); ``complete`` adds the end. ``dataset``: as the run reads it
    (through its prepared cache, ``data_cache`` saying where)."""
    from ssbench.engine.plan import dataset_tag

    cfg, device = plan.cfg, plan.device
    info = {
        "status": "running",
        "config_hash": cfg.hash(),
        "method": cfg.method_name,
        "method_display_name": plan.method_cls.display_name or cfg.method_name,
        "method_source": registry.source(registry.METHODS_GROUP, cfg.method_name),
        "dataset": dataset_tag(cfg),
        "split": cfg.data.split,
        "labeled_patients": len(split.labeled),
        "seed": cfg.train.seed,
        "device": _device_name(device),
        "world_size": runtime.world,
        "execution": runtime.record(),
        "data": dataset.describe(),
        "data_identity": dataset.identity(),
        "data_cache": data_cache,  # where the prepared arrays are: recorded, never hashed (no number depends on it)
        "split_protocol": split.protocol,
        "schedule": plan.schedule,
        "tracking": {"backends": list(plan.request.log), "failed": {}},
        **method_layout(method),
        # the loader's protocol choices come last, said at the start too (load_inputs)
        "warnings": list(method.warnings) + protocol_warnings(cfg) + list(dataset.warnings()),
        "start": now(),
        **provenance(),
    }
    return info


def protocol_warnings(cfg) -> list[str]:
    out = []
    if cfg.train.selection != "val":
        out.append("LEGACY selection on val+test (UniMatch's own protocol): the test set chose the checkpoint, so the "
                   "best-checkpoint numbers are optimistic; compare only with runs that used the same protocol")
    if cfg.data.synthetic:
        out.append("synthetic phantom data (ssbench's own, PHANTOM.json): numbers are a smoke test of the pipeline, "
                   f"not {cfg.data.dataset} results")
    return out


def complete(info: dict, wall_time_s: float, deterministic_ops: list[str] | None) -> dict:
    out = dict(info)
    if deterministic_ops is not None:
        out["deterministic_ops_warned"] = deterministic_ops  # ops without a deterministic kernel
    out.update(status="complete", end=now(), wall_time_s=round(wall_time_s, 1))
    return out


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


def _device_name(device) -> str:
    if device.type != "cuda":
        return str(device)
    import torch

    return f"{device} ({torch.cuda.get_device_name(device)})"


def _torch_threads() -> int | None:
    torch = sys.modules.get("torch")
    return torch.get_num_threads() if torch is not None else None


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
