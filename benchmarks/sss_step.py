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

HERE = Path(__file__).parent


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gpu", action="store_true")
    p.add_argument("--models", nargs="+", default=None)
    p.add_argument("--sizes", nargs="+", type=int, default=None)
    p.add_argument("--steps", type=int, default=None)
    args = p.parse_args()
    if args.gpu:
        models = args.models or ["sam2_hiera_t", "sam2_hiera_s", "sam2_hiera_b+"]
        sizes, batch, amp, device, steps = args.sizes or [512, 1024], 4, "bf16", "cuda", args.steps or 5
    else:
        models = args.models or ["sam2.1_hiera_t", "sam2_hiera_s"]
        sizes, batch, amp, device, steps = args.sizes or [64, 128], 2, "none", "cpu", args.steps or 3
    for i, model in enumerate(models):
        cmd = [sys.executable, str(HERE / "step_timing.py"), "--methods", "sss", "--size", *map(str, sizes),
               "--batch", str(batch), "--device", device, "--amp", amp, "--steps", str(steps), "--warmup", "2",
               "--set", f"model={model}", "--set", "init=random"]
        out = subprocess.run(cmd, capture_output=True, text=True)
        lines = out.stdout.strip().splitlines()
        print("\n".join(lines if i == 0 else lines[2:]), flush=True)
        if out.returncode:
            print(out.stderr[-2000:], file=sys.stderr)


if __name__ == "__main__":
    main()
