"""Does bf16 autocast change results beyond seed noise? The same short phantom run under fp32 and bf16, over seeds.

    python benchmarks/amp_parity.py [--method unimatch --split 1 --iters 600 --seeds 1 2 3 --device cuda]
    python benchmarks/amp_parity.py --tiny --dataset nnunet --data-root DIR --split 2   # CI: the script runs

Prints each run's test Dice (best-val checkpoint), the mean +- std per precision, the paired bf16 - fp32
differences and a paired Wilcoxon p-value over the test volumes of all seeds; the verdict compares the mean paired
difference with the seed-to-seed spread of fp32.
"""

from __future__ import annotations

import argparse
import sys
import tempfile

import numpy as np
import pandas as pd
from scipy import stats

from ssbench.engine.plan import RunRequest
from ssbench.engine.run import execute


def case_dice(run_dir) -> pd.Series:
    f = pd.read_csv(run_dir / "metrics_per_case.csv")
    f = f[(f["checkpoint"] == "best") & (f["status"] != "absent")]
    return f.groupby("case_id")["dice"].mean()


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", default="unimatch")
    p.add_argument("--split", default="1")
    p.add_argument("--iters", type=int, default=600)
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default=None, help="results root (default: a temporary folder)")
    p.add_argument("--dataset", default="acdc")
    p.add_argument("--data-root", default=None, help="default: the embedded phantom")
    p.add_argument("--set", dest="sets", action="append", default=[], help="config key=value (repeatable)")
    p.add_argument("--tiny", action="store_true", help="2 iterations at 32x32, seeds 1 2 (CI: the script runs)")
    args = p.parse_args(argv)
    if args.tiny:
        args.iters, args.seeds = 2, [1, 2]
        args.sets += ["data.train_size=32", "train.batch_labeled=2", "train.batch_unlabeled=2", "train.val_every=2"]
    out = args.out or tempfile.mkdtemp(prefix="amp-parity-")
    from hardware import describe
    from ssbench.engine.plan import resolve_device

    print(f"hardware: {describe(resolve_device(args.device))}")
    print(f"settings: {args.method} on {args.dataset} ({args.data_root or 'embedded phantom'}), split {args.split}, "
          f"{args.iters} iterations, seeds {args.seeds}" + (f", {' '.join(args.sets)}" if args.sets else "")
          + ("; --tiny: a check that the script runs, not a precision figure" if args.tiny else ""))
    per_case = {"off": [], "bf16": []}
    rows = []
    for seed in args.seeds:
        for amp in ("off", "bf16"):
            run = execute(RunRequest(method=args.method, dataset=args.dataset, data_root=args.data_root,
                                     split=args.split, seed=seed, iters=args.iters, amp=amp, sets=tuple(args.sets),
                                     out=f"{out}/{amp}", device=args.device, quiet=True))
            d = case_dice(run)
            per_case[amp].append(d)
            rows.append({"seed": seed, "amp": amp, "dice": 100 * d.mean()})
            print(f"seed {seed} {amp:4s}: test Dice {100 * d.mean():.2f} %  ({run})", flush=True)
    table = pd.DataFrame(rows).pivot(index="seed", columns="amp", values="dice")
    diff = table["bf16"] - table["off"]
    fp32_spread = table["off"].std(ddof=1) if len(table) > 1 else float("nan")
    a = pd.concat(per_case["bf16"]).to_numpy()
    b = pd.concat(per_case["off"]).to_numpy()
    p_value = stats.wilcoxon(a, b).pvalue if np.any(a != b) else 1.0
    print(f"\nfp32: {table['off'].mean():.2f} +- {fp32_spread:.2f} %   bf16: {table['bf16'].mean():.2f} +- "
          f"{table['bf16'].std(ddof=1) if len(table) > 1 else float('nan'):.2f} %")
    print(f"paired bf16 - fp32 per seed: {', '.join(f'{v:+.2f}' for v in diff)}; mean {diff.mean():+.2f} points; "
          f"Wilcoxon over {len(a)} volume pairs p = {p_value:.3g}")
    within = abs(diff.mean()) <= fp32_spread if not np.isnan(fp32_spread) else False
    verdict = "verdict: bf16 " + ("within" if within else "BEYOND") + " fp32's seed-to-seed spread"
    print(verdict)
    return {"table": table, "p_value": p_value, "verdict": verdict}


if __name__ == "__main__":
    main()
    sys.exit(0)
