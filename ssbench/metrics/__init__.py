"""Segmentation metrics with medpy 0.5's semantics on non-empty masks, and an explicit empty-mask policy.

The plain functions (``dice``, ``jaccard``, ``hd95``, ``asd``, ``assd``) take boolean arrays and raise on the
cases medpy raises on. ``ssbench.metrics.evaluation`` applies a named policy to empty masks and absent classes.
"""

from __future__ import annotations

import numpy as np

from ssbench.metrics.surface import SurfaceDistances, surface_distances


def _pair(pred, ref):
    pred = np.asarray(pred, dtype=bool)
    ref = np.asarray(ref, dtype=bool)
    if pred.shape != ref.shape:
        raise ValueError(f"shape mismatch: prediction {pred.shape} vs reference {ref.shape}")
    return pred, ref


def dice(pred, ref) -> float:
    """2|A∩B| / (|A| + |B|). Both empty is undefined: ValueError (decide with a policy, not here)."""
    pred, ref = _pair(pred, ref)
    total = int(pred.sum()) + int(ref.sum())
    if total == 0:
        raise ValueError("Dice of two empty masks is undefined")
    return 2.0 * int(np.logical_and(pred, ref).sum()) / total


def jaccard(pred, ref) -> float:
    """|A∩B| / |A∪B|. Both empty is undefined: ValueError."""
    pred, ref = _pair(pred, ref)
    union = int(np.logical_or(pred, ref).sum())
    if union == 0:
        raise ValueError("Jaccard of two empty masks is undefined")
    return int(np.logical_and(pred, ref).sum()) / union


def hd95_from(d: SurfaceDistances) -> float:
    """medpy's hd95: the 95th percentile (linear interpolation) of both directed distance sets pooled."""
    return float(np.percentile(np.concatenate([d.pred_to_ref, d.ref_to_pred]), 95))


def asd_from(d: SurfaceDistances) -> float:
    """medpy's asd: mean distance from the prediction's surface to the reference's (one direction)."""
    return float(d.pred_to_ref.mean())


def assd_from(d: SurfaceDistances) -> float:
    """medpy 0.5's assd: the mean of both directed distance sets pooled (not the mean of the two means,
    which medpy 0.4 computed; the two differ when the surfaces have different sizes)."""
    return float(np.concatenate([d.pred_to_ref, d.ref_to_pred]).mean())


def hd95(pred, ref, spacing=None, connectivity: int = 1) -> float:
    return hd95_from(surface_distances(pred, ref, spacing, connectivity))


def asd(pred, ref, spacing=None, connectivity: int = 1) -> float:
    return asd_from(surface_distances(pred, ref, spacing, connectivity))


def assd(pred, ref, spacing=None, connectivity: int = 1) -> float:
    return assd_from(surface_distances(pred, ref, spacing, connectivity))


__all__ = ["dice", "jaccard", "hd95", "asd", "assd", "surface_distances", "SurfaceDistances"]
