"""What ``ssbench table`` checks of a run before it uses a single number of it.

A run folder is used only if
- its config is the one the run recorded: config.yaml's hash recomputed from the file equals the hash that
  config.yaml and run.json record (an edited config would be filed, and pooled, under settings it did not run);
- its per-case rows are complete: for each checkpoint, exactly one row per (test volume, class), the same classes
  for every volume, the patients those of its split.json test list (all of them, nothing else), as many volumes as
  summary.json says it tested;
- its per-case rows are sound: every status one the engine writes, Dice and Jaccard in [0, 1], HD95 and ASD finite
  and >= 0 where a structure was scored (NaN only where nothing was scored: an 'absent' pair, or a missed structure
  under the 'exclude' policy), no infinity anywhere.
Each failed check raises ``Unreadable`` naming the file and what is wrong: the run is skipped with one line.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ssbench import runfolder
from ssbench.metrics.catalog import distance_names, metric_names, metrics

STATUSES = ("ok", "absent", "missed", "false_positive")


def verify_run(run, unreadable) -> None:
    """Check ``run`` (a collect.Run: its own evaluation or a re-evaluation in evals/); raise ``unreadable``."""
    folder = run.path if not run.evaluation else run.path.parent.parent  # <run>/evals/<policy>/
    if not run.evaluation:
        _check_hash(folder, run.info, unreadable)
    rows = runfolder.CASES if not run.evaluation else f"{runfolder.EVALS}/{run.evaluation}/{runfolder.CASES}"
    test = _test_patients(folder, unreadable)
    empty = str(run.settings.get("eval.empty", "worst"))
    # a prompted protocol (medsam2) scores overlap only: its distance columns are empty by design
    prompted = bool(((run.summary or {}).get("metric_policy") or {}).get("protocol"))
    _check_rows(run.frame, rows, test, (run.summary or {}).get("test_cases"), empty, unreadable, prompted)


def _check_hash(folder: Path, info: dict, unreadable) -> None:
    try:
        _, recorded = runfolder.read_config(folder, verify=False)
    except runfolder.Unreadable as exc:
        raise unreadable(str(exc)) from None
    if not isinstance(recorded, str) or not recorded:
        raise unreadable("config.yaml: no recorded config_hash")
    try:
        runfolder.read_config(folder)  # the recorded hash is the content's
    except runfolder.Unreadable as exc:
        raise unreadable(str(exc)) from None
    if info.get("config_hash") not in (None, recorded):
        raise unreadable(f"run.json: config hash {info.get('config_hash')} differs from config.yaml's {recorded}")


def _test_patients(folder: Path, unreadable) -> list[str]:
    try:
        split = runfolder.read_json(folder / runfolder.SPLIT)
    except runfolder.Unreadable as exc:
        raise unreadable(str(exc)) from None
    test = split.get("test") if isinstance(split, dict) else None
    if not isinstance(test, list) or not test or not all(isinstance(p, str) for p in test):
        raise unreadable("split.json: no list of test patients")
    return test


def _check_rows(frame: pd.DataFrame, name: str, test: list[str], test_cases, empty: str, unreadable,
                prompted: bool = False) -> None:
    bad_status = sorted(set(frame["status"]) - set(STATUSES))
    if bad_status:
        raise unreadable(f"{name}: status {bad_status[0]!r} is not one the engine writes ({', '.join(STATUSES)})")
    for col in metric_names():
        if np.isinf(frame[col].to_numpy()).any():
            raise unreadable(f"{name}: column {col!r} holds infinite values")
    scored = frame["status"] != "absent"
    for col in [m.name for m in metrics() if m.kind == "overlap"]:
        v = frame.loc[scored, col]
        if v.isna().any() or ((v < 0) | (v > 1)).any():
            raise unreadable(f"{name}: column {col!r} holds values that are missing or outside [0, 1] in scored rows")
    may_be_nan = (frame["status"] == "absent") | ((frame["status"] != "ok") & (empty == "exclude")) | prompted
    for col in distance_names():
        v = frame.loc[~may_be_nan, col]
        if v.isna().any() or (v < 0).any():
            raise unreadable(f"{name}: column {col!r} holds missing or negative distances in scored rows")
    for ckpt, rows in frame.groupby("checkpoint", sort=False):
        where = f"{name} ({ckpt} checkpoint)"
        twice = rows.duplicated(["case_id", "class"])
        if twice.any():
            r = rows[twice].iloc[0]
            raise unreadable(f"{where}: volume {r['case_id']} has two rows for class {r['class']}")
        classes = set(rows["class"])
        per_case = rows.groupby("case_id")["class"].nunique()
        short = per_case[per_case != len(classes)]
        if len(short):
            raise unreadable(f"{where}: volume {short.index[0]} has rows for {short.iloc[0]} of the "
                             f"{len(classes)} classes (a truncated file?)")
        patients = set(rows["patient_id"])
        missing, extra = sorted(set(test) - patients), sorted(patients - set(test))
        if missing:
            raise unreadable(f"{where}: no rows for test patient {missing[0]} of split.json"
                             + (f" ({len(missing)} of {len(set(test))} missing)" if len(missing) > 1 else ""))
        if extra:
            raise unreadable(f"{where}: rows for patient {extra[0]}, who is not in split.json's test list")
        if isinstance(test_cases, int) and len(per_case) != test_cases:
            raise unreadable(f"{where}: rows for {len(per_case)} volumes, summary.json says {test_cases} were tested")
