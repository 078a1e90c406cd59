"""Iterations per second of the engine's own training step (data draw, weak augmentation and resize, strong views,
forward, backward, optimizer, EMA, the loss rows' host reads) per method, with each speed-up switched on one after
the other, and the projected wall time of the published recipe.

    python benchmarks/train_step.py                         # CUDA if present: supervised, mean-teacher, unimatch
    python benchmarks/train_step.py --methods unimatch --steps 100 --device cuda [--compile]
    python benchmarks/train_step.py --tiny                  # a few steps of every built-in UNet method on the CPU

The pools hold ACDC-like native slices (random sizes around 232 x 256, 4 classes) so that augmentation and the
resize cost what they cost on real data. Rows: ``fp32 host`` is the CPU-path baseline measured in the same call;
each next row adds one speed-up (device augmentation, bf16 autocast, channels_last, loss rows every 25 steps,
then ``train.compile=on`` with ``--compile``). Every figure is printed with the hardware and settings it was
measured on; a target (UniMatch >= 50 it/s on one H100, bf16, 12 + 12 at 256²) is judged only there.
``--tiny`` checks that the script runs (CI), not speed.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time

import numpy as np
import torch

from hardware import Target, describe
from ssbench import registry
from ssbench.datasets.base import NoOptions
from ssbench.engine.runconfig import DataConfig, RunConfig, TrainConfig
from ssbench.engine.data import SlicePool
from ssbench.engine.runtime import make_runtime
from ssbench.engine.train import compile_networks, make_optimizer, make_samplers, train_step
from ssbench.methods.api import MethodContext, StepInfo
from ssbench.metrics.evaluation import MetricPolicy

# Published lengths in iterations (UniMatch: 300 passes over the 1,176 unlabeled slices of 7 labeled patients).
PUBLISHED_ITERS = {"supervised": 30000, "mean-teacher": 30000, "unimatch": 29400, "fixmatch": 29400}
TARGETS = {"unimatch": Target("UniMatch it/s", 50.0, True, "H100",
                              {"batch": 12, "size": 256, "stage": "+ log every 25"})}
STAGES = [  # (label, runtime overrides, amp, compile)
    ("fp32 host", dict(augment_on_device=False, channels_last=False, log_every=1), "off", "off"),
    ("+ device augmentation", dict(augment_on_device=True, channels_last=False, log_every=1), "off", "off"),
    ("+ bf16 autocast", dict(augment_on_device=True, channels_last=False, log_every=1), "bf16", "off"),
    ("+ channels_last", dict(augment_on_device=True, channels_last=True, log_every=1), "bf16", "off"),
    ("+ log every 25", dict(augment_on_device=True, channels_last=True, log_every=25), "bf16", "off"),
    ("+ torch.compile", dict(augment_on_device=True, channels_last=True, log_every=25), "bf16", "on"),
]
TINY_METHODS = ["supervised", "mean-teacher", "unimatch", "fixmatch"]


def fake_pool(n: int, labeled: bool, seed: int, lo: int = 200, hi: int = 257) -> SlicePool:
    rng = np.random.default_rng(seed)
    shapes = [(int(rng.integers(lo, hi)), int(rng.integers(lo + 20, hi))) for _ in range(n)]
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


def measure(method_name: str, device, overrides: dict, amp: str, compile_: str, steps: int, warmup: int, batch: int,
            size: int, pools: dict) -> tuple[float, float]:
    """(steps per second after ``warmup`` steps, peak GiB) of the engine's ``train_step`` with these settings;
    the host reads the loss sums every ``log_every`` steps, as the loop's loss rows do."""
    cls = registry.method(method_name)
    total = warmup + steps
    t = dataclasses.replace(TrainConfig(), iters=total, batch_labeled=batch * (2 if not cls.uses_unlabeled else 1),
                            batch_unlabeled=batch, amp=amp, compile=compile_)
    cfg = RunConfig(DataConfig(train_size=size), t, MetricPolicy(), NoOptions(), cls.Config(), cls.name)
    torch.manual_seed(0)
    method = cls(cfg.method_config, MethodContext(1, 4, size, total, device)).to(device)
    runtime = make_runtime(device, amp, False, **overrides)
    if runtime.channels_last:
        method.to(memory_format=torch.channels_last)
    if compile_ == "on":
        compile_networks(method)
    optimizer = make_optimizer(method, t, runtime)
    samplers = make_samplers(cls, cfg, {k: v for k, v in pools.items() if k == "labeled" or cls.uses_unlabeled},
                             runtime)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sums: dict = {}
    t0 = None
    for it in range(total):
        if it == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
        train_step(method, method.training_step, optimizer, samplers, runtime, StepInfo(it, total), t, sums)
        if (it + 1) % runtime.log_every == 0:  # a loss row: the host reads the sums
            [float(v) for v in sums.values()]
            sums = {}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    rate = steps / (time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return rate, peak


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="+", default=None)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=12, help="labeled and unlabeled batch (supervised: 2x labeled)")
    p.add_argument("--size", type=int, default=256, help="the training size (data.train_size)")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--warmup", type=int, default=25)
    p.add_argument("--compile", action="store_true", help="add a train.compile=on row (against eager, same call)")
    p.add_argument("--tiny", action="store_true", help="a few steps of every UNet method, small inputs (CI)")
    args = p.parse_args(argv)
    if args.tiny:
        args.batch, args.size, args.steps, args.warmup = 2, 32, 2, 1
    methods = args.methods or (TINY_METHODS if args.tiny else ["supervised", "mean-teacher", "unimatch"])
    device = torch.device(args.device)
    stages = [s for s in STAGES if args.compile or s[3] == "off"]
    if device.type != "cuda":  # bf16 autocast and channels_last are GPU speed-ups; compile is timed in fp32 here
        stages = [s if s[3] == "off" else (s[0] + " (fp32)", dict(STAGES[1][1]), "off", "on") for s in stages]
        stages = [s for s in stages if s[2] == "off" and not s[1]["channels_last"]]
    lo, hi = (16, 41) if args.tiny else (200, 257)
    pools = {"labeled": fake_pool(20 if args.tiny else 136, True, 0, lo, hi),
             "unlabeled": fake_pool(40 if args.tiny else 1176, False, 1, lo, hi)}
    print(f"hardware: {describe(device)}")
    print(f"settings: batch {args.batch} + {args.batch} at {args.size}x{args.size}; {args.steps} timed steps after "
          f"{args.warmup}" + ("; --tiny: a check that the script runs, not a speed figure" if args.tiny else ""))
    print(f"{'method':13s} {'stage':24s} {'it/s':>7s} {'x base':>7s} {'peak GiB':>9s} {'published recipe':>17s}  target")
    rows = []
    for method in methods:
        base = None
        for label, overrides, amp, compile_ in stages:
            rate, peak = measure(method, device, overrides, amp, compile_, args.steps, args.warmup, args.batch,
                                 args.size, pools)
            base = base or rate
            wall = PUBLISHED_ITERS.get(method, 30000) / rate / 60
            target = TARGETS.get(method)
            verdict = "" if target is None else target.judge(
                rate, device, {"batch": args.batch, "size": args.size, "stage": label})
            print(f"{method:13s} {label:24s} {rate:7.2f} {rate / base:7.2f} {peak:9.2f} {wall:13.1f} min  {verdict}",
                  flush=True)
            rows.append({"method": method, "stage": label, "it_per_s": rate, "verdict": verdict})
    return rows


if __name__ == "__main__":
    main()
    sys.exit(0)
