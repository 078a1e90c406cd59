"""The metric list (ssbench.metrics.catalog) is the one place a metric is declared: a metric added there reaches the
per-case rows, the run summary, the CLI summary, the table reader and the tables; an output without a listed metric
is refused."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from conftest import tiny_args
from report_runs import build_tables
from ssbench.metrics import catalog
from ssbench.metrics.catalog import Metric


def _precision(p, r, d) -> float:
    return float((p & r).sum() / p.sum())


PRECISION = Metric("precision", "Precision %", "overlap", +1, _precision)


@pytest.fixture
def with_precision(monkeypatch):
    """The list with one metric more: this entry (and its function) is all a new metric needs."""
    monkeypatch.setattr(catalog, "METRICS", catalog.METRICS + (PRECISION,))


def test_a_metric_added_to_the_list_reaches_every_output(with_precision, cli, tiny_nnunet, tmp_path):
    out = tmp_path / "results"
    code, stdout, err = cli("run", *tiny_args(tiny_nnunet, out))
    assert code == 0, err
    run = next(out.rglob("run.json")).parent
    frame = pd.read_csv(run / "metrics_per_case.csv")
    ok = frame[frame.status == "ok"]
    assert "precision" in frame.columns and len(ok) and ok["precision"].between(0, 1).all()
    missed = frame[frame.status == "missed"]
    assert (missed["precision"] == 0).all()  # an overlap metric scores an empty prediction 0
    summary = json.loads((run / "summary.json").read_text())
    for block in summary["checkpoints"].values():
        assert "precision" in block["mean"] and all("precision" in c for c in block["per_class"].values())
    assert "Precision %" in stdout  # the CLI's summary table

    build_tables(out, tmp_path / "paper")
    main = next((tmp_path / "paper").glob("main_*.csv"))
    assert "precision" in set(pd.read_csv(main)["metric"])
    assert "Precision % ↑" in next((tmp_path / "paper").glob("main_*.md")).read_text()


def test_a_per_case_file_without_a_listed_metric_is_refused(with_precision, tmp_path):
    from report_runs import write_run
    from ssbench.report.collect import collect

    # written before the metric was listed: its rows lack the column
    with pytest.MonkeyPatch.context() as m:
        m.setattr(catalog, "METRICS", catalog.METRICS[:4])
        write_run(tmp_path, "supervised", "3", 1)
    runs, skipped = collect(tmp_path)
    assert not runs and "metrics_per_case.csv: missing column 'precision'" in skipped[0].reason


def test_the_list_decides_what_an_empty_mask_scores():
    from ssbench.metrics.evaluation import MetricPolicy, evaluate_case

    ref = np.zeros((2, 8, 8), np.uint8)
    ref[0, 2:5, 2:5] = 1
    pred = np.zeros_like(ref)
    diagonal = float(np.sqrt(2 ** 2 + 8 ** 2 + 8 ** 2))
    for empty, distance in (("worst", diagonal), ("legacy-zero", 0.0)):
        row = evaluate_case(pred, ref, [1], (1.0, 1.0, 1.0), MetricPolicy(empty=empty), "voxel")[0]
        assert row["status"] == "missed"
        for m in catalog.metrics():
            assert row[m.name] == (0.0 if m.kind == "overlap" else pytest.approx(distance)), m.name
    row = evaluate_case(pred, ref, [1], (1.0, 1.0, 1.0), MetricPolicy(empty="exclude"), "voxel")[0]
    assert all(np.isnan(row[m.name]) for m in catalog.metrics() if m.kind == "distance")
