"""The benchmarks' cached runs (benchmarks/cached_runs.py): a run in the results folder is reused only when its
recorded config hash is the requested one; one of other settings stops the benchmark naming the difference, or is
replaced on request; the figures name the settings the runs recorded and the machine."""

import sys
from pathlib import Path

import pytest

from conftest import tiny_request

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import cached_runs  # noqa: E402


def test_cached_runs_are_reused_only_with_the_requested_config(tiny_nnunet, tmp_path, monkeypatch):
    calls = []
    original = cached_runs.execute
    monkeypatch.setattr(cached_runs, "execute", lambda req: (calls.append(req.iters), original(req))[1])
    lines = []
    first = cached_runs.cached_or_run(tiny_request(tiny_nnunet, tmp_path, iters=2), say=lines.append)
    assert calls == [2] and "(2 iterations)" in lines[0] and "threads of" in lines[0]
    assert cached_runs.cached_or_run(tiny_request(tiny_nnunet, tmp_path, iters=2)) == first and calls == [2]
    with pytest.raises(SystemExit) as stop:  # the same folder, another length: never counted as the requested one
        cached_runs.cached_or_run(tiny_request(tiny_nnunet, tmp_path, iters=3))
    assert "a run with other settings is there (train.iters: 2 -> 3)" in str(stop.value) and calls == [2]
    again = cached_runs.cached_or_run(tiny_request(tiny_nnunet, tmp_path, iters=3), rerun_stale=True)
    assert again == first and calls == [2, 3] and cached_runs.recorded(again)["train"]["iters"] == 3
    text = cached_runs.describe([again])
    assert text[0].startswith("nnunet (real data); recorded by the 1 runs: 3 iterations, recipe published, "
                              "batch labeled/unlabeled (2, 2), input size 32")
    assert text[1].startswith("trained on ") and "torch " in text[1] and "summarised on " in text[1]
