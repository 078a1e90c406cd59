"""What a run records about how it was made (run.json), what ``--deterministic`` sets, what ``ssbench eval`` leaves
alone, and the README's first command falling back to a randomly initialised SAM-2 loudly."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from importlib.metadata import version

import pytest
import torch

from conftest import tiny_request
from runs import REPO


def _git(*args) -> str | None:
    proc = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else None


def test_run_json_records_versions_commit_threads_and_execution(tiny_run):
    info = json.loads((tiny_run / "run.json").read_text())
    head = _git("rev-parse", "--verify", "-q", "HEAD")
    assert info["git_commit"] == head  # None outside a git checkout (e.g. an installed wheel)
    if head:
        assert info["git_dirty"] is bool(_git("status", "--porcelain", "--untracked-files=no"))
    assert info["torch_threads"] == torch.get_num_threads()
    assert info["versions"]["torch"] == version("torch") and info["versions"]["numpy"] == version("numpy")
    assert info["python"] == ".".join(map(str, sys.version_info[:3]))
    execution = info["execution"]
    assert execution["device"] == "cpu" and execution["amp"] is False and execution["channels_last"] is False
    assert execution["augment_on_device"] is False and execution["rank"] == 0 and execution["world"] == 1
    assert info["world_size"] == 1 and info["device"] == "cpu"
    assert info["method_source"]["distribution"] == "ssbench"
    assert info["schedule"] == {"epoch_pool": "labeled", "epoch_pool_slices": 8, "iters_per_epoch": 4}


def test_the_recorded_thread_count_is_the_one_at_run_time(monkeypatch):
    from ssbench.engine.record import provenance

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        assert provenance()["torch_threads"] == 3
        torch.set_num_threads(1)
        assert provenance()["torch_threads"] == 1
    finally:
        torch.set_num_threads(before)
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: (_ for _ in ()).throw(OSError("no git")))
    assert provenance()["git_commit"] is None and provenance()["git_dirty"] is None


@pytest.mark.parametrize("preset", [None, ":16:8"])
def test_deterministic_sets_the_cublas_workspace_unless_set(preset, monkeypatch):
    from ssbench.engine.train import deterministic_algorithms

    if preset is None:
        monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    else:
        monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", preset)
    with deterministic_algorithms(True):
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == (preset or ":4096:8")
        assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
        assert not torch.backends.cudnn.benchmark and torch.backends.cudnn.deterministic
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    with deterministic_algorithms(False):
        assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ  # off: nothing set


def test_eval_leaves_every_file_of_the_run_as_it_was(cli, tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in run.rglob("*") if p.is_file()}
    code, _, err = cli("eval", run, "--empty-policy", "legacy-zero", "--hd-units", "voxel", "--device", "cpu")
    assert code == 0, err
    after = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in run.rglob("*") if p.is_file()}
    added = sorted(str(p.relative_to(run)) for p in set(after) - set(before))
    assert added == ["evals/legacy-zero-voxel/metrics_per_case.csv", "evals/legacy-zero-voxel/summary.json"]
    assert {p: after[p] for p in before} == before


def test_a_methods_warnings_are_recorded_in_run_json(tiny_nnunet, tmp_path, monkeypatch):
    from ssbench.engine.run import execute
    from ssbench.methods.supervised import Supervised

    original = Supervised.__init__

    def init(self, config, ctx):
        original(self, config, ctx)
        self.warnings.append("a loud warning from the method")

    monkeypatch.setattr(Supervised, "__init__", init)
    run = execute(tiny_request(tiny_nnunet, tmp_path, iters=2))
    assert json.loads((run / "run.json").read_text())["warnings"][0] == "a loud warning from the method"


def test_the_readme_command_falls_back_to_a_random_sam2_loudly(tmp_path, monkeypatch):
    """`ssbench run --method sss --split 10%` on the embedded default without SAM-2 weights in the cache: randomly
    initialised, with a warning the run records, and no download attempted. (The embedded ACDC phantom is stood in
    for by a small folder in the same format: only its being the embedded default matters here.)"""
    from formats import write_acdc_raw
    from ssbench.datasets import synthetic
    from ssbench.datasets.acdc import ACDC
    from ssbench.engine.plan import RunRequest, build_config
    from ssbench.engine.run import build_method
    from ssbench.methods.sss import sam2_net

    split = ACDC.frozen_split("10%")
    small = write_acdc_raw(tmp_path / "acdc", list(split.labeled + split.val + split.test))
    monkeypatch.setattr(synthetic, "embedded", lambda name: small)
    monkeypatch.setenv("SSBENCH_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(sam2_net, "fetch_official", lambda *a, **k: pytest.fail("tried to download SAM-2"))
    cfg, cls, dataset = build_config(RunRequest(method="sss", split="10%"))
    # the fallback is recorded as what it is: init=random (its own hash and folder), never "pretrained"
    assert cfg.data.synthetic and cfg.train.recipe == "cpu-small" and cfg.method_config.init == "random"
    assert cfg.variant == "init=random"
    method = build_method(cfg, cls, dataset, torch.device("cpu"))
    (warning,) = method.warnings
    assert "randomly initialised" in warning and "sam2.1_hiera_t" in warning
    assert str(tmp_path / "empty-cache" / "sam2") in warning
