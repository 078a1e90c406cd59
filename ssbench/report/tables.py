"""The paper's tables from pooled runs: main, other protocols, per class, SSS ablation, significance.

Numbers: per run, the mean over classes of the per-class mean over test volumes (absent pairs left out), as the
literature averages; per cell, the mean of those seed values ± their sample standard deviation (ddof 1).
Which runs share a table, a row and a cell is decided in ``pooling``.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd

from ssbench.errors import UserError
from ssbench.metrics.catalog import Metric, metrics, per_class_metrics
from ssbench.report.collect import Run
from ssbench.report.pooling import Layout, PooledRow, describe
from ssbench.report.render import Column, Cell, Table, rank, TableRow
from ssbench.report.stats import N_BOOT, cluster_bootstrap_ci, holm, smallest_p, wilcoxon

SECTIONS = {"baseline": "labeled only", "method": "semi-supervised", "upper": "upper bound"}
ALPHA = 0.05
TESTED_METRIC = "dice"  # the significance tests and their marks are on per-patient Dice
BETTER, WORSE = "†", "‡"


def metric_header(m: Metric, units: str) -> str:
    return f"{m.header(units)} {'↑' if m.direction > 0 else '↓'}"


def _scored(run: Run, checkpoint: str) -> pd.DataFrame:
    f = run.frame
    return f[(f["checkpoint"] == checkpoint) & (f["status"] != "absent")]


def run_value(run: Run, checkpoint: str, metric: str, cls: str | None = None) -> float:
    """Mean over classes of per-class means over volumes (absent left out); one class when ``cls`` is given."""
    per_class = run.class_means(checkpoint)[metric]
    if cls is not None:
        return float(per_class.get(cls, np.nan))
    per_class = per_class.dropna()
    return float(per_class.mean()) if len(per_class) else float("nan")


def case_scores(run: Run, checkpoint: str, metric: str = "dice") -> pd.DataFrame:
    """Per test volume: the mean over its (non-absent) classes; columns case_id, patient_id, value."""
    f = _scored(run, checkpoint)
    return f.groupby(["case_id", "patient_id"], sort=True)[metric].mean().rename("value").reset_index()


def seed_mean_scores(runs: list[Run], checkpoint: str, metric: str = "dice") -> pd.Series:
    """Per test volume, the per-case score averaged over the seeds (index: case_id, patient_id)."""
    per_seed = [case_scores(r, checkpoint, metric).set_index(["case_id", "patient_id"])["value"] for r in runs]
    return pd.concat(per_seed, axis=1).mean(axis=1)


def cell_stats(runs: list[Run], checkpoint: str, metric: str, scale: float, cls: str | None = None) -> dict:
    vals = np.asarray([run_value(r, checkpoint, metric, cls) for r in runs], float) * scale
    vals = vals[np.isfinite(vals)]
    return {"mean": float(vals.mean()) if len(vals) else float("nan"),
            "std": float(vals.std(ddof=1)) if len(vals) > 1 else float("nan"), "n_seeds": int(len(vals))}


def classes(layout: Layout) -> list[str]:
    names: dict[str, int] = {}
    for row in layout.rows:
        for r in row.runs:
            f = r.frame.drop_duplicates("class")
            ids = f["class_id"] if "class_id" in f.columns else pd.Series(range(len(f)), index=f.index)
            for name, cid in zip(f["class"], ids):
                names.setdefault(name, int(cid) if pd.notna(cid) else len(names))
    return sorted(names, key=lambda n: names[n])


# ---- significance ----------------------------------------------------------------------------------------------

def resolve_reference(layouts: list[Layout], reference: str | None) -> None:
    if reference is None:
        return
    names = {x for lay in layouts for row in lay.main_rows for x in (row.method, row.display, row.label)}
    if reference not in names:
        known = sorted({row.method for lay in layouts for row in lay.main_rows})
        raise UserError(f"--reference {reference}: no such method among the main-protocol runs (methods: "
                        f"{', '.join(known)})")


def _compared_rows(layout: Layout, labeled: int) -> list[PooledRow]:
    return [r for r in layout.main_rows if r.role != "upper" and labeled in r.cells]


DEFAULT_REFERENCE = "the labeled-only baseline (the default: fixed before the results)"


def _pick_reference(rows: list[PooledRow], reference: str | None) -> PooledRow | None:
    """The row the split's methods are tested against: --reference, else the labeled-only baseline, a choice that
    does not depend on the results (None: no baseline at this split, no tests)."""
    for row in rows:
        if reference in (row.method, row.display, row.label):
            return row
    return next((row for row in rows if row.role == "baseline"), None)


def significance(layout: Layout, checkpoint: str, reference: str | None) -> pd.DataFrame:
    """One row per (split, level, method != reference): p raw and Holm-adjusted, direction, mean difference and a
    cluster-bootstrap CI, the scipy method and how the seeds entered."""
    out = []
    for labeled in layout.splits():
        rows = _compared_rows(layout, labeled)
        if len(rows) < 2:
            continue
        ref = _pick_reference(rows, reference)
        if ref is None:
            continue  # said in the notes (_main_notes)
        scores = {r.label: seed_mean_scores(r.cells[labeled], checkpoint) for r in rows}
        how = ("given by --reference" if reference in (ref.method, ref.display, ref.label) else DEFAULT_REFERENCE)
        patient_level = any(s.index.get_level_values("patient_id").duplicated().any() for s in scores.values())
        for level in ["volume"] + (["patient"] if patient_level else []):
            batch = []
            for row in rows:
                if row is ref:
                    continue
                a, b = scores[row.label], scores[ref.label]
                common = a.index.intersection(b.index)
                if not len(common):
                    continue  # no test case in common: nothing to pair
                a, b = a.loc[common], b.loc[common]
                if level == "patient":
                    a, b = a.groupby(level="patient_id").mean(), b.groupby(level="patient_id").mean()
                diff = (a - b).to_numpy()
                clusters = a.index.get_level_values("patient_id")
                lo, hi = cluster_bootstrap_ci(diff * 100, clusters)
                test = wilcoxon(a.to_numpy(), b.to_numpy())
                batch.append({
                    "labeled": labeled, "level": level, "method": row.label, "method_id": row.method,
                    "reference": ref.label, "reference_id": ref.method, "reference_chosen": how,
                    "n": len(diff), "n_patients": int(pd.Index(clusters).nunique()),
                    "mean_diff": float(diff.mean() * 100), "ci_low": lo, "ci_high": hi,
                    "p_raw": test.p, "wilcoxon_method": test.method, "zero_method": test.zero_method,
                    "n_nonzero": test.n_nonzero, "p_min": smallest_p(test.n_nonzero),
                    "direction": {1: "better", -1: "worse", 0: ""}[test.direction],
                    "seeds": len(row.cells[labeled]), "reference_seeds": len(ref.cells[labeled]),
                    "seed_handling": "per-case Dice averaged over each method's seeds, then paired by case",
                    "unit": ("patient: mean of a patient's volumes" if level == "patient" else "volume"),
                    "ci_method": (f"percentile bootstrap, {N_BOOT} resamples of patients (a patient's volumes "
                                  "together), seed 0"),
                    "test": test.described, "checkpoint": checkpoint,
                })
            if batch:
                for r, p in zip(batch, holm([r["p_raw"] for r in batch])):
                    r["p_holm"] = float(p)
                    r["significant"] = bool(p < ALPHA)
                    # Holm multiplies the smallest p by the number of tests: the best any test here can reach
                    r["p_min_holm"] = min(1.0, len(batch) * r["p_min"])
                    r["mark_possible"] = bool(r["p_min_holm"] < ALPHA)
                out += batch
    cols = ["labeled", "level", "method", "reference", "n", "n_patients", "mean_diff", "ci_low", "ci_high",
            "p_raw", "p_holm", "significant", "direction"]
    frame = pd.DataFrame(out)
    return frame[cols + [c for c in frame.columns if c not in cols]] if len(frame) else frame


def decision_level(sig: pd.DataFrame) -> str:
    return "patient" if len(sig) and "patient" in set(sig["level"]) else "volume"


def _mark(sig: pd.DataFrame, labeled: int, row: PooledRow) -> str:
    if sig.empty:
        return ""
    hit = sig[(sig.labeled == labeled) & (sig.method == row.label) & (sig.level == decision_level(sig))]
    if not len(hit) or not bool(hit["significant"].iloc[0]):
        return ""
    return {"better": BETTER, "worse": WORSE}.get(hit["direction"].iloc[0], "")


# ---- main and other-protocol tables ----------------------------------------------------------------------------

def _metric_columns(layout: Layout, splits: list[int]) -> list[Column]:
    return [Column(metric_header(m, layout.units), group=layout.split_label(n), direction=m.direction)
            for n in splits for m in metrics()]


def _row_cells(layout, row, n) -> list[Run] | None:
    if row.role == "upper":
        return row.cells[max(row.cells)]
    return row.cells.get(n)


def main_table(layout: Layout, checkpoint: str, sig: pd.DataFrame, missing: dict) -> tuple[Table, pd.DataFrame,
                                                                                              dict]:
    rows = layout.main_rows
    splits = layout.splits()
    table = Table(f"{layout.dataset}: test set, {checkpoint} checkpoint, mean ± std over seeds",
                  _metric_columns(layout, splits))
    tidy = []
    for row in rows:
        entries = []
        for n in splits:
            runs = _row_cells(layout, row, n)
            if not runs:
                reason = missing.get((row.method, n)) or _elsewhere(layout, row, n) or "no completed run"
                entries += [Cell(text="—", note=table.footnote(reason))] * len(metrics())
                continue
            for m in metrics():
                s = cell_stats(runs, checkpoint, m.name, m.scale)
                mark = _mark(sig, n, row) if m.name == TESTED_METRIC and row.role != "upper" else ""
                entries.append(Cell(s["mean"], s["std"], mark=mark))
        table.rows.append(TableRow(row.label, entries, SECTIONS[row.role], ranked=row.role != "upper"))
    rank(table)
    for row, trow in zip(rows, table.rows):
        for j, n in enumerate(splits):
            runs = _row_cells(layout, row, n)
            if not runs or (row.role == "upper" and j > 0):  # the upper bound's one cell, shown under each split
                continue
            for k, m in enumerate(metrics()):
                e = trow.entries[j * len(metrics()) + k]
                tidy.append(_tidy(layout, row, runs, n, m.name, m.scale, checkpoint, e))
    table.notes += _main_notes(layout, rows, checkpoint, sig,
                               underlined=any(e.rank == 2 for r in table.rows for e in r.entries))
    provenance = _provenance(layout, rows, checkpoint)
    provenance["ranking"] = ("bold = best, underline = second best per column on the printed (2-decimal) means; "
                             "higher is better for Dice/Jaccard, lower for 95HD/ASD; labeled-only and "
                             "semi-supervised rows only")
    if not sig.empty:
        refs = sig.drop_duplicates("labeled")
        provenance["significance"] = {
            "file": f"significance_{layout.stem}.csv", "marks": {BETTER: "better", WORSE: "worse"},
            "decided_at": decision_level(sig), "alpha": ALPHA, "correction": "Holm over the methods of each split",
            "reference": {str(n): {"row": r, "chosen": c} for n, r, c in
                          zip(refs["labeled"], refs["reference"], refs["reference_chosen"])},
            "test": sorted(set(sig["test"])), "seed_handling": sorted(set(sig["seed_handling"])),
        }
    return table, pd.DataFrame(tidy), provenance


def other_table(layout: Layout, checkpoint: str) -> tuple[Table, pd.DataFrame, dict] | None:
    """Rows of other protocols or training settings, each beside its method's main row; nothing is ranked."""
    others = layout.other_rows
    if not others:
        return None
    rows = []
    for method in dict.fromkeys((r.method, r.role == "upper") for r in others):
        rows += [r for r in layout.main_rows if (r.method, r.role == "upper") == method]
        rows += [r for r in others if (r.method, r.role == "upper") == method]
    splits = layout.splits(rows) or sorted({max(r.cells) for r in rows})  # only upper-bound rows: their count
    table = Table(f"{layout.dataset}: runs of other protocols or training settings, test set, {checkpoint} "
                  "checkpoint, mean ± std over seeds", _metric_columns(layout, splits))
    tidy = []
    for row in rows:
        entries = []
        for n in splits:
            runs = _row_cells(layout, row, n)
            for m in metrics():
                if not runs:
                    entries.append(Cell(text="—"))
                    continue
                s = cell_stats(runs, checkpoint, m.name, m.scale)
                entries.append(Cell(s["mean"], s["std"]))
                if row.role != "upper" or n == splits[0]:
                    tidy.append(_tidy(layout, row, runs, n, m.name, m.scale, checkpoint, entries[-1]))
        section = row.display + (" (upper bound)" if row.role == "upper" else "")
        table.rows.append(TableRow(row.label, entries, section, ranked=False))
    table.notes.append("Not ranked and not tested: each row differs from its method's main row "
                       f"(main table main_{layout.stem}) in:")
    for row in others:
        what = "; ".join(f"{k} = {_show(v)} (main row: {_show(ref)})" for k, (v, ref) in row.differs.items())
        table.notes.append(f"{row.label}: {what}.")
    table.notes.append(_policy_note(layout))
    return table, pd.DataFrame(tidy), _provenance(layout, rows, checkpoint)


def _show(v) -> str:
    return ",".join(map(str, v)) if isinstance(v, tuple) else str(v)


def _elsewhere(layout: Layout, row: PooledRow, n: int) -> str:
    """The reason a main cell is empty when runs exist under another protocol or other settings."""
    names = [o.label for o in layout.other_rows if o.method == row.method and n in o.cells]
    return f"runs only under other settings: {'; '.join(names)} (other-protocols_{layout.stem})" if names else ""


def _tidy(layout, row, runs, n, key, scale, checkpoint, e: Cell) -> dict:
    s = cell_stats(runs, checkpoint, key, scale)
    return {"dataset": layout.dataset, "metric_policy": "-".join(map(str, layout.policy)), "section": row.role,
            "row": row.label, "method": row.method, "display_name": row.display,
            "split": layout.split_label(n) if row.role != "upper" else f"all ({max(row.cells)} labeled)",
            "labeled": runs[0].labeled, "metric": key, "mean": s["mean"], "std": s["std"], "n_seeds": s["n_seeds"],
            "seeds": ";".join(str(r.seed) for r in runs), "rank": e.rank, "mark": e.mark, "checkpoint": checkpoint,
            "units": layout.units if scale == 1.0 else "%",
            "train_iters": ";".join(dict.fromkeys(str(total_iterations(r)) for r in runs))}


def total_iterations(run: Run) -> int | None:
    """Every training step of a run, over all its stages (BCP: pre-train + self-training)."""
    stages = run.info.get("stages")
    if isinstance(stages, list) and len(stages) > 1 and all(isinstance(s, dict) for s in stages):
        return int(sum(int(s.get("iters") or 0) for s in stages))
    return run.iterations


def _policy_note(layout: Layout) -> str:
    empty, units, conn = layout.policy
    p = layout.main_protocol
    return (f"Protocol: model selection on {p['selection']}; {describe('data.inference_resize', p['inference_resize'])}"
            f" resize; empty-mask policy {empty}; 95HD/ASD in {units}; surface connectivity {conn}. Per run, the "
            "mean over classes of the per-class mean over test volumes (absent classes left out).")


def _main_notes(layout: Layout, rows: list[PooledRow], checkpoint: str, sig: pd.DataFrame,
                underlined: bool = True) -> list[str]:
    notes = [_policy_note(layout)]
    seeds = {(r.label, n): len(c) for r in rows for n, c in r.cells.items()}
    usual = Counter(seeds.values()).most_common(1)[0][0]
    odd = [f"{label}{'' if any(x.role == 'upper' and x.label == label for x in rows) else f' at {n}'}: {k}"
           for (label, n), k in sorted(seeds.items()) if k != usual]
    notes.append(f"Mean ± sample std (ddof 1) over seeds; seeds per cell: {usual}"
                 + (f" (except {'; '.join(odd)})" if odd else "") + ".")
    lengths: dict[str, list[str]] = {}
    for r in rows:
        for text in dict.fromkeys(run.schedule_text for run in r.runs):
            lengths.setdefault(text, []).append(r.label)
    if len(lengths) == 1:
        notes.append(f"Training length: {next(iter(lengths))} for every row.")
    else:
        notes.append("Training lengths DIFFER between rows: " + "; ".join(f"{', '.join(names)}: {text}"
                                                                       for text, names in lengths.items())
                     + " (train_iters per row in the csv).")
    if underlined:
        notes.append("Bold: best per column; underlined: second best (labeled-only and semi-supervised rows; the "
                     "upper bound is not ranked).")
    else:  # two ranked rows: the second best would be the worst
        notes.append("Bold: best per column (labeled-only and semi-supervised rows; the upper bound is not ranked); "
                     "no second best is underlined with fewer than three rows to rank.")
    if not sig.empty:
        level = decision_level(sig)
        refs = sig.drop_duplicates("labeled").set_index("labeled")["reference"]
        unit = ("per-patient Dice (the mean of a patient's volumes)" if level == "patient" else "per-volume Dice")
        notes.append(
            f"{BETTER} / {WORSE}: significantly better / worse than the reference method of the split ("
            + "; ".join(f"{layout.split_label(n)}: {m}" for n, m in refs.items())
            + f"): two-sided Wilcoxon signed-rank test (scipy) of {unit}, each case's Dice first averaged over the "
            f"method's seeds; Holm correction over the methods of each split; adjusted p < {ALPHA}. Tests, "
            f"directions and bootstrap 95% CIs (patients resampled): significance_{layout.stem}.csv.")
        notes += _power_notes(layout, sig)
    notes += [f"No significance test at {layout.split_label(n)}: no labeled-only baseline run to test against "
              "(--reference names another method)." for n in layout.splits()
              if len(_compared_rows(layout, n)) > 1 and (sig.empty or n not in set(sig["labeled"]))]
    for d in layout.duplicates:
        if d.used.dataset == layout.dataset:
            notes.append(f"Counted once: {d.used.display_name}, {d.used.labeled} labeled, seed {d.used.seed} was run "
                         f"as --split {d.ignored.split} too (used {d.used.path.parent.name}/{d.used.path.name}, "
                         f"ignored {d.ignored.path.parent.name}/{d.ignored.path.name}).")
    if layout.other_rows:
        notes.append(f"Runs of other protocols or training settings: other-protocols_{layout.stem} ("
                     + "; ".join(r.label for r in layout.other_rows) + ").")
    return notes


def _power_notes(layout: Layout, sig: pd.DataFrame) -> list[str]:
    """Per split: the test's n, the smallest p it can reach (after Holm) and whether any mark is possible."""
    notes = []
    level = decision_level(sig)
    for n, group in sig[sig.level == level].groupby("labeled", sort=True):
        k, units = int(group["n"].max()), "patients" if level == "patient" else "test volumes"
        p_min, p_holm, m = float(group["p_min"].min()), float(group["p_min_holm"].min()), len(group)
        text = (f"{layout.split_label(n)}: n = {k} {units}; the smallest attainable two-sided p is {p_min:.3g}"
                + (f", {p_holm:.3g} after Holm over {m} methods" if m > 1 else ""))
        if not group["mark_possible"].any():
            text += f": NO mark is possible at this n (adjusted p < {ALPHA} cannot be reached); more test cases needed"
        notes.append(text + ".")
    return notes


def _provenance(layout: Layout, rows: list[PooledRow], checkpoint: str) -> dict:
    return {
        "checkpoint": checkpoint,
        "metric_policy": dict(zip(("empty", "hd_units", "connectivity"), layout.policy)),
        "main_protocol": layout.main_protocol,
        "pooling": ("a cell pools runs whose config agrees on every field except train.seed, data.root and the "
                    "spelling of data.split; one run per seed"),
        "rows": [{
            "label": r.label, "role": r.role, "method": r.method, "main": r.main,
            "differs_from_main_row": {k: {"this": _show(v), "main": _show(ref)} for k, (v, ref) in r.differs.items()},
            "settings": {k: _show(v) for k, v in r.settings.items()},
            "cells": {str(n): [{"run": str(x.path), "config_hash": x.config_hash, "seed": x.seed, "split": x.split,
                                "evaluation": x.evaluation or "run"} for x in c] for n, c in sorted(r.cells.items())},
        } for r in rows],
        "duplicates": [{"used": str(d.used.path), "ignored": str(d.ignored.path), "reason": d.reason}
                       for d in layout.duplicates],
    }


# ---- per class, ablation ---------------------------------------------------------------------------------------

def per_class_table(layout: Layout, checkpoint: str, labeled: int) -> tuple[Table, pd.DataFrame, dict]:
    names = classes(layout)
    columns = [Column(metric_header(m, layout.units), group=c or "Mean", direction=m.direction)
               for c in names + [None] for m in per_class_metrics()]
    table = Table(f"{layout.dataset}, {layout.split_label(labeled)}: per class, test set, {checkpoint} checkpoint, "
                  "mean ± std over seeds", columns)
    tidy = []
    for row in layout.main_rows:
        runs = _row_cells(layout, row, labeled)
        if not runs:
            continue
        entries = []
        for c in names + [None]:
            for m in per_class_metrics():
                s = cell_stats(runs, checkpoint, m.name, m.scale, c)
                entries.append(Cell(s["mean"], s["std"]))
                tidy.append({"dataset": layout.dataset, "labeled": labeled, "row": row.label, "method": row.method,
                             "section": row.role, "class": c or "mean", "metric": m.name, **s})
        table.rows.append(TableRow(row.label, entries, SECTIONS[row.role], ranked=row.role != "upper"))
    rank(table)
    table.notes.append(_policy_note(layout))
    used = [r for r in layout.main_rows if _row_cells(layout, r, labeled)]
    return table, pd.DataFrame(tidy), _provenance(layout, used, checkpoint)


def ablation_table(layout: Layout, checkpoint: str) -> Table | None:
    """SSS with DFE / PCSW on and off, when runs of more than one variant exist."""
    rows = [r for r in layout.main_rows if r.method.split("@")[0] == "sss"]
    if len({r.method for r in rows}) < 2:
        return None
    splits = layout.splits(rows)
    shown = per_class_metrics()
    table = Table(f"{layout.dataset}: SSS ablation, test set, {checkpoint} checkpoint, mean ± std over seeds",
                  [Column(metric_header(m, layout.units), group=layout.split_label(n), direction=m.direction)
                   for n in splits for m in shown], stub="SSS")
    for row in rows:
        mc = row.runs[0].method_config
        label = (f"DFE {'on' if mc.get('dfe', True) else 'off'}, PCSW {'on' if mc.get('pcsw', True) else 'off'}"
                 + (f" ({row.method})" if "@" in row.method else ""))
        entries = []
        for n in splits:
            runs = row.cells.get(n)
            for m in shown:
                if not runs:
                    entries.append(Cell(text="—"))
                    continue
                s = cell_stats(runs, checkpoint, m.name, m.scale)
                entries.append(Cell(s["mean"], s["std"]))
        table.rows.append(TableRow(label, entries))
    rank(table)
    table.notes.append(_policy_note(layout))
    return table
