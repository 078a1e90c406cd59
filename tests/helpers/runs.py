"""Whole runs for the tests: the installed console script, runs killed at a point, results compared."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

import ssbench
from conftest import tiny_args, tiny_request


SCRIPT = Path(sys.executable).parent / "ssbench"
REPO = Path(ssbench.__file__).resolve().parents[1]


def ssbench_cli(*args, extra_path=(), cwd=None):
    """Run the installed ``ssbench`` script; the package under test comes first on the path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *map(str, extra_path), env.get("PYTHONPATH", "")])
    proc = subprocess.run([str(SCRIPT), *map(str, args)], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=300)
    return proc.returncode, proc.stdout, proc.stderr


DRIVER = Path(__file__).parents[1] / "helpers" / "crash_driver.py"
RUN = Path("nnunet") / "supervised" / "2" / "seed1337"


def killed_at(point, root, out, *extra):
    """Run ``ssbench run`` (the tiny run) in a subprocess that SIGKILLs itself at ``point``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, str(DRIVER), point, "run", *tiny_args(root, out, *extra)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == -9, (proc.returncode, proc.stderr[-2000:])


def same_results(run, reference):
    pd.testing.assert_frame_equal(pd.read_csv(run / "metrics_per_case.csv"),
                                  pd.read_csv(reference / "metrics_per_case.csv"))
    a, b = pd.read_csv(run / "train_log.csv"), pd.read_csv(reference / "train_log.csv")
    pd.testing.assert_frame_equal(a.drop(columns="elapsed_s"), b.drop(columns="elapsed_s"))
    sa, sb = (json.loads((r / "summary.json").read_text()) for r in (run, reference))
    assert sa == sb
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.pt", "final.pt"]
    assert not list(run.rglob("*.tmp")) and not (run / "LOCK").exists()
    best = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    assert best["iteration"] == sa["selection"]["best_iteration"]  # the weights are the selected checkpoint's


def interrupted(tiny_nnunet, out, monkeypatch, at=3, sets=()):
    """An interrupted run in-process: the method raises at step ``at`` (the staging folder stays, as after a kill)."""
    from conftest import tiny_request
    from ssbench.engine.run import execute
    from ssbench.methods.supervised import Supervised

    original = Supervised.training_step

    def step(self, labeled, unlabeled, info):
        if info.iteration == at:
            raise KeyboardInterrupt
        return original(self, labeled, unlabeled, info)

    with monkeypatch.context() as m:
        m.setattr(Supervised, "training_step", step)
        with pytest.raises(KeyboardInterrupt):
            execute(tiny_request(tiny_nnunet, out, sets=sets))
    return out / RUN.with_name(".seed1337.incomplete")
