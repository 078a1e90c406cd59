"""On CPU a run is a pure function of its config and seed: the same per-case metrics and losses twice, for every
UNet method; ``--deterministic`` is recorded, switches torch's deterministic mode on for the run only, and on CPU
changes no number."""

import json

import pandas as pd
import pytest
import torch
import yaml

from conftest import tiny_request
from ssbench.engine.run import execute

METHODS = {
    "supervised": (),
    "mean-teacher": ("mean-teacher.consistency_start=0",),  # the consistency term from the first step
    "unimatch": (),
    "fixmatch": (),
}


def _frames(run):
    log = pd.read_csv(run / "train_log.csv").drop(columns="elapsed_s")
    return pd.read_csv(run / "metrics_per_case.csv"), log


@pytest.mark.parametrize("method", [m if m == "supervised" else pytest.param(m, marks=pytest.mark.slow)
                                    for m in METHODS])
def test_same_config_and_seed_give_identical_numbers(tiny_nnunet, tmp_path, method):
    runs = [execute(tiny_request(tiny_nnunet, tmp_path / name, method, METHODS[method])) for name in ("a", "b")]
    (metrics_a, log_a), (metrics_b, log_b) = (_frames(r) for r in runs)
    pd.testing.assert_frame_equal(metrics_a, metrics_b)
    pd.testing.assert_frame_equal(log_a, log_b)
    assert log_a["loss"].notna().all() and metrics_a["hd95"].notna().any()
    if method == "mean-teacher":
        assert (log_a["cons_weight"] > 0).any()
    # and a different seed does change them (the comparison can fail)
    other = execute(tiny_request(tiny_nnunet, tmp_path / "c", method, METHODS[method], seed=7))
    assert not _frames(other)[1]["loss"].equals(log_a["loss"])


def test_deterministic_flag_is_recorded_scoped_and_changes_nothing_on_cpu(cli, tiny_nnunet, tiny_run, tmp_path,
                                                                          monkeypatch):
    from conftest import tiny_args
    from ssbench.methods.supervised import Supervised

    seen = []
    original = Supervised.training_step

    def step(self, labeled, unlabeled, info):
        seen.append((torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark))
        return original(self, labeled, unlabeled, info)

    monkeypatch.setattr(Supervised, "training_step", step)
    before = torch.are_deterministic_algorithms_enabled()
    code, _, err = cli("run", *tiny_args(tiny_nnunet, tmp_path, "--deterministic"))
    assert code == 0, err
    assert seen and all(s == (True, False) for s in seen)  # during the run ...
    assert torch.are_deterministic_algorithms_enabled() == before  # ... and only then
    run = tmp_path / "nnunet" / "supervised" / "2" / "seed1337"
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["train"]["deterministic"] is True
    info = json.loads((run / "run.json").read_text())
    assert info["deterministic_ops_warned"] == [] and info["config_hash"] == cfg["config_hash"]
    assert cfg["config_hash"] != yaml.safe_load((tiny_run / "config.yaml").read_text())["config_hash"]
    pd.testing.assert_frame_equal(pd.read_csv(run / "metrics_per_case.csv"),
                                  pd.read_csv(tiny_run / "metrics_per_case.csv"))
