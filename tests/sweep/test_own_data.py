"""The README's "Your own data, your own cluster" recipe, run as written on a phantom nnU-Net folder (issue 29):
``ssbench data synth --dataset nnunet``, then the section's six commands with a stand-in Slurm — ``sbatch`` records
what submitit submits, ``srun`` runs its command, ``sacct`` knows nothing yet — and the test playing the cluster: it
runs every array task of each recorded sbatch script, as Slurm would, with Slurm's environment. Test-scale options
are appended to the sweeps (CPU jobs, 2 iterations, one seed, 32 px); everything else is the README's text."""

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TINY_SETS
from test_sweep import _stand_in

ROOT = Path(__file__).resolve().parents[2]
SCALE = ["--gpus-per-job", "0", "--iters", "2", "--seeds", "0",
         *[x for s in TINY_SETS for x in ("--set", s)]]


def readme_recipe() -> list[list[str]]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Your own data, your own cluster", 1)[1]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    return [shlex.split(line) for line in block.splitlines() if line.strip()]


def _cluster(tmp_path: Path, monkeypatch) -> Path:
    """Stand-ins for sbatch, srun and sacct on PATH; returns the folder where sbatch keeps what it was given."""
    bindir, spool = tmp_path / "bin", tmp_path / "spool"
    bindir.mkdir()
    spool.mkdir()
    _stand_in(bindir, "sbatch", "import pathlib, sys\n"
                                f"spool = pathlib.Path({str(spool)!r})\n"
                                "n = len(list(spool.glob('*.sh')))\n"
                                "(spool / f'{4242 + n}.sh').write_text(pathlib.Path(sys.argv[-1]).read_text())\n"
                                "print(f'Submitted batch job {4242 + n}')\n")
    _stand_in(bindir, "srun", "import os, sys\nargs = sys.argv[1:]\n"  # drop srun's own options, run the command
                              "while args and args[0].startswith('--'):\n"
                              "    args = args[1:] if args[0] == '--unbuffered' else args[2:]\n"
                              "os.execvp(args[0], args)\n")
    _stand_in(bindir, "sacct", "print('JobID|State|NodeList')\n")
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    return spool


def _run_array(script: Path, monkeypatch, in_process: bool = False) -> None:
    """What Slurm does with a submitted array: every task runs the script with its own SLURM_* environment. With
    ``in_process`` the tasks run submitit's job code in this process instead (what the script's srun line calls),
    which saves a Python and torch start per task."""
    import signal

    from submitit.core.submission import process_job

    text = script.read_text()
    array = re.search(r"#SBATCH --array=(\d+)-(\d+)", text)  # submitit submits a single run as a plain job
    tasks = range(int(array[1]), int(array[2]) + 1) if array else [None]
    folder = shlex.split(text.split("submitit.core._submit", 1)[1].splitlines()[0])[0]
    for task in tasks:
        env = {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "SLURM_NTASKS": "1", "SLURM_PROCID": "0",
               "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_JOB_NUM_NODES": "1", "SLURM_JOB_NODELIST": "node1",
               "SUBMITIT_EXECUTOR": "slurm"}
        if task is None:
            env["SLURM_JOB_ID"] = script.stem
        else:
            env.update(SLURM_JOB_ID=f"9{task}", SLURM_ARRAY_JOB_ID=script.stem, SLURM_ARRAY_TASK_ID=str(task))
        if not in_process:
            proc = subprocess.run(["bash", str(script)], env={**os.environ, **env}, capture_output=True, text=True,
                                  timeout=600)
            assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
            in_process = True  # one task through the script itself is proof enough that it runs
            continue
        handlers = {s: signal.getsignal(s) for s in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM)}
        with monkeypatch.context() as m:
            for k, v in env.items():
                m.setenv(k, v)
            try:
                process_job(folder)
            finally:
                for sig, handler in handlers.items():
                    signal.signal(sig, handler)


@pytest.mark.slow
def test_the_readme_recipe_runs_as_written_on_a_phantom_nnunet_folder(cli, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the README's relative paths: Dataset900_Phantom, results, paper
    spool = _cluster(tmp_path, monkeypatch)
    code, _, err = cli("data", "synth", "--dataset", "nnunet", "--out", "Dataset900_Phantom")
    assert code == 0, err
    split, dry, sweep, upper, status, table = readme_recipe()

    code, out, err = cli(*split[1:])
    assert code == 0, err
    assert "test = imagesTs/ with labelsTs/" in out and "val = splits_final.json fold 0" in out
    assert "patients by nnunet.patient_pattern" in out and re.search(r"^test \(4\): pat017 ", out, re.M)

    code, out, err = cli(*dry[1:], *SCALE)
    assert code == 0, err
    dry_out = out
    assert "#SBATCH --array=0-2%3" in out and "#SBATCH --partition=gpu" in out and "dry run: nothing" in out
    assert not Path("results").exists() and not list(spool.iterdir())

    script = dry_out.split("one array task each):\n", 1)[1].split("\n# each array task", 1)[0]
    code, out, err = cli(*sweep[1:], *SCALE)
    assert code == 0, err
    assert "submitted 3 runs as Slurm job array 4242" in out
    sweep_id = next(Path("results/.sweeps").iterdir()).name
    submitted = (spool / "4242.sh").read_text()  # what --dry-run printed is what was submitted
    assert script.replace("SWEEP-ID", sweep_id) == submitted.rstrip()
    code, out, _ = cli(*status[1:])
    assert "queued 3" in out  # submitted, not run yet
    _run_array(spool / "4242.sh", monkeypatch)
    capsys.readouterr()  # the jobs' own logs
    code, out, err = cli(*upper[1:], *SCALE)
    assert code == 0 and "Slurm job 4243" in out, err
    _run_array(spool / "4243.sh", monkeypatch, in_process=True)
    capsys.readouterr()

    code, out, err = cli(*status[1:])
    assert code == 0 and out.startswith("done 1 "), out  # the newest sweep: the upper bound
    code, out, err = cli(*status[1:], "--sweep", sorted(p.name for p in Path("results/.sweeps").iterdir())[0])
    assert code == 0 and out.startswith("done 3 "), out
    runs = sorted(str(p.parent.relative_to("results")) for p in Path("results").rglob("run.json"))
    assert runs == ["nnunet-phantom/bcp/4/seed0", "nnunet-phantom/supervised/4/seed0",
                    "nnunet-phantom/supervised/all/seed0", "nnunet-phantom/unimatch/4/seed0"]
    info = json.loads(Path("results/nnunet-phantom/bcp/4/seed0/run.json").read_text())
    assert info["stages"][0]["iters"] == 1 and any("phantom" in w for w in info["warnings"])  # 10,000 x 2 / 30,000

    code, out, err = cli(*table[1:])
    assert code == 0, err
    md = " ".join(Path("paper/main_nnunet-phantom.md").read_text().split())
    for row in ("U-Net (labeled only)", "UniMatch", "BCP", "all 12 labeled"):
        assert row in md, row
    assert "n = 4 patients" in md and "NO mark is possible" in md
    sig = Path("paper/significance_nnunet-phantom.csv").read_text()
    assert "supervised" in sig and "the labeled-only baseline" not in sig  # named by --reference, recorded
