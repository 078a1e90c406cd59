"""``ssbench sweep`` on submitit: the local and debug executors on a tiny grid (completed runs skipped, a failing
run listed with its error line, a requeued run resumes) and the Slurm submission checked through a stand-in
``sbatch`` that records what submitit submits."""

import json
import os
import shutil
import stat
import sys
from pathlib import Path

import pytest

from ssbench.errors import UserError
from ssbench.sweep.grid import Grid, load_grid, parse_roots, plan
from ssbench.sweep.launch import RunJob, SlurmOptions, error_file, launch
from ssbench.sweep.status import status

TINY = ("data.train_size=32", "train.batch_labeled=2", "train.batch_unlabeled=2", "train.val_every=2",
        "train.checkpoint_every=2")


def _plan(out, grid=None, root=None, sets=TINY, iters=2):
    grid = grid or Grid(("supervised", "fixmatch"), ("1",), (1,))
    return plan(grid, parse_roots([root] if root else [], grid.datasets), sets, iters, out, "cpu")


def test_paper_grid_is_shipped_and_expands_to_every_builtin_method(acdc_phantom, bhsd_phantom, tmp_path):
    g = load_grid("paper")
    assert set(g.methods) == {"supervised", "mean-teacher", "unimatch", "fixmatch", "sss"}
    assert (g.splits, g.seeds, g.datasets) == (("5%", "10%"), (0, 1, 2), ("acdc", "bhsd")) and g.size == 60
    planned = plan(g, parse_roots([], g.datasets), (), None, tmp_path, "cpu")
    keys = {p.key for p in planned}
    # SSS without SAM-2 weights in the cache falls back to random initialisation, recorded in its folder name
    assert len(keys) == 60 and "acdc-phantom/sss@init=random/10pct/seed2" in keys and not any(p.complete for p in planned)
    with pytest.raises(UserError, match="--grid nope"):
        load_grid("nope")
    with pytest.raises(UserError, match="NAME=PATH"):
        parse_roots(["/data"], g.datasets)


@pytest.mark.slow
def test_debug_sweep_runs_skips_completed_and_reports_status(tmp_path, acdc_phantom):
    out = tmp_path / "res"
    planned = _plan(out)
    lines = []
    sweep_dir = launch(planned, out, "debug", SlurmOptions(), 1, say=lines.append)
    assert {r["state"] for r in status(out)} == {"done"}
    assert (out / "acdc-phantom" / "fixmatch" / "1" / "seed1" / "metrics_per_case.csv").is_file()
    manifest = json.loads((sweep_dir / "manifest.json").read_text())
    assert len(manifest["runs"]) == 2 and all(r["job_id"] for r in manifest["runs"])
    again = _plan(out)
    assert all(p.complete for p in again)
    lines.clear()
    launch(again, out, "debug", SlurmOptions(), 1, say=lines.append)
    assert sum(line.startswith("skip") for line in lines) == 2 and not any(line.startswith("start") for line in lines)


def test_a_failing_run_is_listed_with_its_error_line(tmp_path, acdc_phantom):
    data = tmp_path / "acdc"
    shutil.copytree(acdc_phantom, data)
    (data / "training" / "patient001" / "patient001_frame01.nii.gz").write_bytes(b"not a nifti")  # a test volume
    out = tmp_path / "res"
    planned = _plan(out, Grid(("supervised",), ("1",), (1,)), root=str(data))
    lines = []
    launch(planned, out, "debug", SlurmOptions(), 1, say=lines.append)
    (row,) = status(out)
    assert row["state"] == "failed" and "patient001_frame01.nii.gz" in row["detail"]
    assert any(line.startswith("FAILED") and "patient001_frame01" in line for line in lines)
    assert not (out / row["key"]).exists()  # nothing that looks complete


@pytest.mark.slow
def test_a_requeued_run_resumes_from_its_checkpoint(tmp_path, acdc_phantom, monkeypatch):
    from ssbench.methods.supervised import Supervised

    out = tmp_path / "res"
    (p,) = _plan(out, Grid(("supervised",), ("1",), (1,)), iters=4)
    original = Supervised.training_step

    def preempted(self, labeled, unlabeled, step):  # the job is stopped after the iteration-2 checkpoint
        if step.iteration == 3:
            raise KeyboardInterrupt("preempted")
        return original(self, labeled, unlabeled, step)

    monkeypatch.setattr(Supervised, "training_step", preempted)
    job = RunJob(str(out / ".sweeps" / "x"))
    with pytest.raises(KeyboardInterrupt):
        job(p.key, p.request)
    assert (out / p.key).with_name(".seed1.incomplete").is_dir()
    assert "preempted" in error_file(out / ".sweeps" / "x", p.key).read_text()
    steps = []

    def counted(self, labeled, unlabeled, step):
        steps.append(step.iteration)
        return original(self, labeled, unlabeled, step)

    monkeypatch.setattr(Supervised, "training_step", counted)
    requeued = job.checkpoint(p.key, p.request)  # what submitit submits again on preemption or timeout
    assert Path(requeued.result()) == out / p.key
    assert steps == [2, 3]  # resumed from the iteration-2 checkpoint, not restarted
    log = (out / p.key / "train_log.csv").read_text().splitlines()
    assert len(log) == 1 + 4
    assert not error_file(out / ".sweeps" / "x", p.key).exists()


@pytest.mark.slow
def test_local_executor_runs_jobs_as_processes(tmp_path, acdc_phantom):
    out = tmp_path / "res"
    planned = _plan(out, Grid(("supervised",), ("1",), (1, 2)))
    lines = []
    launch(planned, out, "local", SlurmOptions(timeout_min=10), 2, say=lines.append)
    assert [r["state"] for r in status(out)] == ["done", "done"], lines
    logs = list((out / ".sweeps").rglob("*_log.out"))
    assert logs and any("iteration" in p.read_text() for p in logs)  # plain progress lines in the job logs


def test_slurm_submission_through_a_stand_in_sbatch(tmp_path, acdc_phantom, monkeypatch):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    record = tmp_path / "sbatch.calls"
    sbatch = bindir / "sbatch"
    sbatch.write_text(f"#!{sys.executable}\n"
                      "import sys, pathlib\n"
                      f"rec = pathlib.Path({str(record)!r})\n"
                      "script = pathlib.Path(sys.argv[-1]).read_text()\n"
                      "rec.write_text(' '.join(sys.argv[1:]) + '\\n' + script)\n"
                      "print('Submitted batch job 4242')\n")
    sbatch.chmod(sbatch.stat().st_mode | stat.S_IEXEC)
    srun = bindir / "srun"  # submitit only checks that srun exists (a cluster node); it is never called here
    srun.write_text("#!/bin/sh\nexit 1\n")
    srun.chmod(srun.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    out = tmp_path / "res"
    planned = _plan(out, Grid(("supervised", "fixmatch"), ("1", "3"), (1,)))
    lines = []
    sweep_dir = launch(planned, out, "slurm", SlurmOptions(partition="gpu", gpus_per_job=2, timeout_min=90,
                                                           array_parallelism=3), 1, say=lines.append)
    text = record.read_text()
    assert "#SBATCH --array=0-3%3" in text  # one array of the 4 runs, at most 3 at once
    assert "#SBATCH --gpus-per-node=2" in text and "#SBATCH --partition=gpu" in text
    assert "#SBATCH --time=90" in text
    assert "submitit.core._submit" in text  # each task runs its pickled RunJob
    assert any("job array 4242" in line for line in lines)
    manifest = json.loads((sweep_dir / "manifest.json").read_text())
    assert [r["job_id"] for r in manifest["runs"]] == [f"4242_{i}" for i in range(4)]
    assert {r["state"] for r in status(out)} == {"queued"}
