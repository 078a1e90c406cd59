"""The command line: listing, splits, and one clear line with exit code 2 for bad input (nothing written)."""

import json

import numpy as np
import pytest

from formats import nifti, write_acdc_raw


def test_methods_lists_the_entry_point_builtins(cli):
    code, out, _ = cli("methods")
    assert code == 0 and "supervised" in out


def test_split_json_without_data(cli):
    code, out, _ = cli("split", "--dataset", "acdc", "--split", "10%", "--json")
    assert code == 0
    s = json.loads(out)
    assert s["labeled"] == ["patient099", "patient038", "patient050", "patient100", "patient058", "patient021",
                            "patient049"]
    assert len(s["unlabeled"]) == 63 and len(s["val"]) == 10 and len(s["test"]) == 20


@pytest.mark.parametrize("spec", ["150%", "0", "abc", "200"])
def test_split_errors(cli, spec):
    code, out, err = cli("split", "--split", spec, "--json")
    assert code == 2 and out == ""
    assert err.startswith("ssbench: error: --split") and len(err.strip().splitlines()) == 1


def _one_line_error(code, err, *needles):
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], lines[0]


def _nothing_written(out_dir):
    assert not out_dir.exists() or not any(out_dir.rglob("*")), list(out_dir.rglob("*"))


@pytest.mark.slow
def test_bad_options_exit_2_and_write_nothing(cli, tmp_path, acdc_phantom):
    out = tmp_path / "results"
    cases = [
        (["--method", "nope"], ["--method nope", "unknown method"]),
        (["--method", "supervised", "--dataset", "nope"], ["--dataset nope"]),
        (["--method", "supervised", "--set", "train.bogus=1"], ["train.bogus", "unknown key"]),
        (["--method", "supervised", "--set", "bogus.x=1"], ["bogus.x", "unknown section"]),
        (["--method", "supervised", "--set", "train.iters=abc"], ["train.iters", "integer"]),
        (["--method", "supervised", "--set", "eval.empty=zero"], ["eval.empty=zero", "one of worst, exclude, legacy-zero"]),
        (["--method", "supervised", "--split", "150%"], ["--split 150%"]),
        (["--method", "supervised", "--data-root", tmp_path / "missing"], ["missing", "does not exist"]),
        (["--method", "supervised", "--data-root", tmp_path], ["no ACDC data found"]),
        (["--method", "supervised", "--device", "tpu"], ["--device tpu"]),
        (["--method", "mean-teacher", "--split", "all"], ["needs unlabeled patients"]),
        (["--method", "sss", "--set", f"sss.checkpoint={tmp_path / 'nope.pt'}"], ["sss.checkpoint", "not found"]),
        (["--method", "sss", "--set", "sss.model=sam3"], ["sss.model sam3", "unknown"]),
    ]
    for args, needles in cases:
        code, _, err = cli("run", *args, "--out", out, "--quiet", "--iters", "1")  # bounded if the error regressed
        _one_line_error(code, err, *needles)
        _nothing_written(out)


def test_bad_data_files_exit_2_naming_the_file(cli, tmp_path):
    from ssbench.datasets.acdc import ACDC

    split = ACDC.frozen_split("1")
    root = write_acdc_raw(tmp_path / "acdc", list(split.labeled + split.val + split.test))
    out = tmp_path / "results"
    gt = root / "training" / "patient001" / "patient001_frame01_gt.nii.gz"  # a test patient
    lab = np.zeros((48, 40, 6))
    lab[1, 1, 1] = 9
    nifti(gt, lab, (1.5, 1.6, 8.0), np.uint8)
    code, _, err = cli("run", "--method", "supervised", "--data-root", root, "--split", "1", "--out", out, "--quiet",
                       "--iters", "1")
    _one_line_error(code, err, "patient001_frame01_gt.nii.gz", "outside the dataset's classes")
    _nothing_written(out)
    (root / "training" / "patient099" / "Info.cfg").unlink()
    code, _, err = cli("run", "--method", "supervised", "--data-root", root, "--split", "1", "--out", out, "--quiet",
                       "--iters", "1")
    _one_line_error(code, err, "patient099/Info.cfg", "missing")
    _nothing_written(out)


def test_debug_shows_the_traceback(cli):
    from ssbench.errors import UserError

    with pytest.raises(UserError, match="--method nope: unknown method"):
        cli("--debug", "run", "--method", "nope")


def test_data_synth_writes_the_real_format(cli, tmp_path):
    code, out, _ = cli("data", "synth", "--dataset", "bhsd", "--out", tmp_path / "b")
    assert code == 0
    assert (tmp_path / "b" / "dataset.json").is_file() and (tmp_path / "b" / "ground truths").is_dir()
    code, _, err = cli("data", "synth", "--dataset", "bhsd", "--out", tmp_path / "b")
    _one_line_error(code, err, "not empty")


def test_sweep_command_line_runs_a_grid_and_reports_status(cli, tiny_nnunet, tmp_path):
    """`ssbench sweep` as typed: the options reach the runs (one tiny run through the in-process debug executor),
    a second sweep skips it, `sweep status` counts it; bad combinations are one line."""
    from conftest import TINY_SETS

    out = tmp_path / "results"
    args = ["sweep", "--methods", "supervised", "--splits", "2", "--seeds", "3", "--dataset", "nnunet", "--data-root",
            tiny_nnunet, "--iters", "2", "--device", "cpu", "--executor", "debug", "--out", out,
            *[x for s in TINY_SETS for x in ("--set", s)]]
    code, printed, err = cli(*args)
    assert code == 0, err
    assert "sweep of 1 runs (0 already complete)" in printed
    run = out / "nnunet" / "supervised" / "2" / "seed3"
    cfg = json.loads((run / "run.json").read_text())
    assert cfg["status"] == "complete" and cfg["seed"] == 3
    assert "iters: 2" in (run / "config.yaml").read_text() and "train_size: 32" in (run / "config.yaml").read_text()
    code, printed, err = cli(*args)
    assert code == 0 and "sweep of 1 runs (1 already complete)" in printed, err
    code, printed, err = cli("sweep", "status", out)
    words = printed.splitlines()[0].split()
    counts = dict(zip(words[::2], map(int, words[1::2])))
    assert code == 0 and counts.pop("done") == 1 and set(counts.values()) == {0}, (printed, err)
    for extra, needle in ((["--grid", "paper"], "--grid: give either a grid or --methods/--splits/--seeds"),
                          (["--timeout-min", "0"], "--timeout-min 0: must be at least 1")):
        code, _, err = cli(*args, *extra)
        assert code == 2 and len(err.strip().splitlines()) == 1 and needle in err, err
    code, _, err = cli("sweep", "--methods", "supervised", "--seeds", "1", "--out", out)
    assert code == 2 and "--splits: required (or --grid NAME)" in err, err
