"""Does SSS's unlabeled branch act, and what does it change? SSS against its own labeled-only ablation
(``sss.unlabeled_weight=0``: the branch still runs and is logged, but teaches nothing) on the embedded ACDC phantom,
same split, seeds and schedule, and for each run and class:

    slots        (slice, class) slots of unlabeled slices the branch prompted over the run (train_log.csv
                 u_slots_c<k>, summed over the steps)
    first        the first iteration with a prompted slot of the class
    fg           mean fraction of a prompted slot's pixels that were confident foreground (u_fg_c<k>): what the
                 mask loss taught as foreground
    dice_final   test Dice of the final checkpoint (no model selection); dice_best: of the best-val checkpoint (the
                 same with the default single validation)

The point is to show that the branch acts for every class and what it changes, not to claim a gain: phantom data,
random SAM-2 weights (no pretrained checkpoint on a CPU machine) and 120 iterations cannot show one.

Settings (beyond the embedded cpu-small recipe: Hiera-T 2.1, batch 1 + 2 with one 8-slice clip, the EMA teacher's
horizon scaled to the run), and why:
  --iters 120            the branch prompts a class only once the teacher finds it (PCSW reads its coarse head):
  data.train_size=64     at the recipe's 96^2 and 72 iterations (3 seeds, this script's first version) the LV was
                         prompted from iteration 19-22 in every run, but the RV and the Myo in only 1 of the 3 SSS
                         runs; at 64^2 a step costs about half, and in a trial of the hardest seed (3) at 64^2 the
                         LV, Myo and RV were first prompted at iterations 28, 51 and 74. 120 iterations at 64^2 cost
                         about what 72 did at 96^2 (~4 minutes a run)
  sss.pcsw_refresh=10    an unlabeled volume first drawn before the teacher found a class is prompted again soon
                         (the recipe's 30 would leave most volumes with their first, empty, prompts)
  sss.conf_thresh=0.8    a teacher with random-initialised SAM-2 is rarely 95 % sure of a foreground pixel this
                         early; at 0.8 the mask loss receives confident foreground (u_fg > 0)
  train.val_every=<iters>, checkpoint_every=1000   one validation (the best checkpoint is the final one), no
                         resumable checkpoints: less time outside training
Six runs (2 variants x 3 seeds) are sized for 30 minutes on 2 quiet CPU cores.

    python benchmarks/sss_ssl_effect.py [--iters 120] [--seeds 1 2 3] [--split 10%] [--out results-ssl-effect]
    python benchmarks/sss_ssl_effect.py --smoke     # 1 seed, 4 iterations at 64^2: the script's own check

Runs that already exist in --out are reused, so an interrupted benchmark continues where it stopped; the tables are
also written to --out/sss_ssl_effect.csv (per run and class) and --out/sss_ssl_effect_summary.csv.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ssbench.engine.plan import RunRequest, build_config, run_dir_for
from ssbench.engine.run import execute

SETTINGS = ("data.train_size=64", "sss.conf_thresh=0.8", "sss.pcsw_refresh=10", "train.checkpoint_every=1000")
SMOKE = ("sss.clip_length=3", "train.batch_unlabeled=1", "train.eval_batch=32")
VARIANTS = {"sss": (), "labeled-only": ("sss.unlabeled_weight=0",)}


def run(variant: str, seed: int, args) -> tuple[Path, object]:
    sets = SETTINGS + (f"train.val_every={args.iters}",) + (SMOKE if args.smoke else ()) + VARIANTS[variant]
    req = RunRequest(method="sss", split=args.split, seed=seed, iters=args.iters, out=args.out, sets=sets,
                     device="cpu", quiet=True)
    cfg, _, data = build_config(req)
    folder = run_dir_for(cfg, args.out)
    if not (folder / "summary.json").exists():
        t0 = time.time()
        execute(req)
        print(f"ran {variant} seed {seed} in {time.time() - t0:.0f} s", flush=True)
    return folder, data


def activity(log: pd.DataFrame, k: int) -> dict[str, float]:
    """From a train log with one row per step (CPU): total prompted slots, first active iteration, mean confident
    foreground share of class k."""
    slots = log[f"u_slots_c{k}"]
    steps = log["iteration"].diff().fillna(log["iteration"].iloc[0])  # steps each row averages (1 on CPU)
    active = log.loc[slots > 0, "iteration"]
    return {"slots": float((slots * steps).sum()), "first": float(active.iloc[0]) if len(active) else np.nan,
            "fg": float(log[f"u_fg_c{k}"].mean())}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iters", type=int, default=None, help="default 120 (4 with --smoke)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="default 1 2 3 (1 with --smoke)")
    parser.add_argument("--split", default="10%")
    parser.add_argument("--out", default="results-ssl-effect")
    parser.add_argument("--smoke", action="store_true", help="tiny settings that check the script, not SSS")
    args = parser.parse_args()
    args.iters = args.iters or (4 if args.smoke else 120)
    args.seeds = args.seeds or ([1] if args.smoke else [1, 2, 3])

    rows = []
    for seed in args.seeds:
        for variant in VARIANTS:
            folder, data = run(variant, seed, args)
            log = pd.read_csv(folder / "train_log.csv")
            metrics = pd.read_csv(folder / "metrics_per_case.csv")
            metrics = metrics[metrics.status != "absent"]
            for k, name in enumerate(data.class_names, start=1):
                dice = {ck: metrics[(metrics.checkpoint == ck) & (metrics["class"] == name)]["dice"].mean()
                        for ck in ("final", "best")}
                rows.append({"variant": variant, "seed": seed, "class": name, **activity(log, k),
                             "dice_final": dice["final"], "dice_best": dice["best"]})
    table = pd.DataFrame(rows)
    summary = table.groupby(["variant", "class"], sort=False).agg(
        slots=("slots", "mean"), first=("first", "mean"), fg=("fg", "mean"), dice_final=("dice_final", "mean"),
        dice_final_std=("dice_final", "std"), dice_best=("dice_best", "mean")).reset_index()
    paired = table.pivot_table(index=["seed", "class"], columns="variant", values="dice_final")
    diff = (paired["sss"] - paired["labeled-only"]).groupby("class", sort=False).agg(["mean", "std"])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "sss_ssl_effect.csv", index=False)
    summary.to_csv(out / "sss_ssl_effect_summary.csv", index=False)
    print(f"\n{args.iters} iterations, split {args.split}, seeds {' '.join(map(str, args.seeds))}, "
          f"settings {' '.join(SETTINGS)}{' (smoke)' if args.smoke else ''}; test sets")
    with pd.option_context("display.max_rows", None, "display.width", 140, "display.float_format", "{:.3f}".format):
        print(table.to_string(index=False))
        print("\nmean over seeds")
        print(summary.to_string(index=False))
        print("\ntest Dice (final), SSS minus labeled-only, paired by seed: mean and std over seeds")
        print(diff.to_string())


if __name__ == "__main__":
    main()
