"""Time training steps of the registered methods on random batches: iterations per second and peak memory.

    python benchmarks/step_timing.py --methods supervised mean-teacher unimatch --size 256 --batch 12 [--device cuda]
    python benchmarks/step_timing.py --methods sss --size 1024 --batch 4 --set model=sam2_hiera_s --amp bf16
    python benchmarks/step_timing.py --methods sss --size 128 --batch 2 --set model=sam2.1_hiera_t --set init=random

Runs the method's own ``training_step`` plus backward and optimizer step (as the engine does), after warm-up steps.
On CUDA, peak memory is torch.cuda.max_memory_allocated; on CPU, the process's peak resident set.

Every method gets 64 labeled and 64 unlabeled volumes of 8 slices at the input size (what SSS reads its clips and
its sequence prompts from). By default each step draws slices of volumes no earlier step drew, so an SSS step
includes the re-propagation of its unlabeled volumes' prompts that a run pays on a volume's first draw (and every
``sss.pcsw_refresh`` iterations after); ``--volume-pool B`` (B = the step's batch) draws the same volumes every
step, as this script did before, so that prompts are computed during warm-up only.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time

import numpy as np
import torch

from hardware import describe
from ssbench import registry
from ssbench.fields import apply_override
from ssbench.methods.api import Batch, MethodContext, StepInfo


def make_method(name: str, size: int, device, sets: list[str], num_classes: int = 4):
    cls = registry.method(name)
    cfg = cls.Config()
    for item in sets:
        key, _, value = item.partition("=")
        cfg = apply_override(cfg, key, value)
    ctx = MethodContext(1, num_classes, size, 30000, device, synthetic_data=True, resize="bilinear")
    method = cls(cfg, ctx).to(device)
    rng = np.random.default_rng(0)
    label = _label(size, num_classes).numpy().astype(np.uint8)
    method.attach_labeled_volumes({f"l{i}": (rng.random((8, size, size), dtype=np.float32),
                                             np.repeat(label[None], 8, 0)) for i in range(64)})
    if cls.uses_unlabeled:
        method.attach_unlabeled_volumes({f"v{i}": rng.random((8, size, size), dtype=np.float32) for i in range(64)})
    return method


def _label(size, num_classes=4):
    label = torch.zeros(size, size, dtype=torch.long)
    q = size // 8
    label[2 * q : 5 * q, 2 * q : 4 * q] = 1
    label[3 * q : 6 * q, 4 * q : 6 * q] = min(3, num_classes - 1)
    return label


def batches(size, batch, mult, device, step, pool=64, num_classes=4):
    """Step ``step``'s batches: slices of the next volumes of a pool of ``pool`` (at most 64)."""
    label = _label(size, num_classes).expand(batch, size, size).to(device)
    ids = [(step * batch + i) % min(pool, 64) for i in range(batch)]
    lab = Batch(torch.rand(batch, 1, size, size, device=device), label, [f"l{i}" for i in ids], [3] * batch)
    n = batch * mult
    ids = [(step * n + i) % min(pool, 64) for i in range(n)]
    unl = Batch(torch.rand(n, 1, size, size, device=device), None, [f"v{i}" for i in ids], [i % 8 for i in ids])
    return lab, unl


def time_method(name, size, batch, device, sets, steps, warmup, amp, pool=64):
    method = make_method(name, size, device, sets)
    cls = type(method)
    opt = torch.optim.AdamW(method.trainable_parameters(), lr=1e-4)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    method.train()
    times = []
    for it in range(warmup + steps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        lab, unl = batches(size, batch, cls.unlabeled_batch_multiplier, device, it, pool)
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            losses = method.training_step(lab, unl if cls.uses_unlabeled else None, StepInfo(it, 30000))
        opt.zero_grad(set_to_none=True)
        losses["loss"].backward()
        opt.step()
        method.after_optimizer_step(StepInfo(it, 30000))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if it >= warmup:
            times.append(time.perf_counter() - t0)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**30
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return float(np.median(times)), peak


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="+", default=["supervised", "mean-teacher", "unimatch"])
    p.add_argument("--size", type=int, nargs="+", default=[256])
    p.add_argument("--batch", type=int, default=12)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--set", dest="sets", action="append", default=[], help="method config key=value")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none")
    p.add_argument("--volume-pool", type=int, default=64, help="distinct volumes the steps cycle through")
    p.add_argument("--tiny", action="store_true", help="one step at 32x32, batch 2 (CI: the script runs)")
    args = p.parse_args(argv)
    if args.tiny:
        args.size, args.batch, args.steps, args.warmup = [32], 2, 1, 1
    device = torch.device(args.device)
    print(f"hardware: {describe(device)}")
    print(f"settings: batch {args.batch} labeled + {args.batch} unlabeled; amp {args.amp}"
          + ("; --tiny: a check that the script runs, not a speed figure" if args.tiny else ""))
    print(f"{'method':14s} {'size':>5s} {'s/step':>8s} {'it/s':>7s} {'peak GiB':>9s}  settings")
    rows = []
    for method in args.methods:
        for size in args.size:
            sets = list(args.sets)  # SSS reads its input size from the context (data.train_size): --size
            sec, peak = time_method(method, size, args.batch, device, sets, args.steps, args.warmup, args.amp,
                                    args.volume_pool)
            print(f"{method:14s} {size:5d} {sec:8.3f} {1 / sec:7.2f} {peak:9.2f}  {' '.join(sets)}", flush=True)
            rows.append({"method": method, "size": size, "s_per_step": sec, "peak_gib": peak, "sets": sets})
    return rows


if __name__ == "__main__":
    main()
    sys.exit(0)
