"""Paired significance tests: Wilcoxon signed-rank (scipy.stats), Holm's step-down correction, bootstrap CIs."""

from __future__ import annotations

import numpy as np
from scipy import stats


def wilcoxon_p(a, b) -> float:
    """Two-sided paired Wilcoxon signed-rank p-value; 1.0 when every difference is zero."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if np.allclose(a, b):
        return 1.0
    return float(stats.wilcoxon(a, b, alternative="two-sided").pvalue)


def holm(pvalues) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (monotone, capped at 1), in the input order."""
    p = np.asarray(pvalues, float)
    m = len(p)
    order = np.argsort(p)
    adjusted = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, (m - rank) * p[i])
        adjusted[i] = min(running, 1.0)
    return adjusted


def bootstrap_ci(diff, n_boot: int = 10_000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of paired differences (resampling cases)."""
    diff = np.asarray(diff, float)
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), size=(n_boot, len(diff)))].mean(axis=1)
    lo, hi = np.percentile(means, [(1 - level) / 2 * 100, (1 + level) / 2 * 100])
    return float(lo), float(hi)
