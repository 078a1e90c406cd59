"""Paired significance tests: Wilcoxon signed-rank (scipy.stats), Holm's step-down correction, cluster bootstrap CIs.

Every p-value is scipy's. The p-value method is chosen with the rule scipy documents for ``method='auto'`` and
passed explicitly, so that the significance file can say which one ran: exact null distribution (n <= 50, no ties
or zero differences), every sign flip (n <= 13 with ties or zeros), else the normal approximation (tie-corrected,
no continuity correction). Zero differences are dropped (zero_method 'wilcox', scipy's default); only when every
difference is zero, where that rule leaves nothing to rank, is 'zsplit' used (p = 1), and recorded.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy
from scipy import stats


@dataclass(frozen=True)
class Wilcoxon:
    p: float
    method: str  # 'exact', 'permutation (all 2^n sign flips)' or 'asymptotic (normal approximation, ...)'
    zero_method: str
    n: int  # pairs
    n_nonzero: int
    direction: int  # +1: a ranks above b (positive differences carry more rank), -1 below, 0 balanced

    @property
    def described(self) -> str:
        return f"scipy {scipy.__version__} wilcoxon, {self.method}, zero_method={self.zero_method}"


def _method(d: np.ndarray):
    """scipy's documented 'auto' rule, made explicit."""
    nonzero = d[d != 0]
    ties = len(np.unique(np.abs(nonzero))) < len(nonzero)
    if len(d) > 50:
        return "asymptotic", "asymptotic (normal approximation, tie-corrected)"
    if not ties and len(nonzero) == len(d):
        return "exact", "exact"
    if len(d) <= 13:
        return stats.PermutationMethod(), "permutation (all 2^n sign flips)"
    return "asymptotic", "asymptotic (normal approximation, tie-corrected)"


def wilcoxon(a, b) -> Wilcoxon:
    """Two-sided paired Wilcoxon signed-rank test of ``a - b`` (no shortcut: tiny one-signed differences are
    tested like any others)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    d = a - b
    if len(d) == 0:
        raise ValueError("wilcoxon: no pairs")
    nonzero = int(np.count_nonzero(d))
    zero_method = "wilcox" if nonzero else "zsplit"
    method, text = _method(d)
    res = stats.wilcoxon(a, b, zero_method=zero_method, alternative="two-sided", method=method)
    if nonzero:
        r_plus = float(stats.wilcoxon(a, b, zero_method=zero_method, alternative="greater", method="asymptotic")
                       .statistic)
        half = nonzero * (nonzero + 1) / 4  # half the total rank sum of the non-zero differences
        direction = int(np.sign(round(r_plus - half, 9)))
    else:
        direction = 0
    return Wilcoxon(float(res.pvalue), text, zero_method, len(d), nonzero, direction)


def smallest_p(n_nonzero: int) -> float:
    """The smallest two-sided p the test can give on ``n_nonzero`` non-zero differences (every difference of one
    sign, by scipy's method for that n): 2 / 2^n where the null distribution is exact. Below alpha it must be, times
    the Holm factor, for any mark to be possible."""
    if n_nonzero < 1:
        return 1.0
    d = np.arange(1, n_nonzero + 1, dtype=float)
    method, _ = _method(d)
    return float(stats.wilcoxon(d, np.zeros(n_nonzero), alternative="two-sided", method=method).pvalue)


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


N_BOOT = 10_000


def cluster_bootstrap_ci(values, clusters, n_boot: int = N_BOOT, seed: int = 0,
                         level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of ``values`` resampling whole clusters (a patient's ED and ES volumes
    together): each resample draws as many patients as there are, with replacement, and averages all their
    volumes. With one value per cluster this is the ordinary bootstrap of the mean."""
    values = np.asarray(values, float)
    codes, _ = _factorize(clusters)
    k = int(codes.max()) + 1
    sums = np.bincount(codes, weights=values, minlength=k)
    counts = np.bincount(codes, minlength=k).astype(float)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, k, size=(n_boot, k))
    means = sums[draws].sum(axis=1) / counts[draws].sum(axis=1)
    lo, hi = np.percentile(means, [(1 - level) / 2 * 100, (1 + level) / 2 * 100])
    return float(lo), float(hi)


def _factorize(labels) -> tuple[np.ndarray, np.ndarray]:
    uniques, codes = np.unique(np.asarray(labels, dtype=object).astype(str), return_inverse=True)
    return codes.ravel(), uniques
