"""Per-case, per-class evaluation under an explicit, recorded metric policy.

Status of a (case, class) pair:
  ok              both masks non-empty: medpy semantics
  missed          the reference has the class, the prediction is empty
  false_positive  the prediction has the class, the reference does not
  absent          neither has it: no number (NaN), excluded from every mean and counted instead

Empty-mask policies (``empty``), for ``missed`` and ``false_positive``:
  worst        Dice = Jaccard = 0; HD95 = ASD = the volume's diagonal (the largest distance possible in it).
               The default: an empty prediction is never rewarded and every case keeps a finite number.
  exclude      Dice = Jaccard = 0; HD95 = ASD = NaN, left out of distance means (MONAI's behaviour, which makes a
               missed structure improve the mean distance: for comparisons only).
  legacy-zero  everything 0, as the BCP/ABD test scripts do (HD95 = 0 is the best score): for reproducing them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from ssbench.metrics import surface_distances

STATUSES = ("ok", "missed", "false_positive", "absent")


@dataclass(frozen=True)
class MetricPolicy:
    empty: Literal["worst", "exclude", "legacy-zero"] = "worst"  # scores of a missed or hallucinated structure
    # 'auto' resolves to mm where the data keep spacing and to voxels where they do not (h5 layout).
    hd_units: Literal["auto", "mm", "voxel"] = "auto"  # HD95/ASD units: mm where spacing is known, else voxels
    connectivity: Literal[1, 2, 3] = 1  # surface neighbourhood of the 3-D masks (medpy's default: 1)
    # Named protocols (PROTOCOLS) the test predictions are scored under as well, into evals/<empty>-<units>/ of
    # the run: the published numbers' own protocol beside the benchmark's (the main numbers are not changed).
    # medsam2 (engine/prompted_eval.py): predicts again with ground-truth prompts, methods that take them (sss)
    also_protocols: tuple[Literal["bcp", "medsam2"], ...] = ()  # also score the test predictions under these


# The literature's metric protocols, by name: `ssbench eval RUN --protocol NAME`, `eval.also_protocols`.
PROTOCOLS = {
    "bcp": (MetricPolicy(empty="legacy-zero", hd_units="voxel", connectivity=1),
            "BCP's code/test_ACDC.py (reused by ABD and AD-MT): medpy per class and volume, HD95/ASD in voxels, a "
            "class with an empty prediction scores 0 on all four metrics; best checkpoint on val"),
}


def protocol_policy(name: str, base: MetricPolicy | None = None) -> MetricPolicy:
    """``base`` (default: the benchmark's policy) with the named protocol's empty policy, units and connectivity."""
    import dataclasses

    policy = PROTOCOLS[name][0]
    return dataclasses.replace(base or MetricPolicy(), empty=policy.empty, hd_units=policy.hd_units,
                               connectivity=policy.connectivity)


def evaluate_case(
    pred: np.ndarray, ref: np.ndarray, class_ids, spacing, policy: MetricPolicy, hd_units: str
) -> list[dict]:
    """One row per foreground class: status and every listed metric (``ssbench.metrics.catalog``). ``hd_units`` is
    'mm' or 'voxel'."""
    from ssbench.metrics.catalog import metrics

    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} != reference shape {ref.shape}")
    sampling = tuple(spacing) if hd_units == "mm" else (1.0,) * ref.ndim
    diagonal = float(np.sqrt(sum((n * s) ** 2 for n, s in zip(ref.shape, sampling))))
    listed = metrics()
    needs_surfaces = any(m.kind == "distance" for m in listed)
    rows = []
    for c in class_ids:
        p, r = pred == c, ref == c
        has_p, has_r = bool(p.any()), bool(r.any())
        row = {"class_id": int(c)}
        if has_p and has_r:
            d = surface_distances(p, r, sampling, policy.connectivity) if needs_surfaces else None
            row.update(status="ok", **{m.name: m.compute(p, r, d) for m in listed})
        elif not has_p and not has_r:
            row.update(status="absent", **{m.name: np.nan for m in listed})
        else:
            row.update(status="missed" if has_r else "false_positive",
                       **{m.name: m.empty_value(policy.empty, diagonal) for m in listed})
        rows.append(row)
    return rows
