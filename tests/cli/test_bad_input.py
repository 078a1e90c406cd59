"""Bad input of every kind a user can hand ssbench: one line naming the file or option, exit code 2, no traceback,
nothing written that looks like a result. Files are made with the phantom/test writers, then corrupted."""

import errno
import gzip
import json
import os
import shutil

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from conftest import one_line, tiny_args
from formats import nifti, write_acdc_h5
from formats import nnunet_image as _img, nnunet_label as _lab


def nothing_that_looks_like_a_result(out):
    """No file at all, or (once training started) only the hidden staging folder, never a run.json in view."""
    if not out.exists():
        return
    visible = [p for p in out.rglob("run.json") if not any(part.startswith(".") for part in p.relative_to(out).parts)]
    assert visible == [], visible
    assert not list(out.rglob("summary.json")) or all(".incomplete" in str(p) for p in out.rglob("summary.json"))


def _write(root, rel, xyz, dtype=np.float32):
    nifti(root / rel, xyz, (1.2, 1.2, 5.0), dtype)


def _write_4d(path, xyzt):
    import nibabel as nib

    nib.save(nib.Nifti1Image(xyzt, np.diag([1.2, 1.2, 5.0, 1.0])), str(path))


def _truncate(path):
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


def _labels_with(value, dtype=np.uint8):
    lab = np.zeros((32, 32, 4))
    lab[3, 3, 1] = value
    return lab.astype(dtype)


# (name, how the data root is corrupted, what the one line must say). The tiny dataset's draws for --split 2:
# labeled cases 3 and 7, unlabeled 0, 2, 4, 8, 9, val 5, test 1 and 6 (errors there stop the run before any
# training too). The runs use Mean Teacher, which reads the unlabeled images as well.
DATA_CASES = [
    ("corrupt-image", lambda r: (r / _img(3)).write_bytes(os.urandom(3000)), [_img(3), "cannot read NIfTI"]),
    ("truncated-image", lambda r: _truncate(r / _img(1)), [_img(1), "cannot read NIfTI"]),
    ("gzip-truncated-label", lambda r: (r / _lab(6)).write_bytes(gzip.compress(
        gzip.decompress((r / _lab(6)).read_bytes()))[:-40]), [_lab(6), "cannot read NIfTI"]),
    ("not-an-image", lambda r: (r / _img(0)).write_text("patient notes, not an image\n"),
     [_img(0), "cannot read NIfTI"]),
    ("missing-image", lambda r: (r / _img(4)).unlink(), [_img(4), "missing image file"]),
    ("label-shape", lambda r: _write(r, _lab(5), np.zeros((16, 32, 4)), np.uint8),
     [_lab(5), "label shape (4, 32, 16) does not match image shape (4, 32, 32)"]),
    ("label-value", lambda r: _write(r, _lab(7), _labels_with(7), np.uint8),
     [_lab(7), "label values [7] outside the dataset's classes 0..2"]),
    ("label-not-integer", lambda r: _write(r, _lab(1), _labels_with(1.5, np.float32)),
     [_lab(1), "non-integer values"]),
    ("image-nan", lambda r: _write(r, _img(6), np.where(np.arange(32 * 32 * 4).reshape(32, 32, 4) == 5, np.nan, 1.0)),
     [_img(6), "1 non-finite values"]),
    ("image-4d", lambda r: _write_4d(r / _img(9), np.ones((32, 32, 4, 2), np.float32)),
     [_img(9), "expected a 3-D volume, got shape (32, 32, 4, 2)"]),
    ("no-dataset-json", lambda r: (r / "dataset.json").unlink(), ["dataset.json: missing"]),
    ("dataset-json-syntax", lambda r: (r / "dataset.json").write_text("{\"labels\": "),
     ["dataset.json: not a valid dataset.json"]),
    ("dataset-json-labels-list", lambda r: (r / "dataset.json").write_text(json.dumps({"labels": ["bg", "a"]})),
     ["dataset.json: not a valid dataset.json"]),
    ("dataset-json-labels-gap", lambda r: (r / "dataset.json").write_text(json.dumps(
        {"labels": {"background": 0, "organ": 2}})), ["dataset.json: labels must be consecutive"]),
    ("dataset-json-ending", lambda r: (r / "dataset.json").write_text(json.dumps(
        {"labels": {"background": 0, "a": 1}, "file_ending": ".png"})), ["file_ending '.png' is not supported"]),
    ("no-labels", lambda r: [p.unlink() for p in (r / "labelsTr").iterdir()], ["labelsTr: no label files"]),
    ("too-few-cases", lambda r: [p.unlink() for p in sorted((r / "labelsTr").iterdir())[2:]],
     ["only 2 labeled patients: too few"]),
    ("empty-root", lambda r: [shutil.rmtree(r), r.mkdir()], ["dataset.json: missing"]),
    ("missing-root", lambda r: shutil.rmtree(r), ["data root does not exist"]),
    ("root-is-a-file", lambda r: [shutil.rmtree(r), r.write_text("x")], ["data root is not a folder"]),
]


@pytest.mark.parametrize("name,corrupt,needles", DATA_CASES, ids=[c[0] for c in DATA_CASES])
def test_bad_data_files(cli, data, tmp_path, name, corrupt, needles):
    corrupt(data)
    out = tmp_path / "results"
    code, _, err = cli("run", *tiny_args(data, out)[2:], "--method", "mean-teacher")
    one_line(code, err, *needles)
    assert not out.exists()


OPTION_CASES = [
    (["--split", "9"], ["--split 9: only 7 training patients exist"]),
    (["--split", "0"], ["--split 0: at least one labeled patient"]),
    (["--split", "150%"], ["--split 150%: a percentage must be in (0, 100]"]),
    (["--split", "1%"], ["--split 1%: 1% of 7 training patients is less than one patient"]),
    (["--split", "half"], ["--split half: expected a patient count"]),
    (["--method", "mean-teacher", "--split", "all"], ["--split all: method mean-teacher needs unlabeled patients"]),
    (["--method", "nope"], ["--method nope: unknown method (available: "]),
    (["--dataset", "nope"], ["--dataset nope: unknown dataset"]),
    (["--set", "train.bogus=1"], ["--set train.bogus: unknown key 'bogus'"]),
    (["--set", "train.iters=abc"], ["--set train.iters=abc: expected an integer >= 1"]),
    (["--set", "train.lr=nan"], ["--set train.lr=nan: expected a finite number > 0"]),
    (["--set", "nnunet.intensity=ct-window", "--set", "nnunet.window=[80,0]"], ["nnunet.window", "upper bound"]),
    (["--device", "tpu"], ["--device tpu: expected auto, cpu or cuda"]),
    (["--hd-units", "km"], ["eval.hd_units=km: expected one of auto, mm, voxel"]),
    (["--empty-policy", "zero"], ["eval.empty=zero: expected one of worst, exclude, legacy-zero"]),
]


@pytest.mark.parametrize("extra,needles", OPTION_CASES, ids=[" ".join(c[0]) for c in OPTION_CASES])
def test_bad_options(cli, tiny_nnunet, tmp_path, extra, needles):
    out = tmp_path / "results"
    args = tiny_args(tiny_nnunet, out)
    if "--method" in extra:
        args = args[2:]  # the case names its own method
    code, _, err = cli("run", *args, *extra)
    one_line(code, err, *needles)
    assert not out.exists()


@pytest.fixture(scope="module")
def acdc_h5(tmp_path_factory):
    """The literature's h5 layout for the patients a --split 1 supervised run reads (1 labeled, 10 val, 20 test)."""
    from ssbench.datasets.acdc import ACDC

    s = ACDC.frozen_split("1")
    return write_acdc_h5(tmp_path_factory.mktemp("acdc") / "h5", list(s.labeled + s.val + s.test))


def _h5(path, **arrays):
    path.unlink()
    with h5py.File(path, "w") as fh:
        for key, value in arrays.items():
            fh[key] = value


ACDC_CASES = [
    ("h5-corrupt", lambda d: (d / "patient001_frame01.h5").write_bytes(os.urandom(500)),
     ["patient001_frame01.h5: cannot read h5"]),
    ("h5-truncated", lambda d: _truncate(d / "patient007_frame02.h5"), ["patient007_frame02.h5: cannot read h5"]),
    ("h5-no-label", lambda d: _h5(d / "patient099_frame01.h5", image=np.zeros((6, 40, 48), np.float32)),
     ["patient099_frame01.h5: no 'label' dataset"]),
    ("h5-2d-image", lambda d: _h5(d / "patient002_frame01.h5", image=np.zeros((40, 48), np.float32),
                                  label=np.zeros((40, 48), np.uint8)),
     ["patient002_frame01.h5: 'image' must be D x H x W"]),
    ("h5-text-image", lambda d: _h5(d / "patient019_frame02.h5", image=np.array([b"abc"] * 3),
                                    label=np.zeros(3, np.uint8)), ["patient019_frame02.h5: 'image' holds"]),
    ("h5-missing-volume", lambda d: [(d / "patient008_frame01.h5").unlink(),
                                     *[p.unlink() for p in (d / "slices").glob("patient008_frame01_*")]],
     ["patient008_frame01.h5: missing volume file"]),
]


@pytest.mark.parametrize("name,corrupt,needles", ACDC_CASES, ids=[c[0] for c in ACDC_CASES])
def test_bad_acdc_files(cli, acdc_h5, tmp_path, name, corrupt, needles):
    root = shutil.copytree(acdc_h5, tmp_path / "acdc")
    corrupt(root / "data")
    out = tmp_path / "results"
    code, _, err = cli("run", "--method", "supervised", "--data-root", root, "--split", "1", "--iters", "2",
                       "--device", "cpu", "--quiet", "--out", out)
    one_line(code, err, *needles)
    assert not out.exists()


def test_bad_acdc_and_bhsd_metadata(cli, tmp_path):
    from formats import write_acdc_raw

    raw = write_acdc_raw(tmp_path / "raw", ["patient099"])
    (raw / "training" / "patient099" / "Info.cfg").write_text("Group: NOR\nES: 12\n")
    code, _, err = cli("split", "--data-root", raw, "--json")
    assert code == 0  # the ACDC split is frozen: no data read
    code, _, err = cli("run", "--method", "supervised", "--data-root", raw, "--split", "1", "--out", tmp_path / "o",
                       "--iters", "1")
    one_line(code, err, "patient099/Info.cfg: no valid 'ED: <frame>' line")
    bhsd = tmp_path / "bhsd"
    for folder in ("images", "ground truths"):
        (bhsd / folder).mkdir(parents=True)
    (bhsd / "dataset.json").write_text(json.dumps({"training": [{"image": "./imagesTr/ID_a.nii.gz"}], "test": []}))
    code, _, err = cli("split", "--dataset", "bhsd", "--data-root", bhsd, "--split", "1")
    one_line(code, err, "dataset.json: lists ID_a", "images/ID_a.nii.gz is missing")
    (bhsd / "dataset.json").write_text("[1, 2]")
    code, _, err = cli("split", "--dataset", "bhsd", "--data-root", bhsd, "--split", "1")
    one_line(code, err, "dataset.json: not a valid dataset.json")
    shutil.rmtree(bhsd / "ground truths")
    code, _, err = cli("run", "--method", "supervised", "--dataset", "bhsd", "--data-root", bhsd,
                       "--out", tmp_path / "o", "--iters", "1")
    one_line(code, err, "ground truths: missing label folder")
    assert not (tmp_path / "o").exists()


# --- run folders and checkpoints handed to `ssbench eval` ------------------------------------------------------


def _other_model_weights(run):
    """A checkpoint that claims this run (its hash) but holds Mean Teacher's weights."""
    from ssbench.methods.api import MethodContext
    from ssbench.methods.mean_teacher import MeanTeacher, MeanTeacherConfig

    state = torch.load(run / "checkpoints" / "final.pt", weights_only=True)
    mt = MeanTeacher(MeanTeacherConfig(), MethodContext(1, 3, 32, 6, torch.device("cpu")))
    torch.save({**state, "method": mt.state_dict()}, run / "checkpoints" / "final.pt")


def _edit_yaml(path, change):
    data = yaml.safe_load(path.read_text())
    change(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def _rehashed(data, **changes):
    """A config.yaml changed consistently, its hash recomputed as the run would have: only its content is wrong."""
    from ssbench.runfolder import recorded_hash

    data.update(changes)
    data["config_hash"] = recorded_hash(data)


def _swap_from(other_run):
    def swap(run):
        shutil.copy(other_run / "checkpoints" / "best.pt", run / "checkpoints" / "best.pt")
    return swap


EVAL_CASES = [
    ("ckpt-random-bytes", lambda r: (r / "checkpoints/best.pt").write_bytes(os.urandom(4000)),
     ["checkpoints/best.pt: not a readable checkpoint"]),
    ("ckpt-truncated", lambda r: _truncate(r / "checkpoints/final.pt"), ["checkpoints/final.pt: not a readable"]),
    ("ckpt-text", lambda r: (r / "checkpoints/best.pt").write_text("weights"), ["best.pt: not a readable checkpoint"]),
    ("ckpt-not-weights-only", lambda r: torch.save({"method": {}, "config_hash": "x", "f": os.getcwd},
                                                   r / "checkpoints/best.pt"), ["best.pt: not a readable checkpoint"]),
    ("ckpt-no-weights", lambda r: torch.save({"iteration": 3}, r / "checkpoints/best.pt"),
     ["best.pt: not an ssbench checkpoint"]),
    ("ckpt-other-model", _other_model_weights, ["final.pt: its weights do not fit method 'supervised'"]),
    ("ckpt-missing", lambda r: (r / "checkpoints/final.pt").unlink(), ["checkpoints/final.pt: missing"]),
    ("config-edited", lambda r: _edit_yaml(r / "config.yaml", lambda d: d["train"].update(lr=0.5)),
     ["config.yaml: does not match its recorded config hash"]),
    ("config-syntax", lambda r: (r / "config.yaml").write_text("train: [unclosed\n"), ["config.yaml: unreadable"]),
    ("config-not-mapping", lambda r: (r / "config.yaml").write_text("- a\n- b\n"),
     ["config.yaml: expected a mapping"]),
    ("config-unknown-method", lambda r: _edit_yaml(r / "config.yaml", lambda d: _rehashed(d, method="nope")),
     ["--method nope: unknown method"]),
    ("config-bad-value", lambda r: _edit_yaml(r / "config.yaml", lambda d: _rehashed(d, train={**d["train"],
                                                                                               "lr": -1.0})),
     ["config.yaml: train.lr=-1.0: expected a finite number > 0"]),
    ("config-unknown-key", lambda r: _edit_yaml(r / "config.yaml", lambda d: _rehashed(d, eval={**d["eval"],
                                                                                               "smooth": 1})),
     ["config.yaml: unknown config key eval.smooth"]),
    ("run-json-corrupt", lambda r: (r / "run.json").write_text("{\"status\": "), ["run.json: unreadable"]),
    ("run-incomplete", lambda r: (r / "run.json").write_text(json.dumps({"status": "running"})),
     ["the run is not complete"]),
    ("split-no-test", lambda r: (r / "split.json").write_text(json.dumps({"labeled": []})),
     ["split.json: no list of test patients"]),
    ("data-moved", lambda r: _edit_yaml(r / "config.yaml", lambda d: d["data"].update(root=str(r / "gone"))),
     ["gone: data root does not exist"]),
    ("evals-unwritable", lambda r: (r / "evals").write_text("a file where the folder goes"),
     ["evals/worst-voxel/metrics_per_case.csv: cannot write"]),
]


@pytest.fixture(scope="module")
def other_run(tmp_path_factory, tiny_nnunet):
    from conftest import tiny_request
    from ssbench.engine.run import execute

    return execute(tiny_request(tiny_nnunet, tmp_path_factory.mktemp("other"), seed=2))


@pytest.mark.parametrize("name,corrupt,needles", EVAL_CASES, ids=[c[0] for c in EVAL_CASES])
def test_bad_run_folders_for_eval(cli, tiny_run, tmp_path, name, corrupt, needles):
    run = shutil.copytree(tiny_run, tmp_path / "run")
    corrupt(run)
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    code, _, err = cli("eval", run, "--hd-units", "voxel", "--device", "cpu")
    one_line(code, err, *needles)
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before  # nothing written


def test_another_runs_checkpoint_is_refused(cli, tiny_run, other_run, tmp_path):
    run = shutil.copytree(tiny_run, tmp_path / "run")
    _swap_from(other_run)(run)
    code, _, err = cli("eval", run, "--device", "cpu")
    one_line(code, err, "checkpoints/best.pt: belongs to another run")
    assert not (run / "evals").exists()


def test_eval_of_a_path_that_is_not_a_run(cli, tmp_path):
    code, _, err = cli("eval", tmp_path / "nope")
    one_line(code, err, "nope: not a folder")
    code, _, err = cli("eval", tmp_path)
    one_line(code, err, "config.yaml: missing (not a completed run folder)")


# --- results folders that cannot be written ------------------------------------------------------------------


def test_unwritable_results_folder(cli, tiny_nnunet, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code, _, err = cli("run", *tiny_args(tiny_nnunet, blocker / "results"))
    one_line(code, err, "a-file/results/nnunet/supervised/2/.seed1337.incomplete: cannot create the folder")
    code, _, err = cli("data", "synth", "--dataset", "acdc", "--out", blocker / "phantom")
    one_line(code, err, "--out", "a-file/phantom: cannot write")
    code, _, err = cli("data", "synth", "--dataset", "acdc", "--out", blocker)
    one_line(code, err, "a-file: not a folder")


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("target", ["checkpoint", pytest.param("metrics_per_case.csv", marks=pytest.mark.slow),
                                    pytest.param("summary.json", marks=pytest.mark.slow)])
def test_disk_full_while_saving(cli, tiny_nnunet, tiny_run, tmp_path, monkeypatch, target):
    """The write fails as on a full disk: one line naming the file, nothing published, no temporary file left;
    once there is space again, --resume finishes with the numbers of an uninterrupted run."""
    import ssbench.atomic
    import ssbench.runfolder as run_module

    out = tmp_path / "results"
    with monkeypatch.context() as m:
        if target == "checkpoint":
            m.setattr(torch, "save", _no_space)
        elif target == "metrics_per_case.csv":
            m.setattr(run_module, "write_csv", _failing_csv)
        else:
            real = ssbench.atomic.write_text
            m.setattr(ssbench.atomic, "write_text",
                      lambda path, text: _fsync_full(real, path, text) if str(path).endswith("summary.json")
                      else real(path, text))
        code, _, err = cli("run", *tiny_args(tiny_nnunet, out))
    expected = {"checkpoint": "checkpoints/best.pt", "metrics_per_case.csv": "metrics_per_case.csv",
                "summary.json": "summary.json"}[target]
    one_line(code, err, f".seed1337.incomplete/{expected}: cannot write (No space left on device)")
    nothing_that_looks_like_a_result(out)
    assert not [p for p in out.rglob("*.tmp")]
    code, _, err = cli("run", *tiny_args(tiny_nnunet, out, "--resume"))
    assert code == 0, err
    run = out / "nnunet" / "supervised" / "2" / "seed1337"
    pd.testing.assert_frame_equal(pd.read_csv(run / "metrics_per_case.csv"),
                                  pd.read_csv(tiny_run / "metrics_per_case.csv"))


def _failing_csv(path, frame):
    """ssbench.atomic.write_csv whose pandas write of metrics_per_case.csv hits a full disk."""
    from ssbench.atomic import atomic_path

    with atomic_path(path) as tmp:
        if "metrics_per_case" in str(path):
            tmp.write_text("case_id,cl")  # part of the file, then the disk is full
            _no_space()
        frame.to_csv(tmp, index=False)


def _fsync_full(real_write_text, path, text):
    """The data reach the temporary file; the disk fills when it is flushed (fsync)."""
    import ssbench.atomic

    real_fsync = ssbench.atomic.os.fsync
    ssbench.atomic.os.fsync = _no_space
    try:
        real_write_text(path, text)
    finally:
        ssbench.atomic.os.fsync = real_fsync

