"""The reproduction gap: each published number beside ours, with both protocols and what differs.

``published.csv`` records, per published row, the protocol it was produced under: schedule (and the iterations it
amounts to), model selection, inference resize, metric code, empty-mask policy, HD units and test set. For each row
ours comes from the closest runs of the same method, dataset and labeled count: the same selection protocol first
(published val+test rows are compared with our legacy val+test runs), then the same inference resize, empty-mask
policy and HD units, the main row before other settings. For a published val+test row, "ours" is our legacy runs'
selection score (summary.json ``selection.best_score``: the val+test mean Dice at the checkpoint it selected, the
number UniMatch's README reports), and their test-only Dice is shown beside it.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from ssbench.report.pooling import Layout, PooledRow, describe
from ssbench.report.render import Column, Cell, Table, TableRow
from ssbench.metrics.catalog import distance_names, metric, metric_names
from ssbench.report.tables import cell_stats

PUBLISHED_TO_OURS = {"UNet, labeled only": "supervised", "UNet, all 70 labeled": "supervised",
                     "UniMatch": "unimatch", "Mean Teacher": "mean-teacher", "SSS": "sss", "FixMatch": "fixmatch",
                     "BCP": "bcp", "ABD": "abd", "AD-MT": "admt", "UA-MT": "ua-mt", "URPC": "urpc",
                     "CPS": "cps"}
LEGACY = "legacy-val+test"
COLUMNS = ("dataset", "method", "labeled", "metric", "value", "units", "selection", "schedule", "iterations",
           "inference_resize", "metric_code", "empty_policy", "test_set", "test_volumes", "source")


def published_path() -> Path:
    return Path(str(resources.files("ssbench.report") / "published.csv"))


def read_published(path: Path | None = None) -> pd.DataFrame:
    frame = pd.read_csv(path or published_path(), dtype=str, keep_default_na=False)
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"published.csv: missing column {missing[0]!r}")
    return frame


def _int(text) -> int | None:
    try:
        return int(float(text))
    except (TypeError, ValueError):
        return None


def _candidates(layouts: list[Layout], pub) -> list[tuple[Layout, PooledRow, int]]:
    ours = PUBLISHED_TO_OURS.get(pub["method"])
    labeled = _int(pub["labeled"])
    out = []
    for lay in layouts:
        if lay.dataset != pub["dataset"]:
            continue
        for row in lay.rows:
            if row.method != ours:
                continue
            if labeled is not None and labeled in row.cells:
                out.append((lay, row, labeled))
            elif labeled is None and row.cells:  # labeled count not on record: the cell with the most seeds
                out.append((lay, row, max(row.cells, key=lambda n: (len(row.cells[n]), n))))
    return out


def _choose(cands, pub):
    legacy = pub["selection"] == LEGACY
    cands = [c for c in cands if (c[1].settings["train.selection"] == LEGACY) == legacy]
    if not cands:
        return None
    distance = pub["metric"] in distance_names()

    def closeness(c):
        lay, row, n = c
        empty, units, _ = lay.policy
        return (row.settings["data.inference_resize"] == pub["inference_resize"],
                not distance or empty == pub["empty_policy"] or not pub["empty_policy"],
                not distance or units == pub["units"] or not pub["units"],
                row.main, len(row.cells[n]))
    return max(cands, key=closeness)


def _our_protocol(lay: Layout, row: PooledRow, runs, legacy: bool) -> dict:
    first = runs[0]
    empty, units, conn = lay.policy
    schedules = list(dict.fromkeys(r.schedule_text for r in runs))
    cases = {r.selection_cases for r in runs} if legacy else {r.test_cases for r in runs}
    return {
        "schedule": "; ".join(schedules), "iterations": first.iterations,
        "selection": row.settings["train.selection"], "inference_resize": row.settings["data.inference_resize"],
        "metric_code": f"ssbench (medpy-exact), empty masks {empty}, connectivity {conn}", "empty_policy": empty,
        "units": units,
        "test_set": (f"{'/'.join(map(str, sorted(c for c in cases if c)))} volumes: "
                     + ("val+test (selection score)" if legacy else "test")),
        "test_volumes": max((c for c in cases if c), default=None),
    }


def _differences(pub, ours: dict) -> list[str]:
    diffs = []
    its = _int(pub["iterations"])
    if pub["schedule"] and (its != ours["iterations"] or ("epoch" in pub["schedule"]) != ("epoch" in ours["schedule"])):
        diffs.append("schedule")
    if pub["selection"] and pub["selection"] != ours["selection"]:
        diffs.append("selection")
    if pub["inference_resize"] and pub["inference_resize"] != ours["inference_resize"]:
        diffs.append("inference resize")
    if pub["metric"] in distance_names():  # every policy scores an empty prediction's Dice and Jaccard 0
        if pub["empty_policy"] and pub["empty_policy"] != ours["empty_policy"]:
            diffs.append("empty masks")
        if pub["units"] and pub["units"] != ours["units"]:
            diffs.append("HD units")
    if _int(pub["test_volumes"]) is not None and _int(pub["test_volumes"]) != ours["test_volumes"]:
        diffs.append("test set")
    return diffs


def _their_protocol_text(pub) -> str:
    parts = [pub["schedule"] and f"{pub['schedule']}", pub["selection"] and f"selection on {pub['selection']}",
             pub["inference_resize"] and describe("data.inference_resize", pub["inference_resize"]),
             pub["metric_code"], pub["units"] and f"95HD/ASD in {pub['units']}", pub["test_set"]]
    return "; ".join(p for p in parts if p) or "not on record"


def _our_protocol_text(p: dict) -> str:
    resize = describe("data.inference_resize", p["inference_resize"])
    return (f"{p['schedule']}; selection on {p['selection']}; {resize}; {p['metric_code']}; "
            f"95HD/ASD in {p['units']}; {p['test_set']}")


def gap_table(layouts: list[Layout], published: pd.DataFrame, checkpoint: str) -> tuple[Table, pd.DataFrame]:
    columns = [Column("Labeled"), Column("Metric"), Column("Published"), Column("Ours"),
               Column("Ours − published"), Column("Ours, test only"), Column("Their protocol"),
               Column("Our protocol"), Column("Differences", align="l")]
    table = Table(f"Reproduction gap: published numbers beside ours ({checkpoint} checkpoint)", columns)
    theirs_keys: dict[str, str] = {}
    ours_keys: dict[str, str] = {}
    records = []
    for _, pub in published.iterrows():
        if pub["method"] not in PUBLISHED_TO_OURS:
            continue
        name = pub["metric"]
        if name not in metric_names():
            continue  # a published metric ssbench does not compute
        scale = metric(name).scale
        legacy = pub["selection"] == LEGACY
        their_key = theirs_keys.setdefault(_their_protocol_text(pub), chr(ord("A") + len(theirs_keys)))
        choice = _choose(_candidates(layouts, pub), pub)
        record = {**pub.to_dict(), "ours": np.nan, "gap": np.nan, "ours_test_only": np.nan, "our_runs": "",
                  "our_seeds": 0, "differences": "", "their_protocol": _their_protocol_text(pub)}
        ours_entry, gap_entry, test_entry, our_key, diff_text = Cell(text="—"), Cell(text="—"), Cell(text=""), \
            "—", ""
        if choice is None:
            phantom = any(lay.dataset == f"{pub['dataset']}-phantom" for lay in layouts)
            reason = ("only runs on the synthetic phantom, which is not comparable" if phantom else
                      f"no completed {'legacy val+test ' if legacy else ''}run of this method, dataset and split")
            ours_entry = Cell(text="—", note=table.footnote(reason))
        else:
            lay, row, n = choice
            runs = row.cells[n]
            proto = _our_protocol(lay, row, runs, legacy)
            our_key = ours_keys.setdefault(_our_protocol_text(proto), f"O{len(ours_keys) + 1}")
            diffs = _differences(pub, proto)
            diff_text = ", ".join(diffs) or "none"
            test = cell_stats(runs, checkpoint, name, scale)
            if legacy:
                scores = [r.selection_score * 100 for r in runs if r.selection_score is not None]
                ours = float(np.mean(scores)) if scores else np.nan
                std = float(np.std(scores, ddof=1)) if len(scores) > 1 else None
                test_entry = Cell(test["mean"], test["std"])
                record["ours_test_only"] = test["mean"]
            else:
                ours, std = test["mean"], test["std"]
            value = float(pub["value"])
            ours_entry = Cell(ours, std) if np.isfinite(ours) else Cell(
                text="—", note=table.footnote("the runs record no selection score (summary.json selection)"))
            gap_entry = Cell(ours - value) if np.isfinite(ours) else Cell(text="—")
            if np.isfinite(ours):
                gap_entry.text = f"{ours - value:+.2f}"
            record.update(ours=ours, gap=ours - value, our_runs=";".join(str(r.path) for r in runs),
                          our_seeds=len(runs), differences=diff_text, our_row=row.label,
                          our_table=lay.stem, **{f"our_{k}": v for k, v in proto.items()})
        table.rows.append(TableRow(pub["method"], [
            Cell(text=pub["labeled"] or "n/a"), Cell(text=metric(name).label),
            Cell(float(pub["value"])), ours_entry, gap_entry, test_entry, Cell(text=their_key),
            Cell(text=our_key), Cell(text=diff_text)], section=their_key, ranked=False))
        records.append(record)
    table.rows.sort(key=lambda r: r.section)  # rows of one published protocol together (a stable sort)
    table.notes.append("Ours: mean ± std over seeds of the closest runs (same selection protocol, then the same "
                       "inference resize, empty-mask policy and HD units). For published val+test rows, ours is the "
                       "val+test selection score of our legacy val+test runs (summary.json selection.best_score) "
                       "and 'Ours, test only' is their test-set Dice.")
    table.notes += [f"Their protocol {k}: {text}." for text, k in theirs_keys.items()]
    table.notes += [f"Our protocol {k}: {text}." for text, k in ours_keys.items()]
    table.notes.append("Differences compare schedule (length in iterations), selection, inference resize, test set, "
                       "and for 95HD/ASD the empty-mask policy and units (every policy scores an empty prediction's "
                       "Dice 0). Published values and their protocols: published.csv.")
    return table, pd.DataFrame(records)
