"""Do the semi-supervised methods learn from unlabeled data? 3 seeds x {supervised, mean-teacher, unimatch} on the
embedded ACDC-like phantom with 1 labeled patient and the CPU recipe; prints the mean test Dice per method and the
patient-level paired Wilcoxon p-value of each SSL method vs the supervised baseline.

    python benchmarks/ssl_vs_supervised.py [--seeds 1 2 3] [--split 1] [--iters 600] [--out results-ssl]

A run already in --out is reused only when its recorded config hash is the one these options give (so an
interrupted benchmark continues where it stopped, and a run of another length or setting is never counted);
--rerun-stale replaces such a run. The figures are printed with the settings the runs recorded and the machines
they were trained on.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import wilcoxon

from cached_runs import cached_or_run, describe
from ssbench.engine.plan import RunRequest


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
    parser.add_argument("--rerun-stale", action="store_true", help="replace runs in --out with other settings")
    args = parser.parse_args()

    scores: dict[str, list[pd.Series]] = {m: [] for m in args.methods}
    runs: list[Path] = []
    for method in args.methods:
        for seed in args.seeds:
            req = RunRequest(method=method, split=args.split, seed=seed, iters=args.iters, out=args.out,
                             sets=tuple(args.sets), device="cpu", quiet=True)
            run_dir = cached_or_run(req, args.rerun_stale, say=lambda line: print(line, flush=True))
            runs.append(run_dir)
            scores[method].append(patient_scores(run_dir, args.checkpoint))

    base = args.methods[0]
    base_mean = pd.concat(scores[base], axis=1).mean(axis=1)
    print(f"\nsplit {args.split}, seeds {args.seeds}, {args.checkpoint} checkpoint, test set")
    print("\n".join(describe(runs)))
    print(f"{'method':14s} {'mean Dice %':>11s} {'seed means':>24s} {'p vs ' + base:>14s}")
    for method in args.methods:
        per_seed = [float(s.mean()) * 100 for s in scores[method]]
        patient_mean = pd.concat(scores[method], axis=1).mean(axis=1)
        p = "" if method == base else f"{wilcoxon(patient_mean, base_mean.loc[patient_mean.index]).pvalue:.2e}"
        print(f"{method:14s} {np.mean(per_seed):11.2f} {' '.join(f'{v:6.2f}' for v in per_seed):>24s} {p:>14s}")
    print(json.dumps({"n_patients": int(len(base_mean))}))


if __name__ == "__main__":
    main()
