"""Iterations per second of the real training loop (data draw, augmentation, step, optimizer, EMA, logging) per
method, with each speed-up switched on one after the other, and the projected wall time of the published recipe.

    python benchmarks/train_step.py                         # CUDA if present: supervised, mean-teacher, unimatch
    python benchmarks/train_step.py --methods unimatch --steps 100 --device cuda

The pools hold ACDC-like native slices (random sizes around 232 x 256, 4 classes) so that augmentation and the
resize to 256 cost what they cost on real data. Rows: ``fp32 host`` is the CPU-path baseline measured in the same
call; each next row adds one speed-up (device augmentation, bf16 autocast, channels_last, loss rows every 25
steps). The last column compares with the targets of the scale-out issue where one exists (UniMatch >= 50 it/s
on one H100 with everything on).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ssbench import registry
from ssbench.engine.config import DataConfig, RunConfig, TrainConfig
from ssbench.engine.data import SlicePool
from ssbench.engine.runtime import make_runtime
from ssbench.engine.train import train
from ssbench.metrics.evaluation import MetricPolicy

# Published lengths in iterations (UniMatch: 300 passes over the 1,176 unlabeled slices of 7 labeled patients).
PUBLISHED_ITERS = {"supervised": 30000, "mean-teacher": 30000, "unimatch": 29400, "fixmatch": 29400}
TARGETS = {"unimatch": 50.0}  # it/s on one H100 with every speed-up (issue: scale-out)
STAGES = [  # (label, runtime overrides, amp)
    ("fp32 host", dict(augment_on_device=False, channels_last=False, log_every=1), "off"),
    ("+ device augmentation", dict(augment_on_device=True, channels_last=False, log_every=1), "off"),
    ("+ bf16 autocast", dict(augment_on_device=True, channels_last=False, log_every=1), "bf16"),
    ("+ channels_last", dict(augment_on_device=True, channels_last=True, log_every=1), "bf16"),
    ("+ log every 25", dict(augment_on_device=True, channels_last=True, log_every=25), "bf16"),
]


def fake_pool(n: int, labeled: bool, seed: int) -> SlicePool:
    rng = np.random.default_rng(seed)
    shapes = [(int(rng.integers(200, 257)), int(rng.integers(220, 257))) for _ in range(n)]
    images = [rng.random(s, dtype=np.float32) for s in shapes]
    labels = None
    if labeled:
        labels = []
        for h, w in shapes:
            lab = np.zeros((h, w), np.uint8)
            lab[h // 4 : h // 2, w // 4 : w // 2] = 1
            lab[h // 2 : 3 * h // 4, w // 3 : 2 * w // 3] = 2
            lab[h // 3 : 2 * h // 3, w // 2 : 3 * w // 4] = 3
            labels.append(lab)
    return SlicePool(images, labels, [(f"v{i // 10}", i % 10) for i in range(n)], {})


def measure(method_name: str, device, overrides: dict, amp: str, steps: int, warmup: int, batch: int) -> tuple[float, float]:
    cls = registry.method(method_name)
    total = warmup + steps
    train_cfg = dataclasses.replace(TrainConfig(), iters=total, batch_labeled=batch * (2 if method_name == "supervised"
                                                                                       else 1),
                                    batch_unlabeled=batch, val_every=10**9, checkpoint_every=10**9, amp=amp)
    from ssbench.datasets.base import NoOptions

    cfg = RunConfig(DataConfig(train_size=256), train_cfg, MetricPolicy(), NoOptions(), cls.Config(), cls.name)
    pools = {"labeled": fake_pool(136, True, 0)}
    if cls.uses_unlabeled:
        pools["unlabeled"] = fake_pool(1176, False, 1)
    from ssbench.methods.api import MethodContext

    torch.manual_seed(0)
    method = cls(cfg.method_config, MethodContext(1, 4, 256, total, device)).to(device)
    runtime = make_runtime(device, amp, False, **overrides)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with tempfile.TemporaryDirectory() as tmp:
        train(cfg, method, pools, [], Path(tmp), runtime, False, None)
        log = pd.read_csv(Path(tmp) / "train_log.csv") if (Path(tmp) / "train_log.csv").exists() else None
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return _rate(log, warmup, total), peak


def _rate(log, warmup: int, total: int) -> float:
    """Steps per second after the warm-up, from the loop's own clock (train_log's elapsed_s)."""
    rows = log.set_index("iteration")["elapsed_s"]
    first = rows[rows.index >= warmup].index.min()
    return (total - first) / (rows.loc[total] - rows.loc[first])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="+", default=["supervised", "mean-teacher", "unimatch"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=12, help="labeled and unlabeled batch (supervised: 2x labeled)")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--warmup", type=int, default=25)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    stages = STAGES if device.type == "cuda" else [s for s in STAGES if s[2] == "off" and not s[1]["channels_last"]]
    print(f"device: {name}; torch {torch.__version__}; batch {args.batch} + {args.batch} at 256x256; "
          f"{args.steps} timed steps after {args.warmup}")
    print(f"{'method':13s} {'stage':24s} {'it/s':>7s} {'x base':>7s} {'peak GiB':>9s} {'published recipe':>17s}  target")
    for method in args.methods:
        base = None
        for label, overrides, amp in stages:
            rate, peak = measure(method, device, overrides, amp, args.steps, args.warmup, args.batch)
            base = base or rate
            wall = PUBLISHED_ITERS.get(method, 30000) / rate / 60
            target = TARGETS.get(method)
            verdict = "" if target is None or label != stages[-1][0] or device.type != "cuda" else \
                f"{'MET' if rate >= target else 'NOT MET'} (>= {target:g} it/s)"
            print(f"{method:13s} {label:24s} {rate:7.2f} {rate / base:7.2f} {peak:9.2f} {wall:13.1f} min  {verdict}",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
