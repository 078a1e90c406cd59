"""``ssbench sweep`` on submitit: the local and debug executors on a tiny grid (completed runs skipped, a failing
run listed with its error line, a requeued run resumes and is reported as requeued), local GPU jobs each on their
own GPUs (a stand-in GPU list: CUDA_VISIBLE_DEVICES on this CPU machine), the Slurm submission checked through a
stand-in ``sbatch`` that records what submitit submits, and the scheduler's own state through a stand-in
``sacct``."""

import json
import os
import shutil
import stat
import sys
from pathlib import Path

import pytest

from conftest import TINY_SETS
from ssbench.errors import UserError
from ssbench.sweep.grid import Grid, load_grid, parse_roots, plan
from ssbench.sweep.launch import RunJob, SlurmOptions, error_file, launch
from ssbench.sweep.status import status


def _grid(methods=("supervised", "fixmatch"), seeds=(1,)):
    return Grid(tuple(methods), ("2",), tuple(seeds), ("nnunet",))


def _plan(out, root, grid=None, iters=2, device="cpu", world=1):
    grid = grid or _grid()
    return plan(grid, parse_roots([str(root)], grid.datasets), TINY_SETS, iters, out, device, world)


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
def test_debug_sweep_runs_skips_completed_and_reports_status(tmp_path, tiny_nnunet):
    out = tmp_path / "res"
    planned = _plan(out, tiny_nnunet)
    lines = []
    sweep_dir = launch(planned, out, "debug", SlurmOptions(), 1, say=lines.append)
    assert {r["state"] for r in status(out)} == {"done"}
    assert (out / "nnunet" / "fixmatch" / "2" / "seed1" / "metrics_per_case.csv").is_file()
    manifest = json.loads((sweep_dir / "manifest.json").read_text())
    assert len(manifest["runs"]) == 2 and all(r["job_id"] for r in manifest["runs"])
    again = _plan(out, tiny_nnunet)
    assert all(p.complete for p in again)
    lines.clear()
    launch(again, out, "debug", SlurmOptions(), 1, say=lines.append)
    assert sum(line.startswith("skip") for line in lines) == 2 and not any(line.startswith("start") for line in lines)


def test_a_failing_run_is_listed_with_its_error_line(tmp_path, tiny_nnunet):
    from ssbench.datasets.nnunet import NNUNet

    data = tmp_path / "tiny"
    shutil.copytree(tiny_nnunet, data)
    test_case = NNUNet(str(data), NNUNet.Options()).split("2", 0).test[0]
    bad = f"{test_case}.nii.gz"
    (data / "labelsTr" / bad).write_bytes(b"not a nifti")  # read (and checked) before training starts
    out = tmp_path / "res"
    planned = _plan(out, data, _grid(("supervised",)))
    lines = []
    launch(planned, out, "debug", SlurmOptions(), 1, say=lines.append)
    (row,) = status(out)
    assert row["state"] == "failed" and bad in row["detail"]
    assert any(line.startswith("FAILED") and bad in line for line in lines)
    assert not (out / row["key"]).exists()  # nothing that looks complete


def _preempt_at(monkeypatch, iteration, job, key, request):
    """The training step at ``iteration`` is interrupted as submitit does it on preemption: its signal handler
    calls the job's ``checkpoint`` (which submitit pickles for the requeue), then exits with SystemExit."""
    from ssbench.methods.supervised import Supervised

    original = Supervised.training_step

    def preempted(self, labeled, unlabeled, step):
        if step.iteration == iteration:
            job.checkpoint(key, request)
            raise SystemExit(-1)
        return original(self, labeled, unlabeled, step)

    monkeypatch.setattr(Supervised, "training_step", preempted)
    return original


def test_a_preempted_run_is_requeued_not_failed_and_resumes_from_its_checkpoint(tmp_path, tiny_nnunet, monkeypatch):
    from ssbench.methods.supervised import Supervised

    out = tmp_path / "res"
    (p,) = _plan(out, tiny_nnunet, _grid(("supervised",)), iters=4)
    sweep_dir = out / ".sweeps" / "x"
    sweep_dir.mkdir(parents=True)
    (sweep_dir / "manifest.json").write_text(json.dumps(
        {"sweep": "x", "executor": "debug", "runs": [{"key": p.key, "complete_before": False, "job_id": "1"}]}))
    job = RunJob(str(sweep_dir))
    original = _preempt_at(monkeypatch, 3, job, p.key, p.request)  # after the iteration-2 checkpoint
    with pytest.raises(SystemExit):
        job(p.key, p.request)
    assert (out / p.key).with_name(".seed1.incomplete").is_dir()
    assert not error_file(sweep_dir, p.key).exists()
    (row,) = status(out)
    assert row["state"] == "requeued" and "requeued 1 time" in row["detail"], row
    steps = []

    def counted(self, labeled, unlabeled, step):
        steps.append(step.iteration)
        return original(self, labeled, unlabeled, step)

    monkeypatch.setattr(Supervised, "training_step", counted)
    requeued = RunJob(str(sweep_dir)).checkpoint(p.key, p.request)  # what submitit submits again
    assert Path(requeued.result()) == out / p.key
    assert steps == [2, 3]  # resumed from the iteration-2 checkpoint, not restarted
    assert len((out / p.key / "train_log.csv").read_text().splitlines()) == 1 + 4
    assert [r["state"] for r in status(out)] == ["done"]


def test_a_run_that_fails_is_failed(tmp_path, tiny_nnunet, monkeypatch):
    """The control of the requeue test: an error that is not a requeue is recorded as the run's failure."""
    from ssbench.methods.supervised import Supervised

    out = tmp_path / "res"
    (p,) = _plan(out, tiny_nnunet, _grid(("supervised",)), iters=4)

    def broken(self, labeled, unlabeled, step):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(Supervised, "training_step", broken)
    job = RunJob(str(out / ".sweeps" / "x"))
    with pytest.raises(RuntimeError):
        job(p.key, p.request)
    assert "RuntimeError: CUDA error: an illegal" in error_file(out / ".sweeps" / "x", p.key).read_text()


def test_local_gpu_jobs_each_see_their_own_gpus_and_never_fall_back_to_the_cpu(tmp_path, tiny_nnunet, monkeypatch):
    """Stand-in GPUs: CUDA_VISIBLE_DEVICES=3,5 on this CPU-only machine. Two jobs start at once (--parallel
    defaults to the GPUs), job k sees only its own GPU, and --device auto means CUDA in the job: without a usable
    GPU each run fails with one line instead of training on the CPU."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    out = tmp_path / "res"
    planned = _plan(out, tiny_nnunet, _grid(("supervised",), seeds=(1, 2)), device="auto")
    lines = []
    sweep_dir = launch(planned, out, "local", SlurmOptions(timeout_min=10), None, say=lines.append)
    starts = sorted(line for line in lines if line.startswith("start"))
    assert starts == ["start   nnunet/supervised/2/seed1 on GPU 3", "start   nnunet/supervised/2/seed2 on GPU 5"]
    manifest = json.loads((sweep_dir / "manifest.json").read_text())
    assert manifest["local"] == {"gpus": [3, 5], "gpus_per_job": 1, "parallel": 2}
    seen = sorted(line.split("CUDA_VISIBLE_DEVICES=")[1].strip() for log in (sweep_dir / "submitit").glob("*_log.out")
                  for line in log.read_text().splitlines() if line.startswith("ssbench job"))
    assert seen == ["3", "5"]
    rows = status(out)
    assert [r["state"] for r in rows] == ["failed", "failed"]
    assert all("--device cuda: no CUDA device is available" in r["detail"] for r in rows), rows
    with pytest.raises(UserError, match="--parallel 3: 2 GPU"):
        launch(planned, out, "local", SlurmOptions(), 3)
    with pytest.raises(UserError, match="--gpus-per-job 3: this machine has 2 GPU"):
        launch(planned, out, "local", SlurmOptions(gpus_per_job=3), None)


@pytest.mark.slow
def test_a_local_job_of_two_gpus_runs_two_ddp_processes(tmp_path, tiny_nnunet, monkeypatch):
    """--gpus-per-job 2: the job books both stand-in GPUs and runs two submitit tasks, ranks 0 and 1 of one
    DDP run (here they stop at the missing CUDA device, each with its own line)."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2")
    out = tmp_path / "res"
    planned = _plan(out, tiny_nnunet, _grid(("supervised",)), device="auto", world=2)
    assert planned[0].key == "nnunet/supervised/2/seed1-ddp2"
    lines = []
    sweep_dir = launch(planned, out, "local", SlurmOptions(gpus_per_job=2, timeout_min=10), None,
                       say=lines.append)
    assert "start   nnunet/supervised/2/seed1-ddp2 on GPU 0,1" in lines
    jobs = [line for log in (sweep_dir / "submitit").glob("*_log.out") for line in log.read_text().splitlines()
            if line.startswith("ssbench job")]
    assert len(jobs) == 2 and all("2 process(es)" in j and j.endswith("CUDA_VISIBLE_DEVICES=0,1") for j in jobs)
    (row,) = status(out)
    assert row["state"] == "failed" and "no CUDA device" in row["detail"], row


def _stand_in(bindir: Path, name: str, body: str) -> None:
    exe = bindir / name
    exe.write_text(f"#!{sys.executable}\n{body}")
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)


def test_slurm_submission_and_status_through_stand_in_sbatch_and_sacct(tmp_path, tiny_nnunet, monkeypatch):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    record = tmp_path / "sbatch.calls"
    _stand_in(bindir, "sbatch", "import sys, pathlib\n"
                                f"rec = pathlib.Path({str(record)!r})\n"
                                "script = pathlib.Path(sys.argv[-1]).read_text()\n"
                                "rec.write_text(' '.join(sys.argv[1:]) + '\\n' + script)\n"
                                "print('Submitted batch job 4242')\n")
    _stand_in(bindir, "srun", "raise SystemExit(1)\n")  # submitit only checks that srun exists (a cluster node)
    # Slurm's accounting: task 0 killed for memory, 1 running, 2 requeued by the scheduler, 3 still pending
    _stand_in(bindir, "sacct", "print('JobID|State|NodeList')\n"
                               "print('4242_0|OUT_OF_MEMORY|n1')\nprint('4242_1|RUNNING|n2')\n"
                               "print('4242_2|REQUEUED|None')\nprint('4242_3|PENDING|None')\n")
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    out = tmp_path / "res"
    planned = plan(Grid(("supervised", "fixmatch"), ("1", "2"), (1,), ("nnunet",)),
                   parse_roots([str(tiny_nnunet)], ("nnunet",)), TINY_SETS, 2, out, "auto", 2)
    options = SlurmOptions(partition="gpu", gpus_per_job=2, timeout_min=90, array_parallelism=3, account="lab42",
                           qos="high", mem_gb=64, extra=("constraint=a100",), setup=("module load cuda/12.4",))
    lines = []
    sweep_dir = launch(planned, out, "slurm", options, None, say=lines.append)
    text = record.read_text()
    assert "#SBATCH --array=0-3%3" in text  # one array of the 4 runs, at most 3 at once
    assert "#SBATCH --gpus-per-node=2" in text and "#SBATCH --ntasks-per-node=2" in text  # 2 GPUs, 2 DDP ranks
    assert "#SBATCH --partition=gpu" in text and "#SBATCH --time=90" in text
    assert "#SBATCH --account=lab42" in text and "#SBATCH --qos=high" in text and "#SBATCH --mem=64GB" in text
    assert "#SBATCH --constraint=a100" in text and "module load cuda/12.4" in text
    assert "submitit.core._submit" in text  # each task runs its pickled RunJob
    assert any("job array 4242" in line for line in lines)
    manifest = json.loads((sweep_dir / "manifest.json").read_text())
    assert [r["job_id"] for r in manifest["runs"]] == [f"4242_{i}" for i in range(4)]
    assert all(r["key"].endswith("seed1-ddp2") for r in manifest["runs"])
    (out / manifest["runs"][1]["key"]).with_name(".seed1-ddp2.incomplete").mkdir(parents=True)  # it has started
    rows = status(out)
    assert [r["state"] for r in rows] == ["failed", "running", "queued", "queued"]
    assert "OUT_OF_MEMORY" in rows[0]["detail"] and "4242_0" in rows[0]["detail"]
    assert "REQUEUED" in rows[2]["detail"]


def test_slurm_options_are_checked_before_anything_is_submitted(cli, tmp_path):
    code, _, err = cli("sweep", "--methods", "supervised", "--splits", "1", "--seeds", "1", "--executor", "slurm",
                       "--slurm-param", "constraint", "--out", tmp_path)
    assert code == 2 and "--slurm-param constraint: expected key=value" in err
    code, _, err = cli("sweep", "--methods", "supervised", "--splits", "1", "--seeds", "1", "--parallel", "0",
                       "--out", tmp_path)
    assert code == 2 and "--parallel 0: must be at least 1" in err
    assert not (tmp_path / ".sweeps").exists()


def test_pretrained_weights_are_fetched_once_before_the_jobs_into_a_per_process_partial_file(tmp_path, tiny_nnunet,
                                                                                            monkeypatch):
    """A grid of SSS runs on real-format data fetches SAM-2's official checkpoint once, before submission (the
    network stands in: a download function that records where it writes)."""
    import torch

    from ssbench.sweep.launch import prepare_resources

    calls = []

    def download(url, dst, progress=True):
        calls.append((url, dst))
        Path(dst).write_bytes(b"weights")

    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    cache = tmp_path / "sam2-cache"
    grid = Grid(("sss",), ("2",), (0, 1, 2), ("nnunet",))
    planned = plan(grid, parse_roots([str(tiny_nnunet)], ("nnunet",)), (f"sss.cache_dir={cache}",), 2,
                   tmp_path / "res", "cpu")
    lines = []
    prepare_resources(planned, lines.append)
    assert len(calls) == 1 and calls[0][0].endswith("/sam2_hiera_small.pt")
    assert calls[0][1] == str(cache / f"sam2_hiera_small.pt.{os.getpid()}.part")  # never a name shared by jobs
    assert (cache / "sam2_hiera_small.pt").read_bytes() == b"weights" and lines == [
        f"sss: pretrained sam2_hiera_s at {cache / 'sam2_hiera_small.pt'}"]
    prepare_resources(planned, lines.append)
    assert len(calls) == 1  # in the cache now: nothing fetched again


# ---- issue 29: a sweep that submits, dry-runs or refuses in one line ----------------------------------------------

def _sweep_args(root, out, *extra):
    return ["sweep", "--methods", "supervised,fixmatch", "--splits", "2", "--seeds", "1", "--dataset", "nnunet",
            "--data-root", root, "--iters", "2", "--out", out, *[x for s in TINY_SETS for x in ("--set", s)], *extra]


def test_slurm_without_a_scheduler_is_one_line_and_writes_nothing(cli, tiny_nnunet, tmp_path, monkeypatch):
    from conftest import one_line

    bindir = tmp_path / "bin"
    bindir.mkdir()
    monkeypatch.setenv("PATH", str(bindir))  # no sbatch, no srun
    out = tmp_path / "res"
    code, _, err = cli(*_sweep_args(tiny_nnunet, out, "--executor", "slurm"))
    one_line(code, err, "--executor slurm: no Slurm on this machine", "sbatch and srun not on PATH", "--dry-run")
    assert not out.exists()


def test_a_refused_submission_writes_no_manifest(cli, tiny_nnunet, tmp_path, monkeypatch):
    from conftest import one_line

    bindir = tmp_path / "bin"
    bindir.mkdir()
    _stand_in(bindir, "sbatch", "import sys\nsys.stderr.write('sbatch: error: invalid partition specified: gpux\\n')\n"
                                "raise SystemExit(1)\n")
    _stand_in(bindir, "srun", "raise SystemExit(1)\n")
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    out = tmp_path / "res"
    code, _, err = cli(*_sweep_args(tiny_nnunet, out, "--executor", "slurm", "--slurm-partition", "gpux"))
    one_line(code, err, "the submission failed, nothing was submitted", "invalid partition specified: gpux")
    assert not (out / ".sweeps").exists()
    with pytest.raises(UserError, match="no sweep found"):
        status(out)


def test_dry_run_prints_the_sbatch_script_and_each_command_and_writes_nothing(cli, tiny_nnunet, tmp_path,
                                                                             monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # a dry run needs no Slurm
    out = tmp_path / "res"
    code, text, err = cli(*_sweep_args(tiny_nnunet, out, "--executor", "slurm", "--gpus-per-job", "2",
                                       "--split-seeds", "0,1", "--slurm-partition", "a100", "--dry-run"))
    assert code == 0, err
    assert "#SBATCH --array=0-3%4" in text and "#SBATCH --gpus-per-node=2" in text
    assert "#SBATCH --ntasks-per-node=2" in text and "#SBATCH --partition=a100" in text
    commands = [line for line in text.splitlines() if line.startswith("ssbench run ")]
    assert len(commands) == 4 and all("--device cuda" in c and "--gpus 2" in c for c in commands)
    keys = sorted(c.split("  # ")[1] for c in commands)
    assert keys == ["nnunet/fixmatch/2/seed1-ddp2", "nnunet/fixmatch/2/seed1-ddp2-split1",
                    "nnunet/supervised/2/seed1-ddp2", "nnunet/supervised/2/seed1-ddp2-split1"]
    assert sum("--split-seed 1" in c for c in commands) == 2
    assert "dry run: nothing submitted, nothing written" in text and not out.exists()


def test_split_seeds_draw_other_labeled_patients_into_their_own_folders(tmp_path, tiny_nnunet):
    out = tmp_path / "res"
    planned = plan(Grid(("supervised",), ("2",), (1,), ("nnunet",), (0, 3)), parse_roots([str(tiny_nnunet)],
                   ("nnunet",)), TINY_SETS, 2, out, "cpu")
    assert [p.key for p in planned] == ["nnunet/supervised/2/seed1", "nnunet/supervised/2/seed1-split3"]
    assert [p.request.split_seed for p in planned] == [0, 3]
    from ssbench.datasets.nnunet import NNUNet

    ds = NNUNet(tiny_nnunet)
    assert ds.split("2", 0).labeled != ds.split("2", 3).labeled


@pytest.mark.slow
def test_a_sweep_with_nothing_left_to_run_writes_no_manifest(tmp_path, tiny_nnunet):
    out = tmp_path / "res"
    launch(_plan(out, tiny_nnunet, _grid(("supervised",))), out, "debug", SlurmOptions(), 1)
    (first,) = (out / ".sweeps").iterdir()
    lines = []
    assert launch(_plan(out, tiny_nnunet, _grid(("supervised",))), out, "debug", SlurmOptions(), 1,
                  say=lines.append) is None
    assert list((out / ".sweeps").iterdir()) == [first] and "no manifest written" in lines[-1]
