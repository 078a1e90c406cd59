"""Does a method predict structures where there are none? On the embedded BHSD phantom (most haemorrhage types absent
from most scans) and the ACDC phantom (apex and base slices without some structures): for each test slice that
does not contain a class, whether the method predicts that class anywhere on it. Reported per dataset, method and
class as the fraction of such slices with a false prediction, beside the test Dice, after the same short training
(same split, seed and number of iterations) for

    supervised        the UNet baseline (labeled slices only)
    sss               SSS, PCSW's prompt carried by SAM-2's memory, absent where the object-score head says so
    sss memory=false  SSS's per-slice ablation (boxes on the slices of PCSW's 3-D component, image mode)

    python benchmarks/sss_absence.py [--iters 80] [--split 10%] [--seed 1337] [--checkpoint final] [--out results-absence]

A run already in --out is reused only when its recorded config hash is the one these options give (so an
interrupted benchmark continues where it stopped, and a run of another length or setting is never counted);
--rerun-stale replaces such a run. The table is printed with the settings the runs recorded and the machines they
were trained on, and written to --out/sss_absence.csv.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from cached_runs import cached_or_run, describe, recorded
from ssbench.engine.plan import RunRequest, build_config

METHODS = {"supervised": ("supervised", ()), "sss": ("sss", ()), "sss memory=false": ("sss", ("sss.memory=false",))}


def false_presence(pred: np.ndarray, label: np.ndarray, classes: int) -> dict[int, tuple[int, int]]:
    """class -> (slices without it, of those the slices where it is predicted)."""
    out = {}
    for c in range(1, classes + 1):
        absent = ~(label == c).any(axis=(1, 2))
        predicted = (pred == c).any(axis=(1, 2))
        out[c] = (int(absent.sum()), int((absent & predicted).sum()))
    return out


def run(dataset: str, method: str, sets: tuple[str, ...], args) -> tuple[Path, object]:
    req = RunRequest(method=method, dataset=dataset, split=args.split, seed=args.seed, iters=args.iters, out=args.out,
                     sets=sets, device="cpu", quiet=True)
    _, _, data = build_config(req)
    return cached_or_run(req, args.rerun_stale, say=lambda line: print(line, flush=True)), data


def recorded_dataset(folder: Path) -> str:
    return recorded(folder)["data"]["dataset"]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["bhsd", "acdc"])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--iters", type=int, default=80)
    parser.add_argument("--split", default="10%")
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--checkpoint", default="final", choices=["best", "final"])
    parser.add_argument("--out", default="results-absence")
    parser.add_argument("--rerun-stale", action="store_true", help="replace runs in --out with other settings")
    args = parser.parse_args()

    rows, folders = [], []
    for dataset in args.datasets:
        for name in args.methods:
            method, sets = METHODS[name]
            folder, data = run(dataset, method, sets, args)
            folders.append(folder)
            preds = np.load(folder / "predictions" / f"{args.checkpoint}.npz")
            metrics = pd.read_csv(folder / "metrics_per_case.csv")
            metrics = metrics[(metrics.checkpoint == args.checkpoint) & (metrics.status != "absent")]
            counts = {c: [0, 0] for c in range(1, data.num_classes)}
            for case_id in preds.files:
                label = data.load_case(case_id, True).label
                for c, (n, f) in false_presence(preds[case_id], label, data.num_classes - 1).items():
                    counts[c][0] += n
                    counts[c][1] += f
            for c, (n, f) in counts.items():
                cls = data.class_names[c - 1]
                dice = metrics[metrics["class"] == cls]["dice"].mean()
                rows.append({"dataset": dataset, "method": name, "class": cls, "slices_without": n,
                             "false_presence": f / n if n else float("nan"), "dice": dice})
            n, f = (sum(v[i] for v in counts.values()) for i in (0, 1))
            rows.append({"dataset": dataset, "method": name, "class": "all", "slices_without": n,
                         "false_presence": f / n if n else float("nan"),
                         "dice": metrics.groupby("class")["dice"].mean().mean()})
    table = pd.DataFrame(rows)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    table.to_csv(Path(args.out) / "sss_absence.csv", index=False)
    print(f"\nsplit {args.split}, seed {args.seed}, {args.checkpoint} checkpoint, test sets")
    for dataset in args.datasets:
        print("\n".join(describe([f for f in folders if recorded_dataset(f) == dataset])))
    print("false_presence: of the test slices without a class, the fraction on which the method predicts it")
    with pd.option_context("display.max_rows", None, "display.width", 120, "display.float_format", "{:.3f}".format):
        print(table.to_string(index=False))


if __name__ == "__main__":
    main()
