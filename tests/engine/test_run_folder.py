"""A real run's folder against its spec (docs/run-folder.md) and the one definition of "complete"
(ssbench.runfolder.is_complete) that publication, resume, the sweep, eval and the tables share."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pandas as pd

from ssbench import runfolder
from ssbench.metrics.catalog import metric_names

SPEC = Path(__file__).parents[2] / "docs" / "run-folder.md"


def _spec_keys(heading: str) -> set[str]:
    """The backticked names in the first column of the table under ``### `heading` ``."""
    text = SPEC.read_text()
    section = text.split(f"### `{heading}`", 1)[1].split("\n### ", 1)[0]
    keys = set()
    for line in section.splitlines():
        if line.startswith("| `"):
            keys |= set(re.findall(r"`([^`]+)`", line.split("|")[1]))
    return keys


def test_a_run_folder_holds_what_its_spec_says(tiny_run):
    assert runfolder.is_complete(tiny_run)
    assert not runfolder.staging_of(tiny_run).exists() and not list(tiny_run.parent.glob(".*"))
    info = json.loads((tiny_run / runfolder.RUN_INFO).read_text())
    assert _spec_keys("run.json") - {"stages"} <= set(info)  # 'stages' only for a method with several
    assert info["status"] == "complete"
    cfg = runfolder.read_config(tiny_run)[0]  # verified: the recorded hash is the content's
    assert _spec_keys("config.yaml") - {"config_hash", "<dataset>", "<method>"} <= set(cfg)
    columns = set(pd.read_csv(tiny_run / runfolder.CASES).columns)
    assert _spec_keys("metrics_per_case.csv") <= columns and set(metric_names()) <= columns
    for name in ("best", "final"):
        assert runfolder.checkpoint_path(tiny_run, name).is_file()
        assert runfolder.predictions_path(tiny_run, name).is_file()
    assert not runfolder.checkpoint_path(tiny_run, "last").exists()  # the resume state goes at publication


def test_complete_means_status_complete_and_every_result_file(tiny_run, tmp_path):
    from ssbench.report.collect import collect

    for name in (runfolder.CONFIG, runfolder.SPLIT, runfolder.SUMMARY, runfolder.CASES, runfolder.RUN_INFO):
        run = Path(shutil.copytree(tiny_run, tmp_path / name / "d" / "m" / "2" / "seed1"))
        (run / name).unlink()
        assert not runfolder.is_complete(run), name
        runs, skipped = collect(tmp_path / name)
        assert not runs, name
    run = Path(shutil.copytree(tiny_run, tmp_path / "running" / "d" / "m" / "2" / "seed1"))
    info = json.loads((run / runfolder.RUN_INFO).read_text())
    (run / runfolder.RUN_INFO).write_text(json.dumps({**info, "status": "running"}))
    assert not runfolder.is_complete(run)
    assert not collect(tmp_path / "running")[0]


def test_readers_ignore_hidden_folders(tiny_run, tmp_path):
    from ssbench.report.collect import collect

    shutil.copytree(tiny_run, tmp_path / "acdc" / "m" / "2" / "seed1")
    shutil.copytree(tiny_run, tmp_path / ".backup" / "acdc" / "m" / "2" / "seed2")
    runs, skipped = collect(tmp_path)
    assert len(runs) == 1 and ".backup" not in str(runs[0].path)
    assert not any(".backup" in str(s.path) for s in skipped)  # ignored, as the README says
