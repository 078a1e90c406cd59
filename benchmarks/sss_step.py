"""SSS training-step time and peak memory by image size and SAM-2 model size.

    python benchmarks/sss_step.py                      # CPU: small sizes, tiny and small models, batch 2
    python benchmarks/sss_step.py --gpu                # CUDA: 1024x1024, batch 4, bf16 autocast, Hiera-T/S/B+

Each configuration runs in its own process so that CPU peak memory (max RSS) belongs to it alone.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from hardware import Target

HERE = Path(__file__).parent


# The scale-out issue's target: one H100, Hiera-S at 1024x1024, batch 4 + 4, bf16.
SETTINGS = {"model": "sam2_hiera_s", "size": 1024, "batch": 4, "amp": "bf16"}
TARGETS = [Target("SSS s/step", 0.2, False, "H100", SETTINGS), Target("SSS peak GiB", 24.0, False, "H100", SETTINGS)]


def main(argv=None) -> list[str]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gpu", action="store_true")
    p.add_argument("--models", nargs="+", default=None)
    p.add_argument("--sizes", nargs="+", type=int, default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--tiny", action="store_true", help="Hiera-T 2.1 at 64x64, one step (CI: the script runs)")
    args = p.parse_args(argv)
    if args.gpu:
        models = args.models or ["sam2_hiera_t", "sam2_hiera_s", "sam2_hiera_b+"]
        sizes, batch, amp, device, steps = args.sizes or [512, 1024], 4, "bf16", "cuda", args.steps or 5
    elif args.tiny:
        models, sizes, batch, amp, device, steps = ["sam2.1_hiera_t"], [64], 2, "none", "cpu", 1
    else:
        models = args.models or ["sam2.1_hiera_t", "sam2_hiera_s"]
        sizes, batch, amp, device, steps = args.sizes or [64, 128], 2, "none", "cpu", args.steps or 3
    printed = []
    for i, model in enumerate(models):
        cmd = [sys.executable, str(HERE / "step_timing.py"), "--methods", "sss", "--size", *map(str, sizes),
               "--batch", str(batch), "--device", device, "--amp", amp, "--steps", str(steps),
               "--warmup", "1" if args.tiny else "2", "--set", f"model={model}", "--set", "init=random"]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode:
            print(out.stderr[-2000:], file=sys.stderr)
            raise SystemExit(f"sss_step: {model} failed (exit {out.returncode})")
        lines = out.stdout.strip().splitlines()
        hardware, table = lines[:3], lines[3:]
        for line in (lines if i == 0 else table):
            print(line, flush=True)
            printed.append(line)
        for row in table:  # sss SIZE s/step it/s peak settings
            parts = row.split()
            size, sec, peak = int(parts[1]), float(parts[2]), float(parts[4])
            here = {"model": model, "size": size, "batch": batch, "amp": amp}
            for target, value in zip(TARGETS, (sec, peak)):
                verdict = f"  {model} {size}: {target.judge(value, _device(device), here)}"
                print(verdict, flush=True)
                printed.append(verdict)
    return printed


def _device(name: str):
    import torch

    return torch.device(name)


if __name__ == "__main__":
    main()
