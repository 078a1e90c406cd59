"""SSS training-step time and peak memory per setting, on BHSD-like sparse volumes.

    python benchmarks/sss_step.py                      # CPU: Hiera-T 2.1 at 64 and 128, batch 2 + 2
    python benchmarks/sss_step.py --gpu                # CUDA: Hiera-S at 1024, batch 4 + 4, bf16 autocast
    python benchmarks/sss_step.py --tiny               # one step at 64 (the suite: the script runs)

Volumes: 24 slices, 5 foreground classes (BHSD's), small lesions on 5 of the 24 slices and nothing elsewhere; labeled
clips drawn on uniformly drawn slices (so ``sss.clip_start`` and ``sss.max_objects`` act as on BHSD), unlabeled
prompts refreshed during warm-up only. Settings: ``default`` (the published recipe: everything trained),
``frozen`` (image and prompt encoders frozen), ``checkpointing`` (encoder activations recomputed in backward),
``medsam2`` (frozen encoders, memory at 1e-4 x lr, as MedSAM-2 trains). Each setting runs in its own process, so
that CPU peak memory (max RSS) belongs to it alone; on CUDA the peak is torch.cuda.max_memory_allocated.

Targets (one H100, Hiera-S at 1024, batch 4 + 4, bf16): ``default`` fits in 80 GB; ``frozen`` <= 24 GiB and
<= 0.2 s/step. On any other hardware or settings the figures are printed with the hardware and nothing is judged.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

from hardware import Target

HERE = Path(__file__).parent

SETTINGS = {
    "default": [],
    "frozen": ["train_image_encoder=false", "train_prompt_encoder=false"],
    "checkpointing": ["activation_checkpointing=encoder"],
    "medsam2": ["train_image_encoder=false", "train_prompt_encoder=false", "lr_scale_memory=1e-4"],
}
PUBLISHED = {"model": "sam2_hiera_s", "size": 1024, "batch": 4, "amp": "bf16"}
TARGETS = {
    "default": [Target("SSS peak GiB", 80.0, False, "H100", PUBLISHED)],
    "frozen": [Target("SSS peak GiB", 24.0, False, "H100", PUBLISHED),
               Target("SSS s/step", 0.2, False, "H100", PUBLISHED)],
}
DEPTH, K = 24, 5


def main(argv=None) -> list[str]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gpu", action="store_true")
    p.add_argument("--tiny", action="store_true", help="Hiera-T 2.1 at 64x64, one step, default and frozen")
    p.add_argument("--model", default=None)
    p.add_argument("--sizes", nargs="+", type=int, default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--settings", nargs="+", default=None, choices=list(SETTINGS))
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: one setting, one size, this process
    args = p.parse_args(argv)
    if args.gpu:
        model, sizes, batch, amp, device, steps = (args.model or "sam2_hiera_s", args.sizes or [1024], 4, "bf16",
                                                   "cuda", 5)
    elif args.tiny:
        model, sizes, batch, amp, device, steps = "sam2.1_hiera_t", [64], 2, "none", "cpu", 1
    else:
        model, sizes, batch, amp, device, steps = (args.model or "sam2.1_hiera_t", args.sizes or [64, 128], 2, "none",
                                                   "cpu", 3)
    steps = args.steps or steps
    if args.one:
        print(json.dumps(_run_one(args.one, model, sizes[0], batch, amp, device, steps, warmup=1 if args.tiny else 2)))
        return []
    settings = args.settings or (["default", "frozen"] if args.tiny else list(SETTINGS))
    printed = []

    def say(line):
        print(line, flush=True)
        printed.append(line)

    for size in sizes:
        for name in settings:
            cmd = [sys.executable, str(Path(__file__).resolve()), "--one", name, "--model", model, "--sizes",
                   str(size), "--steps", str(steps)]
            cmd += (["--gpu"] if args.gpu else []) + (["--tiny"] if args.tiny else [])
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode:
                print(out.stderr[-2000:], file=sys.stderr)
                raise SystemExit(f"sss_step: {name} at {size} failed (exit {out.returncode})")
            row = json.loads(out.stdout.strip().splitlines()[-1])
            if not printed:
                say(f"hardware: {row['hardware']}")
                say("setting size s/step peak_GiB objects/step (measured under load unless the machine was quiet)")
            say(f"sss {name} {size} {row['sec']:.3f} {row['peak_gib']:.2f} {row['objects']:.1f}")
            here = {"model": model, "size": size, "batch": batch, "amp": amp}
            for target in TARGETS.get(name, []):
                value = row["peak_gib"] if "GiB" in target.what else row["sec"]
                say(f"  {name} {size}: {target.judge(value, _device(device), here)}")
    return printed


def _device(name: str):
    import torch

    return torch.device(name)


def _volumes(size: int, n: int, seed: int):
    """BHSD-like: lesions of the 5 classes on slices 9-13 only."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out = {}
    for i in range(n):
        image = rng.random((DEPTH, size, size), dtype=np.float32)
        label = np.zeros((DEPTH, size, size), np.uint8)
        for c in range(1, K + 1):
            z0 = int(rng.integers(9, 12))
            y, x = (int(v) for v in rng.integers(size // 8, size - size // 8, 2))
            r = max(2, size // 16)
            label[z0 : z0 + 2, y - r : y + r, x - r : x + r] = c
        out[f"v{i}"] = (image, label)
    return out


def _run_one(name, model, size, batch, amp, device_name, steps, warmup) -> dict:
    from types import SimpleNamespace

    import numpy as np
    import torch

    from hardware import describe
    from ssbench import registry
    from ssbench.fields import apply_override
    from ssbench.engine.train import make_optimizer
    from ssbench.methods.api import Batch, MethodContext, StepInfo

    torch.manual_seed(0)
    device = torch.device(device_name)
    cls = registry.method("sss")
    cfg = cls.Config()
    for item in [f"model={model}", "init=random", "pcsw_refresh=100000"] + SETTINGS[name]:
        key, _, value = item.partition("=")
        cfg = apply_override(cfg, key, value)
    method = cls(cfg, MethodContext(1, K + 1, size, 30000, device, synthetic_data=True, resize="bilinear")).to(device)
    labeled = _volumes(size, 8, 0)
    method.attach_labeled_volumes(labeled)
    method.attach_unlabeled_volumes({k: v[0] for k, v in _volumes(size, 8, 1).items()})
    opt = make_optimizer(method, SimpleNamespace(optimizer="adamw", lr=1e-4, weight_decay=1e-4),
                         SimpleNamespace(device=device))
    rng = np.random.default_rng(2)
    objects = []
    clip_batches = method._labeled_clips

    def counting(lab):  # the tracked objects of each step's clips (what the memory step decodes)
        clip = clip_batches(lab)
        objects.append(len(clip.objects or []))
        return clip

    method._labeled_clips = counting
    method.train()

    def step(it):
        ids = [f"v{int(i)}" for i in rng.integers(0, 8, batch)]
        zs = [int(z) for z in rng.integers(0, DEPTH, batch)]
        lab = Batch(torch.zeros(batch, 1, size, size, device=device), None, ids, zs)
        uz = [int(z) for z in rng.integers(0, DEPTH, batch)]
        unl = Batch(torch.rand(batch, 1, size, size, device=device), None, ids, uz)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp == "bf16"):
            out = method.training_step(lab, unl, StepInfo(it, 30000))
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()
        method.after_optimizer_step(StepInfo(it, 30000))

    for cid in method.unlabeled:  # every unlabeled volume's prompts, before timing (a run refreshes them rarely)
        method._slice_prompts(cid, 0, device)
    for it in range(warmup):
        step(it)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for it in range(warmup, warmup + steps):
        step(it)
    if device.type == "cuda":
        torch.cuda.synchronize()
    sec = (time.perf_counter() - t0) / steps
    peak = (torch.cuda.max_memory_allocated() if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**30
    return {"hardware": describe(device), "sec": sec, "peak_gib": peak, "objects": float(np.mean(objects[warmup:]))}


if __name__ == "__main__":
    main()
