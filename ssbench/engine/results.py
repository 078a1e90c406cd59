"""Per-case metric rows -> the summary numbers, the same way for runs, re-evaluations and tables."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ssbench.metrics.catalog import distance_names, metric_names


def summarize(frame: pd.DataFrame) -> dict:
    """Per checkpoint: per-class means over cases (absent pairs excluded, NaN distances excluded and counted),
    then the mean over classes, as the literature averages."""
    out = {}
    names = metric_names()
    for ckpt, rows in frame.groupby("checkpoint", sort=False):
        per_class = {}
        for cls, g in rows.groupby("class", sort=False):
            counted = g[g["status"] != "absent"]
            entry = {m: _mean(counted[m]) for m in names}
            entry["n_cases"] = int(len(counted))
            entry["status_counts"] = {k: int(v) for k, v in g["status"].value_counts().items()}
            entry["n_nan_distances"] = int(counted[distance_names()].isna().any(axis=1).sum())
            per_class[cls] = entry
        mean = {m: _mean(pd.Series([c[m] for c in per_class.values()])) for m in names}
        out[ckpt] = {"per_class": per_class, "mean": mean}
    return out


def _mean(series: pd.Series) -> float | None:
    values = pd.to_numeric(series, errors="coerce").dropna()
    return None if values.empty else float(np.mean(values))
