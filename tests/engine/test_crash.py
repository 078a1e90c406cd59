"""Crashes and interrupted runs: a run killed with SIGKILL during training, evaluation or the writing of its results
leaves nothing that looks complete, and ``--resume`` ends, on CPU, with the numbers of an uninterrupted run.
Resume refuses another config, restarts cleanly before the first checkpoint; ``--overwrite`` removes the old run
only once the new one is complete; stale locks are taken over; a non-finite loss stops the run."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import tiny_args
from runs import REPO
from runs import DRIVER, RUN, killed_at, same_results, interrupted as _interrupted


def nothing_looks_complete(out):
    """No visible run folder; every run.json under ``out`` sits in a hidden '.incomplete' folder."""
    assert not (out / RUN).exists()
    for info in out.rglob("run.json"):
        assert info.parent.name.startswith(".") and info.parent.name.endswith(".incomplete"), info


# point -> the 0-based training steps the resume runs (checkpoints at 2 and 4; 6 steps in all)
KILLS = {
    "train:3": [2, 3, 4, 5],  # after the checkpoint at iteration 2: resumes from it
    "train:1": [0, 1, 2, 3, 4, 5],  # before the first checkpoint: starts again from 0
    "train:5": [4, 5],  # after the last checkpoint (4) and a validation at 4
    "evaluate": [4, 5],  # training done, the best checkpoint evaluated: trains from 4 again, evaluates both
    "write:summary.json": [4, 5],
    "write:run.json:2": [4, 5],  # the 'complete' record, not yet renamed into place: not finished
    "publish": [],  # everything written, the folder not yet renamed into place: published as it is
}


@pytest.mark.slow  # subprocesses killed with SIGKILL; the everyday loop resumes in-process (tests/engine/test_resume.py)
@pytest.mark.parametrize("point", KILLS)
def test_kill_9_then_resume_matches_an_uninterrupted_run(cli, tiny_nnunet, tiny_run, tmp_path, point, monkeypatch):
    from ssbench.methods.supervised import Supervised

    out = tmp_path / "results"
    killed_at(point, tiny_nnunet, out)
    nothing_looks_complete(out)
    staging = out / RUN.with_name(".seed1337.incomplete")
    assert staging.is_dir()
    record = (staging / "run.json").read_bytes()
    steps, original = [], Supervised.training_step
    monkeypatch.setattr(Supervised, "training_step",
                        lambda self, lab, unl, info: (steps.append(info.iteration), original(self, lab, unl, info))[1])
    code, _, err = cli("run", *tiny_args(tiny_nnunet, out, "--resume"))
    assert code == 0, err
    assert steps == KILLS[point]
    same_results(out / RUN, tiny_run)
    assert not staging.exists()
    # TensorBoard: each step once, with train_log.csv's values (rows after the checkpoint on disk are logged again)
    from test_tracking import assert_events_match_log, tb_events

    seen = [(e.step, v.tag) for e in tb_events(out / RUN / "tensorboard") for v in e.summary.value]
    assert seen and len(seen) == len(set(seen))
    assert_events_match_log(out / RUN)
    if point == "publish":  # the record written before the kill, start and end times included
        assert (out / RUN / "run.json").read_bytes() == record


@pytest.mark.slow
def test_kill_9_while_replacing_a_run_keeps_the_old_one_until_the_new_one_is_complete(cli, tiny_nnunet, tiny_run,
                                                                                      tmp_path):
    out = tmp_path / "results"
    shutil.copytree(tiny_run, out / RUN)
    (out / RUN / "OLD").write_text("the run being replaced")
    killed_at("evaluate", tiny_nnunet, out, "--overwrite")
    assert (out / RUN / "OLD").is_file()  # the new run did not complete: the old one is in place, untouched
    assert json.loads((out / RUN / "run.json").read_text())["status"] == "complete"
    killed_at("publish", tiny_nnunet, out, "--overwrite", "--resume")  # the new run completes, dies publishing
    aside = list((out / RUN.parent).glob(".seed1337.replaced-*.incomplete"))
    assert len(aside) == 1 and (aside[0] / "OLD").is_file()  # moved aside, not yet deleted
    nothing_looks_complete(out)
    code, _, err = cli("run", *tiny_args(tiny_nnunet, out, "--resume"))
    assert code == 0, err
    same_results(out / RUN, tiny_run)
    assert not (out / RUN / "OLD").exists() and sorted(p.name for p in (out / RUN.parent).iterdir()) == ["seed1337"]


def test_resume_with_another_config_is_refused(cli, tiny_nnunet, tmp_path, monkeypatch):
    out = tmp_path / "results"
    staging = _interrupted(tiny_nnunet, out, monkeypatch)
    before = {p: p.read_bytes() for p in staging.rglob("*") if p.is_file()}
    code, _, err = cli("run", *tiny_args(tiny_nnunet, out, "--resume", "--iters", "8", "--set", "train.lr=0.02"))
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "--resume: the interrupted run in" in err
    assert "train.iters: 6 -> 8" in err and "train.lr: 0.01 -> 0.02" in err
    assert {p: p.read_bytes() for p in staging.rglob("*") if p.is_file()} == before  # untouched
    assert not (staging / "LOCK").exists()


@pytest.mark.slow
def test_overwrite_replaces_only_after_the_new_run_completes(cli, tiny_nnunet, tiny_run, tmp_path):
    out = tmp_path / "results"
    shutil.copytree(tiny_run, out / RUN)
    (out / RUN / "OLD").write_text("the run being replaced")
    code, _, err = cli("run", *tiny_args(tiny_nnunet, out))
    assert code == 2 and "a completed run is already there (pass --overwrite" in err
    # a replacement that fails (a non-finite loss) leaves the old run as it was
    code, _, err = cli("run", *tiny_args(tiny_nnunet, out, "--overwrite", "--set", "train.lr=1e30",
                                         "--set", "train.momentum=0"))
    assert code == 2 and "non-finite loss" in err, err
    assert (out / RUN / "OLD").is_file() and json.loads((out / RUN / "run.json").read_text())["status"] == "complete"
    code, _, err = cli("run", *tiny_args(tiny_nnunet, out, "--overwrite"))
    assert code == 0, err
    assert not (out / RUN / "OLD").exists()
    assert sorted(p.name for p in (out / RUN.parent).iterdir()) == ["seed1337"]
    same_results(out / RUN, tiny_run)


def test_a_stale_lock_of_a_dead_process_is_taken_over(cli, tiny_nnunet, tiny_run, tmp_path, monkeypatch):
    out = tmp_path / "results"
    staging = _interrupted(tiny_nnunet, out, monkeypatch)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (staging / "LOCK").write_text(str(dead.pid))
    code, _, err = cli("run", *tiny_args(tiny_nnunet, out, "--resume"))
    assert code == 0, err
    same_results(out / RUN, tiny_run)


def test_a_live_lock_is_respected(cli, tiny_nnunet, tmp_path, monkeypatch):
    out = tmp_path / "results"
    staging = _interrupted(tiny_nnunet, out, monkeypatch)
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (staging / "LOCK").write_text(str(alive.pid))
        for extra in ((), ("--resume",)):
            code, _, err = cli("run", *tiny_args(tiny_nnunet, out, *extra))
            assert code == 2 and f"another ssbench run (pid {alive.pid}) is writing this run folder" in err, err
    finally:
        alive.kill()
        alive.wait()
    assert (staging / "checkpoints" / "last.pt").is_file()


def test_a_non_finite_loss_stops_the_run(cli, tiny_nnunet, tmp_path):
    out = tmp_path / "results"
    code, _, err = cli("run", *tiny_args(tiny_nnunet, out, "--set", "train.lr=1e30", "--set", "train.momentum=0"))
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "training stopped at iteration" in err and "non-finite loss (loss=nan)" in err
    nothing_looks_complete(out)
    staging = out / RUN.with_name(".seed1337.incomplete")
    assert json.loads((staging / "run.json").read_text())["status"] == "running"
    assert not (staging / "checkpoints" / "final.pt").exists() and not (staging / "summary.json").exists()
    assert not (staging / "LOCK").exists()
