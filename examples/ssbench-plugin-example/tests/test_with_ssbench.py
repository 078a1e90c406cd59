"""The plugin through ssbench's own command line, as a user runs it: listed, trained a few iterations beside a
built-in on the same data, and both in ``ssbench table``."""

import json
import subprocess
import sys
from pathlib import Path

SSBENCH = str(Path(sys.executable).parent / "ssbench")
TINY = ["--set", "data.train_size=32", "--set", "train.batch_labeled=2", "--set", "train.batch_unlabeled=2",
        "--set", "train.val_every=2", "--iters", "4", "--device", "cpu", "--quiet"]


def ssbench(*args, cwd=None):
    proc = subprocess.run([SSBENCH, *map(str, args)], capture_output=True, text=True, timeout=600, cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_listed_with_its_distribution():
    out = ssbench("methods")
    line = next(l for l in out.splitlines() if l.startswith("entropy-min"))
    assert "ssbench-plugin-example" in line
    assert any(l.startswith("pairs") for l in ssbench("datasets").splitlines())


def test_runs_beside_a_builtin_and_both_reach_the_table(pairs_root, tmp_path):
    out = tmp_path / "results"
    for method in ("entropy-min", "supervised"):
        ssbench("run", "--method", method, "--dataset", "pairs", "--data-root", pairs_root, "--split", "2",
                "--out", out, *TINY)
    run = out / "pairs" / "entropy-min" / "2" / "seed1337"
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "complete" and info["method_source"]["distribution"] == "ssbench-plugin-example"
    ssbench("table", "--results", out, "--out", tmp_path / "paper")
    table = (tmp_path / "paper" / "main_pairs.md").read_text()
    assert "Entropy Minimization" in table and "U-Net" in table
