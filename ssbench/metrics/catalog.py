"""The metric list: the one place that says which metrics a run reports and how each is named, scaled, ranked and
scored on an empty mask. Evaluation, the run summary, the table reader, the tables, the reproduction gap and the
CLI summary all read it, so a new metric is its function (``ssbench/metrics/__init__.py``) plus one entry here.

Kinds:
  overlap   a fraction in [0, 1] (shown ×100 as %); a missed or hallucinated structure scores 0 under every policy.
  distance  in the run's HD units (mm or voxels); a missed or hallucinated structure scores what the empty-mask
            policy says (``worst``: the volume diagonal; ``exclude``: NaN; ``legacy-zero``: 0).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import numpy as np

from ssbench.metrics import asd_from, dice, hd95_from, jaccard


@dataclass(frozen=True)
class Metric:
    name: str  # the column of metrics_per_case.csv and the key of summary.json
    label: str  # how tables and the CLI head it ("Dice %", "95HD"); a distance's units are added where shown
    kind: Literal["overlap", "distance"]
    direction: int  # +1: higher is better; -1: lower is better
    # (prediction mask, reference mask, surface distances or None) -> value, for two non-empty masks; the surface
    # distances are computed once per (case, class) for every distance metric.
    compute: Callable[[np.ndarray, np.ndarray, object], float]
    per_class: bool = False  # also a column of the per-class tables and the SSS ablation

    @property
    def scale(self) -> float:
        """Shown as value × scale (a fraction as %)."""
        return 100.0 if self.kind == "overlap" else 1.0

    def empty_value(self, empty_policy: str, diagonal: float) -> float:
        """The score of a missed or hallucinated structure under ``empty_policy``."""
        if self.kind == "overlap":
            return 0.0
        return {"worst": diagonal, "exclude": float("nan"), "legacy-zero": 0.0}[empty_policy]

    def header(self, units: str) -> str:
        """'Dice %', '95HD (mm)'."""
        return self.label if self.kind == "overlap" else f"{self.label} ({units})"


METRICS: tuple[Metric, ...] = (
    Metric("dice", "Dice %", "overlap", +1, lambda p, r, d: dice(p, r), per_class=True),
    Metric("jaccard", "Jaccard %", "overlap", +1, lambda p, r, d: jaccard(p, r)),
    Metric("hd95", "95HD", "distance", -1, lambda p, r, d: hd95_from(d), per_class=True),
    Metric("asd", "ASD", "distance", -1, lambda p, r, d: asd_from(d)),
)


def metrics() -> tuple[Metric, ...]:
    """The listed metrics, in the order tables show them (read at call time, so that a test may add one)."""
    return METRICS


def metric_names() -> list[str]:
    return [m.name for m in metrics()]


def metric(name: str) -> Metric:
    for m in metrics():
        if m.name == name:
            return m
    raise KeyError(f"no metric {name!r} (listed: {', '.join(metric_names())})")


def per_class_metrics() -> tuple[Metric, ...]:
    return tuple(m for m in metrics() if m.per_class)


def distance_names() -> list[str]:
    return [m.name for m in metrics() if m.kind == "distance"]
