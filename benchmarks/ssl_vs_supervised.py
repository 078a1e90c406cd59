"""Do the semi-supervised methods learn from unlabeled data? 3 seeds x {supervised, mean-teacher, unimatch} on the
embedded ACDC-like phantom with 1 labeled patient and the CPU recipe; prints the mean test Dice per method and the
patient-level paired Wilcoxon p-value of each SSL method vs the supervised baseline.

    python benchmarks/ssl_vs_supervised.py [--seeds 1 2 3] [--split 1] [--iters 600] [--out results-ssl]

Runs that already exist in --out are reused, so an interrupted benchmark continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import wilcoxon

from ssbench.engine.run import RunRequest, execute


def patient_scores(run_dir: Path, checkpoint: str) -> pd.Series:
    """Per patient: mean over its volumes (ED, ES) of the mean foreground Dice (absent classes left out)."""
    frame = pd.read_csv(run_dir / "metrics_per_case.csv")
    frame = frame[(frame.checkpoint == checkpoint) & (frame.status != "absent")]
    per_case = frame.groupby(["patient_id", "case_id"])["dice"].mean()
    return per_case.groupby("patient_id").mean()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=["supervised", "mean-teacher", "unimatch"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--split", default="1")
    parser.add_argument("--iters", type=int, default=None)
    parser.add_argument("--checkpoint", default="best", choices=["best", "final"])
    parser.add_argument("--out", default="results-ssl")
    parser.add_argument("--set", dest="sets", action="append", default=[])
    args = parser.parse_args()

    scores: dict[str, list[pd.Series]] = {m: [] for m in args.methods}
    for method in args.methods:
        for seed in args.seeds:
            req = RunRequest(method=method, split=args.split, seed=seed, iters=args.iters, out=args.out,
                             sets=tuple(args.sets), device="cpu", quiet=True)
            from ssbench.engine.run import build_config, run_dir_for

            cfg, _, _ = build_config(req)
            run_dir = run_dir_for(cfg, args.out)
            if not (run_dir / "summary.json").exists():
                t0 = time.time()
                execute(req)
                print(f"ran {method} seed {seed} in {time.time() - t0:.0f} s", flush=True)
            scores[method].append(patient_scores(run_dir, args.checkpoint))

    base = args.methods[0]
    base_mean = pd.concat(scores[base], axis=1).mean(axis=1)
    print(f"\nsplit {args.split}, seeds {args.seeds}, {args.checkpoint} checkpoint, test set of the phantom")
    print(f"{'method':14s} {'mean Dice %':>11s} {'seed means':>24s} {'p vs ' + base:>14s}")
    for method in args.methods:
        per_seed = [float(s.mean()) * 100 for s in scores[method]]
        patient_mean = pd.concat(scores[method], axis=1).mean(axis=1)
        p = "" if method == base else f"{wilcoxon(patient_mean, base_mean.loc[patient_mean.index]).pvalue:.2e}"
        print(f"{method:14s} {np.mean(per_seed):11.2f} {' '.join(f'{v:6.2f}' for v in per_seed):>24s} {p:>14s}")
    print(json.dumps({"n_patients": int(len(base_mean))}))


if __name__ == "__main__":
    main()
