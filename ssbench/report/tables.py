"""Build the paper's tables from completed runs: main, per-class, SSS ablation, significance, reproduction gap.

Numbers: per run, the mean over classes of the per-class mean over test volumes (absent pairs left out), as the
literature averages; per cell, the mean of those seed values ± their sample standard deviation (ddof 1), with the
number of seeds. Runs whose metric policy, HD95 units or selection protocol differ never share a cell or a table.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ssbench.errors import UserError
from ssbench.report.collect import Run
from ssbench.report.render import Table
from ssbench.report.stats import bootstrap_ci, holm, wilcoxon_p

METRICS = (("dice", "Dice %", 100.0), ("jaccard", "Jaccard %", 100.0), ("hd95", "HD95", 1.0), ("asd", "ASD", 1.0))
TEST_NOTE = ("Significance: paired two-sided Wilcoxon signed-rank test (scipy.stats.wilcoxon) of per-case Dice "
             "(mean over classes, averaged over seeds) against the reference method, on the same test cases; "
             "Holm correction across the comparisons of each split; † marks adjusted p < 0.05{unit}.")


class MixedProtocol(UserError):
    pass


def run_value(run: Run, checkpoint: str, metric: str, cls: str | None = None) -> float:
    """Mean over classes of per-class means over volumes (absent left out); one class when ``cls`` is given."""
    f = run.frame[(run.frame["checkpoint"] == checkpoint) & (run.frame["status"] != "absent")]
    per_class = f.groupby("class", sort=False)[metric].mean()
    if cls is not None:
        return float(per_class.get(cls, np.nan))
    return float(per_class.mean()) if len(per_class) else float("nan")


def case_scores(run: Run, checkpoint: str, metric: str = "dice") -> pd.DataFrame:
    """Per test volume: the mean over its (non-absent) classes; columns case_id, patient_id, value."""
    f = run.frame[(run.frame["checkpoint"] == checkpoint) & (run.frame["status"] != "absent")]
    return f.groupby(["case_id", "patient_id"], sort=True)[metric].mean().rename("value").reset_index()


def fmt(values: list[float], scale: float) -> str:
    vals = np.asarray([v for v in values if not np.isnan(v)]) * scale
    if len(vals) == 0:
        return "—"
    if len(vals) == 1:
        return f"{vals[0]:.2f}"
    return f"{vals.mean():.2f} ± {vals.std(ddof=1):.2f}"


@dataclass
class Cell:
    runs: list[Run]

    def values(self, checkpoint, metric, cls=None):
        return [run_value(r, checkpoint, metric, cls) for r in self.runs]


def group(runs: list[Run]) -> dict[str, dict[tuple[str, int], Cell]]:
    """dataset -> (method, labeled) -> cell; refuses cells and tables that mix protocols."""
    by_dataset: dict[str, dict[tuple[str, int], Cell]] = defaultdict(dict)
    for r in runs:
        cells = by_dataset[r.dataset]
        cells.setdefault((r.method, r.labeled), Cell([])).runs.append(r)
    for dataset, cells in by_dataset.items():
        for (method, labeled), cell in cells.items():
            keys = {r.protocol_key for r in cell.runs}
            if len(keys) > 1:
                raise MixedProtocol(
                    f"{dataset} / {method} / {labeled} labeled: runs with different protocols cannot share a cell: "
                    + "; ".join(f"{r.path} ({_protocol_text(r)})" for r in cell.runs)
                )
            cell.runs.sort(key=lambda r: r.seed)
        keys = {c.runs[0].protocol_key for c in cells.values()}
        if len(keys) > 1:
            examples = {c.runs[0].protocol_key: c.runs[0] for c in cells.values()}
            raise MixedProtocol(
                f"{dataset}: runs with different protocols cannot share a table: "
                + "; ".join(f"{r.path} ({_protocol_text(r)})" for r in examples.values())
            )
    return by_dataset


def _protocol_text(r: Run) -> str:
    p = r.protocol
    return f"empty policy {p['empty_policy']}, HD95 in {p['hd_units']}, selection on {p['selection']}"


def _split_label(cells: dict, labeled: int) -> str:
    splits = sorted({r.split for (m, n), c in cells.items() if n == labeled for r in c.runs})
    named = [s for s in splits if not s.isdigit()]
    return f"{labeled} labeled" + (f" ({named[0]})" if len(named) == 1 else "")


def _classes(cells: dict) -> list[str]:
    first = next(iter(cells.values())).runs[0].frame
    return list(dict.fromkeys(first["class"]))


def _methods(cells: dict) -> list[str]:
    return sorted({m for m, _ in cells})


def significance(cells: dict, checkpoint: str, reference: str | None) -> pd.DataFrame:
    """One row per (split, method != reference, level): raw and Holm-adjusted p, mean difference and its CI."""
    rows = []
    for labeled in sorted({n for _, n in cells}):
        methods = [m for m in _methods(cells) if (m, labeled) in cells]
        if len(methods) < 2:
            continue
        scores = {}
        for m in methods:
            per_seed = [case_scores(r, checkpoint).set_index(["case_id", "patient_id"])["value"]
                        for r in cells[(m, labeled)].runs]
            scores[m] = pd.concat(per_seed, axis=1).mean(axis=1)
        ref = reference if reference in scores else max(scores, key=lambda m: scores[m].mean())
        levels = ["volume"]
        if any(s.index.get_level_values("patient_id").duplicated().any() for s in scores.values()):
            levels.append("patient")
        for level in levels:
            batch = []
            for m in methods:
                if m == ref:
                    continue
                a, b = scores[m], scores[ref]
                common = a.index.intersection(b.index)
                a, b = a.loc[common], b.loc[common]
                if level == "patient":
                    a = a.groupby(level="patient_id").mean()
                    b = b.groupby(level="patient_id").mean()
                diff = (a - b).to_numpy()
                lo, hi = bootstrap_ci(diff)
                batch.append({"labeled": labeled, "level": level, "method": m, "reference": ref, "n": len(diff),
                              "mean_diff": float(diff.mean()), "ci_low": lo, "ci_high": hi,
                              "p_raw": wilcoxon_p(a.to_numpy(), b.to_numpy())})
            if batch:
                adjusted = holm([r["p_raw"] for r in batch])
                for r, p in zip(batch, adjusted):
                    r["p_holm"] = float(p)
                    r["significant"] = bool(p < 0.05)
                rows += batch
    return pd.DataFrame(rows)


def main_table(dataset: str, cells: dict, checkpoint: str, sig: pd.DataFrame, missing: dict) -> tuple[Table, pd.DataFrame, dict]:
    labeled_set = sorted({n for _, n in cells})
    units = next(iter(cells.values())).runs[0].protocol["hd_units"]
    header = ["method"]
    for n in labeled_set:
        header += [f"{_split_label(cells, n)} {name}" + (f" ({units})" if scale == 1.0 else "")
                   for _, name, scale in METRICS] + [f"{_split_label(cells, n)} seeds"]
    table = Table(f"{dataset}: test set, {checkpoint} checkpoint, mean ± std over seeds", header, [])
    csv_rows, provenance = [], {}
    level = "patient" if (not sig.empty and "patient" in set(sig["level"])) else "volume"
    for method in _methods(cells):
        row = [method]
        for n in labeled_set:
            cell = cells.get((method, n))
            if cell is None:
                mark = table.footnote(missing.get((method, n), "no completed run"))
                row += ["—" + mark] * len(METRICS) + ["0"]
                continue
            for key, _, scale in METRICS:
                vals = cell.values(checkpoint, key)
                text = fmt(vals, scale)
                if key == "dice" and not sig.empty:
                    hit = sig[(sig.labeled == n) & (sig.method == method) & (sig.level == level)]
                    if len(hit) and bool(hit["significant"].iloc[0]):
                        text += " †"
                row.append(text)
                arr = np.asarray(vals, float) * scale
                csv_rows.append({"dataset": dataset, "method": method, "labeled": n, "metric": key,
                                 "mean": float(np.nanmean(arr)),
                                 "std": float(np.nanstd(arr, ddof=1)) if len(arr) > 1 else np.nan,
                                 "n_seeds": len(arr), "checkpoint": checkpoint,
                                 "hd_units": units if key in ("hd95", "asd") else ""})
            row.append(str(len(cell.runs)))
            provenance[f"{method} | {n} labeled"] = [{"run": str(r.path), "config_hash": r.config_hash,
                                                     "seed": r.seed} for r in cell.runs]
        table.rows.append(row)
    p = next(iter(cells.values())).runs[0].protocol
    table.notes.append(f"Protocol: selection on {p['selection']}; HD95/ASD in {p['hd_units']}; empty-mask policy "
                       f"{p['empty_policy']}; per run the mean over classes of per-class means over test volumes.")
    table.notes.append(TEST_NOTE.format(unit=" at patient level (mean of each patient's volumes)"
                                        if level == "patient" else ""))
    if not sig.empty:
        refs = sig.drop_duplicates("labeled").set_index("labeled")["reference"]
        table.notes.append("Reference method: " + "; ".join(f"{_split_label(cells, n)}: {m}" for n, m in refs.items())
                           + " (details and bootstrap 95% CIs in significance_" + dataset + ".csv).")
    return table, pd.DataFrame(csv_rows), provenance


def per_class_table(dataset: str, cells: dict, checkpoint: str, labeled: int) -> tuple[Table, pd.DataFrame]:
    classes = _classes(cells)
    units = next(iter(cells.values())).runs[0].protocol["hd_units"]
    header = ["method"] + [f"{c} Dice %" for c in classes] + ["mean Dice %"] + \
             [f"{c} HD95 ({units})" for c in classes] + [f"mean HD95 ({units})"]
    table = Table(f"{dataset}, {_split_label(cells, labeled)}: per class, {checkpoint} checkpoint", header, [])
    csv_rows = []
    for method in _methods(cells):
        cell = cells.get((method, labeled))
        if cell is None:
            continue
        row = [method]
        for key, scale in (("dice", 100.0), ("hd95", 1.0)):
            for c in classes + [None]:
                vals = cell.values(checkpoint, key, c)
                row.append(fmt(vals, scale))
                csv_rows.append({"dataset": dataset, "labeled": labeled, "method": method, "class": c or "mean",
                                 "metric": key, "mean": float(np.nanmean(np.asarray(vals) * scale)),
                                 "n_seeds": len(vals)})
        table.rows.append(row)
    return table, pd.DataFrame(csv_rows)


def ablation_table(dataset: str, cells: dict, checkpoint: str) -> Table | None:
    """SSS with DFE / PCSW on and off, when runs of more than one variant exist."""
    sss = {k: c for k, c in cells.items() if c.runs[0].base_method == "sss"}
    if len({m for m, _ in sss}) < 2:
        return None
    table = Table(f"{dataset}: SSS ablation, {checkpoint} checkpoint", ["DFE", "PCSW", "labeled", "variant",
                                                                        "Dice %", "HD95", "seeds"], [])
    for (method, n), cell in sorted(sss.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        mc = cell.runs[0].method_config
        table.rows.append(["on" if mc.get("dfe", True) else "off", "on" if mc.get("pcsw", True) else "off",
                           str(n), method, fmt(cell.values(checkpoint, "dice"), 100.0),
                           fmt(cell.values(checkpoint, "hd95"), 1.0), str(len(cell.runs))])
    return table


PUBLISHED_TO_OURS = {"UNet, labeled only": "supervised", "UniMatch": "unimatch", "Mean Teacher": "mean-teacher",
                     "SSS": "sss"}


def gap_table(by_dataset: dict, published: pd.DataFrame, checkpoint: str) -> tuple[Table, pd.DataFrame]:
    table = Table(f"Reproduction gap: our numbers beside the published ones ({checkpoint} checkpoint)",
                  ["method", "dataset", "labeled", "metric", "published", "ours", "Δ", "protocol differences"], [])
    rows = []
    for _, pub in published.iterrows():
        ours_method = PUBLISHED_TO_OURS.get(pub["method"])
        if ours_method is None:
            continue
        cells = by_dataset.get(pub["dataset"], {})
        labeled = None if pd.isna(pub["labeled"]) else int(pub["labeled"])
        match = [c for (m, n), c in cells.items() if m == ours_method and (labeled is None or n == labeled)]
        scale = 100.0 if pub["metric"] in ("dice", "jaccard") else 1.0
        diffs = []
        if match:
            p = match[0].runs[0].protocol
            if pub["metric"] in ("hd95", "asd") and p["hd_units"] != pub["units"]:
                diffs.append(f"HD units: ours {p['hd_units']}, theirs {pub['units']}")
            if p["selection"] != pub["selection"]:
                diffs.append(f"selection: ours {p['selection']}, theirs {pub['selection']}")
            if p["empty_policy"] != pub["empty_policy"]:
                diffs.append(f"empty masks: ours {p['empty_policy']}, theirs {pub['empty_policy']}")
            vals = match[0].values(checkpoint, pub["metric"])
            ours = float(np.nanmean(vals)) * scale
            ours_text, delta = f"{ours:.2f}", f"{ours - float(pub['value']):+.2f}"
        else:
            phantom = f"{pub['dataset']}-phantom" in by_dataset
            reason = ("only runs on the synthetic phantom, which is not comparable" if phantom
                      else "no completed run of this method, dataset and split")
            ours, ours_text, delta = np.nan, "—" + table.footnote(reason), "—"
        table.rows.append([pub["method"], pub["dataset"], "" if labeled is None else str(labeled), pub["metric"],
                           f"{float(pub['value']):.2f}", ours_text, delta, "; ".join(diffs) or
                           ("none" if match else "—")])
        rows.append({**pub.to_dict(), "ours": ours, "differences": "; ".join(diffs)})
    table.notes.append("Published values: paper/published.csv (from the papers' tables; sources in its 'source' "
                       "column). A number differs from ours for the stated protocol reasons before any other.")
    return table, pd.DataFrame(rows)
