"""Inputs that break the protocol without breaking a file (issue 28): refused with one line before anything trains;
`ssbench table` verifies each run it reads; every command ends in one line, never a traceback.

Each test corrupts real on-disk formats (tests/helpers/formats.py) or run folders the engine wrote."""

import json
import os
import shutil
import signal
import subprocess
import sys

import h5py
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import one_line, tiny_args
from formats import nifti, write_acdc_h5, write_acdc_raw
from formats import nnunet_image as _img, nnunet_label as _lab
from test_bad_input import nothing_that_looks_like_a_result

ZOOMS = (1.2, 1.2, 5.0)


def _run(cli, root, out, *extra, method="supervised"):
    return cli("run", *tiny_args(root, out)[2:], "--method", method, *extra)


# --- 1. metadata that breaks the protocol ---------------------------------------------------------------------


def _bhsd(root, train, test, extra_images=()):
    """A BHSD release whose dataset.json lists ``train`` and ``test`` (image names without extension)."""
    rng = np.random.default_rng(0)
    for cid in dict.fromkeys([*train, *test, *extra_images]):
        lab = np.zeros((24, 24, 3), np.uint8)
        lab[8:14, 8:14, 1] = 2
        nifti(root / "images" / f"{cid}.nii.gz", rng.normal(40, 10, (24, 24, 3)) + lab * 30, (0.5, 0.5, 5.0),
              np.int16)
        nifti(root / "ground truths" / f"{cid}.nii.gz", lab, (0.5, 0.5, 5.0), np.uint8)
    (root / "dataset.json").write_text(json.dumps({
        "training": [{"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"} for c in train],
        "test": [f"./imagesTs/{c}.nii.gz" for c in test]}))
    return root


def test_bhsd_test_list_repeating_training_cases_is_refused(cli, tmp_path):
    train = [f"ID_{i}" for i in range(8)]
    root = _bhsd(tmp_path / "bhsd", train, ["ID_2", "ID_9"])
    code, _, err = cli("split", "--dataset", "bhsd", "--data-root", root, "--split", "2")
    one_line(code, err, "dataset.json", "ID_2", "both the training and the test list")
    out = tmp_path / "o"
    code, _, err = cli("run", "--method", "supervised", "--dataset", "bhsd", "--data-root", root, "--split", "2",
                       "--iters", "1", "--device", "cpu", "--quiet", "--out", out)
    one_line(code, err, "dataset.json", "ID_2")
    assert not out.exists()


def test_duplicate_ids_in_a_list_are_refused(cli, tmp_path):
    train = [f"ID_{i}" for i in range(8)] + ["ID_3"]
    root = _bhsd(tmp_path / "bhsd", train, ["ID_9"])
    code, _, err = cli("split", "--dataset", "bhsd", "--data-root", root, "--split", "2")
    one_line(code, err, "dataset.json", "ID_3", "twice in the training list")


LEAKY_PLUGIN = '''
from ssbench.datasets.base import Split
from ssbench.datasets.nnunet import NNUNet


class {cls}(NNUNet):
    name = "{name}"

    def split(self, spec, seed):
        s = super().split(spec, seed)
        return {make}

    def case_ids(self, patient_id):
        return {case_ids}
'''


@pytest.mark.parametrize("name,make,case_ids,needles", [
    ("leaky-test", "Split(s.labeled, s.unlabeled, s.val, s.test + s.labeled[:1], s.protocol)", "[patient_id]",
     ["in both the labeled and the test set"]),
    ("dup-unlabeled", "Split(s.labeled, s.unlabeled + s.val, s.val, s.test, s.protocol)", "[patient_id]",
     ["in both the unlabeled and the val set"]),
    ("dup-labeled", "Split(s.labeled + s.labeled[:1], s.unlabeled, s.val, s.test, s.protocol)", "[patient_id]",
     ["twice in the labeled set"]),
    ("no-test", "Split(s.labeled, s.unlabeled, s.val, (), s.protocol)", "[patient_id]", ["the test set is empty"]),
    ("no-val", "Split(s.labeled, s.unlabeled, (), s.test, s.protocol)", "[patient_id]", ["the val set is empty"]),
    ("same-case-twice", "s", "[patient_id, patient_id]", ["case", "twice"]),
])
def test_a_plugin_split_that_breaks_the_protocol_is_refused(cli, tiny_nnunet, tmp_path, name, make, case_ids,
                                                            needles):
    """The engine checks every dataset's split (built-in or plugin) before it reads a volume."""
    plugin = tmp_path / f"{name.replace('-', '_')}.py"
    plugin.write_text(LEAKY_PLUGIN.format(cls=name.title().replace("-", ""), name=name, make=make,
                                          case_ids=case_ids))
    out = tmp_path / "o"
    args = tiny_args(tiny_nnunet, out)
    args[args.index("nnunet")] = name
    code, _, err = cli("run", *args, "--plugin", plugin)
    one_line(code, err, f"dataset {name}", *needles)
    assert not out.exists()


def test_acdc_ed_equal_to_es_is_refused(cli, tmp_path):
    raw = write_acdc_raw(tmp_path / "raw", ["patient099"])
    (raw / "training" / "patient099" / "Info.cfg").write_text("ED: 1\nES: 1\nGroup: NOR\n")
    code, _, err = cli("run", "--method", "supervised", "--data-root", raw, "--split", "1", "--out", tmp_path / "o",
                       "--iters", "1", "--device", "cpu")
    one_line(code, err, "patient099/Info.cfg", "ED and ES name the same frame (1)")


@pytest.mark.parametrize("text", ["ED: 1e999\nES: 12\n", "ED: 99999999999999999999\nES: 12\n", "ED: 1.5\nES: 12\n"],
                         ids=["overflow", "huge", "fraction"])
def test_acdc_info_cfg_numbers_out_of_range(cli, tmp_path, text):
    raw = write_acdc_raw(tmp_path / "raw", ["patient099"])
    (raw / "training" / "patient099" / "Info.cfg").write_text(text)
    code, _, err = cli("run", "--method", "supervised", "--data-root", raw, "--split", "1", "--out", tmp_path / "o",
                       "--iters", "1", "--device", "cpu")
    one_line(code, err, "patient099/Info.cfg: no valid 'ED: <frame>' line")


def test_a_byte_order_mark_is_read_not_reported_as_a_missing_key(cli, tmp_path, tiny_nnunet):
    from ssbench.datasets.acdc import ACDC

    raw = write_acdc_raw(tmp_path / "raw", ["patient099"])
    info = raw / "training" / "patient099" / "Info.cfg"
    info.write_text("\ufeff" + info.read_text(), encoding="utf-8")
    assert ACDC(raw).case_ids("patient099")[0] == "patient099_frame01"
    root = shutil.copytree(tiny_nnunet, tmp_path / "nn")
    (root / "dataset.json").write_text("\ufeff" + (root / "dataset.json").read_text(), encoding="utf-8")
    code, out, err = cli("split", "--dataset", "nnunet", "--data-root", root, "--split", "2", "--json")
    assert code == 0, err
    assert len(json.loads(out)["test"]) == 2


def _raw_nifti(path, xyz, pixdim, dtype=np.float32):
    """A NIfTI whose header pixdim is written as given (nibabel repairs zero pixdims when it loads a file)."""
    img = nib.Nifti1Image(xyz.astype(dtype), np.eye(4))
    img.header["pixdim"][1:4] = pixdim
    nib.save(img, str(path))


def _read_xyz(path):
    return np.asarray(nib.load(str(path)).dataobj)


@pytest.mark.parametrize("pixdim", [(1.2, 1.2, 0.0), (1.2, -1.2, 5.0)], ids=["zero-slice", "negative"])
def test_nifti_spacing_is_read_from_the_raw_header(cli, data, tmp_path, pixdim):
    _raw_nifti(data / _img(3), _read_xyz(data / _img(3)), pixdim)
    out = tmp_path / "o"
    code, _, err = _run(cli, data, out)
    one_line(code, err, _img(3), "invalid voxel spacing")
    assert not out.exists()


def test_label_spacing_differing_from_its_image_is_refused(cli, data, tmp_path):
    nifti(data / _lab(5), _read_xyz(data / _lab(5)), (1.2, 1.2, 4.0), np.uint8)
    out = tmp_path / "o"
    code, _, err = _run(cli, data, out)
    one_line(code, err, _lab(5), "label spacing (4, 1.2, 1.2) differs from its image's (5, 1.2, 1.2)")
    assert not out.exists()


def test_a_dataset_whose_labels_are_all_empty_is_refused_before_training(cli, data, tmp_path):
    for f in (data / "labelsTr").iterdir():
        nifti(f, np.zeros_like(_read_xyz(f)), ZOOMS, np.uint8)
    out = tmp_path / "o"
    code, _, err = _run(cli, data, out)
    one_line(code, err, "no foreground", "labeled set")
    assert not out.exists()


def test_a_val_set_without_foreground_is_refused_before_training(cli, data, tmp_path):
    nifti(data / _lab(5), np.zeros_like(_read_xyz(data / _lab(5))), ZOOMS, np.uint8)
    out = tmp_path / "o"
    code, _, err = _run(cli, data, out)
    one_line(code, err, "no foreground", "val set", "case_005")
    assert not out.exists()


def test_a_complex_image_is_refused_not_cast(cli, data, tmp_path):
    xyz = _read_xyz(data / _img(7)).astype(np.complex64) * (1 + 1j)
    nib.save(nib.Nifti1Image(xyz, np.diag([*ZOOMS, 1.0])), str(data / _img(7)))
    code, _, err = _run(cli, data, tmp_path / "o")
    one_line(code, err, _img(7), "complex")


def test_huge_finite_values_are_not_called_non_finite(cli, data, tmp_path):
    xyz = _read_xyz(data / _img(3)).astype(np.float32)
    xyz[0, 0, 0], xyz[1, 0, 0] = -3e38, 3e38
    nifti(data / _img(3), xyz, ZOOMS, np.float32)
    from ssbench.datasets.nnunet import NNUNet

    for intensity in ("minmax-volume", "percentile-volume"):
        ds = NNUNet(data, NNUNet.Options(intensity=intensity))
        image = ds.load_case("case_003").image
        assert np.isfinite(image).all() and 0 <= image.min() and image.max() <= 1, intensity


# --- the literature's h5 layout -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def acdc_h5(tmp_path_factory):
    from ssbench.datasets.acdc import ACDC

    s = ACDC.frozen_split("1")
    return write_acdc_h5(tmp_path_factory.mktemp("acdc") / "h5", list(s.labeled + s.val + s.test))


def _h5(path, **arrays):
    path.unlink(missing_ok=True)
    with h5py.File(path, "w") as fh:
        for key, value in arrays.items():
            fh[key] = value


@pytest.mark.parametrize("name,corrupt,needles", [
    ("empty-volume", lambda d: _h5(d / "patient001_frame01.h5", image=np.zeros((0, 40, 48), np.float32),
                                   label=np.zeros((0, 40, 48), np.uint8)),
     ["patient001_frame01.h5", "empty"]),
    ("stray-slice", lambda d: [(d / "patient099_frame01.h5").unlink(),
                               (d / "slices" / "patient099_frame01_slice_x.h5").write_bytes(b"")],
     ["slices/patient099_frame01_slice_x.h5", "not a slice file"]),
])
def test_bad_h5_volumes(cli, acdc_h5, tmp_path, name, corrupt, needles):
    root = shutil.copytree(acdc_h5, tmp_path / "acdc")
    corrupt(root / "data")
    out = tmp_path / "results"
    code, _, err = cli("run", "--method", "supervised", "--data-root", root, "--split", "1", "--iters", "2",
                       "--device", "cpu", "--quiet", "--out", out)
    one_line(code, err, *needles)
    assert not out.exists()


# --- 3. one line where one line is promised -------------------------------------------------------------------


def _unshare_works():
    try:
        return subprocess.run(["unshare", "-rm", "true"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


@pytest.mark.slow
@pytest.mark.skipif(not _unshare_works(), reason="needs unshare -rm (a private mount namespace) for a full tmpfs")
def test_disk_full_while_saving_a_checkpoint_with_real_torch(tiny_nnunet, tmp_path):
    """A real full disk (a 1 MiB tmpfs in a private mount namespace) under real torch.save, which raises
    RuntimeError there, not OSError: one line naming the checkpoint, exit 2, nothing that looks complete, no
    temporary file left."""
    from runs import REPO

    out = tmp_path / "full"
    out.mkdir()
    args = " ".join(f"'{a}'" for a in tiny_args(tiny_nnunet, out))
    script = (f"mount -t tmpfs -o size=1m tmpfs '{out}' && cd '{tmp_path}' && "
              f"'{sys.executable}' -m ssbench run {args}; echo \"rc=$?\"; "
              f"find '{out}' -name '*.tmp' -o -name run.json | sed 's/^/file: /'")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, env=env,
                          timeout=300)
    assert "rc=2" in proc.stdout, (proc.stdout, proc.stderr[-3000:])
    one_line(2, proc.stderr, ".seed1337.incomplete/checkpoints/", ".pt: cannot write (No space left on device)")
    files = [line[6:] for line in proc.stdout.splitlines() if line.startswith("file: ")]
    assert not [f for f in files if f.endswith(".tmp")], files
    assert all("/.seed1337.incomplete/" in f for f in files), files


def test_ctrl_c_says_interrupted_and_exits_130(cli, tmp_path, monkeypatch):
    """A real SIGINT delivered while a command works (Typer turns the KeyboardInterrupt into exit code 130)."""
    import time

    import ssbench.cli as cli_module

    def interrupted(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)  # the interrupt arrives here

    monkeypatch.setattr(cli_module, "_list_registered", interrupted)
    code, _, err = cli("methods")
    assert code == 130
    assert err.strip() == "ssbench: interrupted"


def test_data_synth_negative_seed(cli, tmp_path):
    code, _, err = cli("data", "synth", "--dataset", "acdc", "--out", tmp_path / "s", "--seed", "-1")
    one_line(code, err, "--seed")
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("text", ["- a\n- b\n", "config_hash: [1\n", "\x89PNG\x00\xff\xfe", "train: {}\n", "7\n"],
                         ids=["list", "syntax", "binary", "no-hash", "scalar"])
def test_damaged_staging_config_on_resume(cli, tiny_nnunet, tmp_path, text):
    out = tmp_path / "results"
    staging = out / "nnunet" / "supervised" / "2" / ".seed1337.incomplete"
    staging.mkdir(parents=True)
    (staging / "config.yaml").write_bytes(text.encode("latin-1"))
    code, _, err = cli("run", *tiny_args(tiny_nnunet, out, "--resume"))
    one_line(code, err, ".seed1337.incomplete/config.yaml", "run without --resume to start over")


@pytest.mark.parametrize("text", ["{\"runs\": 5}", "[1, 2]", "{}", "{\"runs\": [{\"job_id\": 1}]}", "\xff\xfe"],
                         ids=["runs-not-list", "list", "no-runs", "entry-without-key", "binary"])
def test_damaged_sweep_manifest(cli, tmp_path, text):
    sweep = tmp_path / "results" / ".sweeps" / "20260101-000000"
    sweep.mkdir(parents=True)
    (sweep / "manifest.json").write_bytes(text.encode("latin-1"))
    code, _, err = cli("sweep", "status", tmp_path / "results")
    one_line(code, err, "manifest.json")


def test_an_unexpected_error_inside_a_command_is_one_line(cli, tmp_path, monkeypatch):
    """Whatever a command raises ends in one line (and exit 2); --debug shows the traceback."""
    import ssbench.cli as cli_module

    def broken(*args, **kwargs):
        return {}["missing"]

    monkeypatch.setattr(cli_module, "_list_registered", broken)
    code, _, err = cli("methods")
    one_line(code, err, "internal error: KeyError", "--debug")
    with pytest.raises(KeyError):
        cli("--debug", "methods")


# --- training publishes only finite weights --------------------------------------------------------------------


BLOWUP = """
import torch

from ssbench.methods.supervised import Supervised


class Blowup(Supervised):
    \"\"\"The supervised UNet plus, in its last step, a distance term sqrt(|p - p'|^2) at distance 0 (a classic): its
    value is 0 and the logged loss finite, its gradient NaN, so the last update leaves non-finite weights.\"\"\"

    name = "blowup"

    def training_step(self, labeled, unlabeled, step):
        out = super().training_step(labeled, unlabeled, step)
        if step.iteration == step.total - 1:
            p = next(self.parameters())
            out["loss"] = out["loss"] + torch.sqrt(((p - p.detach()) ** 2).sum())
        return out
"""


@pytest.mark.parametrize("iters", [2, pytest.param(6, marks=pytest.mark.slow)])
def test_a_run_that_diverges_in_its_last_step_publishes_nothing(cli, tiny_nnunet, tmp_path, iters):
    """Every logged loss is finite; the weights after the last update are not: refused before a checkpoint with
    them is saved, nothing published."""
    plugin = tmp_path / "blowup.py"
    plugin.write_text(BLOWUP)
    out = tmp_path / "results"
    args = tiny_args(tiny_nnunet, out, "--plugin", plugin, "--iters", str(iters))
    code, _, err = cli("run", "--method", "blowup", *args[2:])
    one_line(code, err, f"iteration {iters}", "non-finite values", "weights", "nothing was published")
    nothing_that_looks_like_a_result(out)


def test_a_learning_rate_beyond_float32_is_refused(cli, tiny_nnunet, tmp_path):
    code, _, err = cli("run", *tiny_args(tiny_nnunet, tmp_path / "o", "--set", "train.lr=1e300"))
    one_line(code, err, "--set train.lr=1e300", "3.4e+38")


# --- 2. `ssbench table` verifies each run before using it ------------------------------------------------------


@pytest.fixture
def two_runs(tmp_path):
    """Two seeds of one method on the hand-written ACDC layout (tests/helpers/report_runs.py), with real config hashes."""
    from report_runs import write_run

    rng = np.random.default_rng(0)
    root = tmp_path / "results"
    return root, [write_run(root, "supervised", "3", seed, rng=rng) for seed in (1, 2)]


def _table(root, out):
    """What `ssbench table` prints (its build, figures left out: they are tested on their own)."""
    from report_runs import build_tables

    return build_tables(root, out, formats=("csv",))


def _used(stdout):
    return sorted(line.split()[1] for line in stdout.splitlines() if line.startswith("used"))


def _rows(path):
    return pd.read_csv(path / "metrics_per_case.csv")


def _set_rows(path, frame):
    frame.to_csv(path / "metrics_per_case.csv", index=False)


def _truncate_csv(run):
    text = (run / "metrics_per_case.csv").read_text()
    (run / "metrics_per_case.csv").write_text(text[: int(len(text) * 0.6)])


def _nan_in_ok(run):
    f = _rows(run)
    f.loc[(f.status == "ok") & (f.checkpoint == "best"), "dice"] = np.nan
    _set_rows(run, f.iloc[:])


def _one_nan_in_ok(run):
    f = _rows(run)
    f.loc[f.index[0], "dice"] = np.nan
    _set_rows(run, f)


def _inf_hd(run):
    f = _rows(run)
    f.loc[f.index[3], "hd95"] = np.inf
    _set_rows(run, f)


def _edit_config(run):
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["train"]["iters"] = 5000
    (run / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))


def _drop_patient(run):
    f = _rows(run)
    _set_rows(run, f[f.patient_id != "patient004"])


def _duplicate_rows(run):
    f = _rows(run)
    _set_rows(run, pd.concat([f, f.iloc[:1]]))


def _foreign_patient(run):
    f = _rows(run)
    f.loc[f.patient_id == "patient004", "patient_id"] = "patient099"
    _set_rows(run, f)


def _dice_above_one(run):
    f = _rows(run)
    f.loc[f.index[5], "dice"] = 1.5
    _set_rows(run, f)


TABLE_CASES = [
    ("truncated-csv", _truncate_csv, "metrics_per_case.csv"),
    ("nan-in-ok-rows", _nan_in_ok, "column 'dice' holds values that are missing"),
    ("one-nan-in-ok", _one_nan_in_ok, "column 'dice' holds values that are missing"),
    ("inf-hd95", _inf_hd, "column 'hd95' holds infinite values"),
    ("config-edited", _edit_config, "config.yaml: does not match its recorded config hash"),
    ("test-patient-missing", _drop_patient, "no rows for test patient patient004"),
    ("duplicate-rows", _duplicate_rows, "has two rows for class"),
    ("foreign-patient", _foreign_patient, "no rows for test patient patient004"),
    ("dice-above-one", _dice_above_one, "outside [0, 1]"),
]


@pytest.mark.parametrize("name,corrupt,reason", TABLE_CASES, ids=[c[0] for c in TABLE_CASES])
def test_table_skips_a_run_that_fails_verification(cli, two_runs, tmp_path, name, corrupt, reason):
    root, (good, bad) = two_runs
    corrupt(bad)
    stdout = _table(root, tmp_path / "paper")
    assert _used(stdout) == [str(good)]
    skipped = [line for line in stdout.splitlines() if line.startswith(f"skipped {bad}")]
    assert len(skipped) == 1 and reason in skipped[0], stdout
    index = json.loads((tmp_path / "paper" / "index.json").read_text())
    assert index["runs_used"] == 1 and index["runs_skipped"] == 1


def test_table_ignores_runs_in_hidden_folders(cli, two_runs, tmp_path):
    root, (a, b) = two_runs
    hidden = root / ".trash" / "acdc" / "supervised" / "3"
    hidden.mkdir(parents=True)
    shutil.copytree(b, hidden / "seed9")
    shutil.move(str(b), str(b.with_name(".seed2-old")))
    stdout = _table(root, tmp_path / "paper")
    assert _used(stdout) == [str(a)]
    assert ".trash" not in stdout and ".seed2-old" not in stdout


@pytest.mark.slow
def test_a_damaged_predictions_file_costs_its_figure_only(tmp_path):
    """The overlays read predictions/best.npz lazily: a damaged member used to crash `ssbench table` half-way."""
    from report_runs import build_tables, write_run

    pats = ["patient001", "patient002", "patient003"]
    data = write_acdc_raw(tmp_path / "data", pats)
    cases = [f.name.replace("_gt.nii.gz", "") for p in pats for f in sorted((data / "training" / p).glob("*_gt*"))]
    labels = {c: np.asarray(nib.load(data / "training" / c.split("_")[0] / f"{c}_gt.nii.gz").dataobj)
              .transpose(2, 1, 0).astype(np.uint8) for c in cases}
    root = tmp_path / "results"
    rng = np.random.default_rng(0)
    runs = {m: write_run(root, m, "3", 1, cases=cases, rng=rng, predictions=labels, shift=s,
                         settings={"data.root": str(data)}) for m, s in (("supervised", 0), ("unimatch", 0.05))}
    npz = runs["supervised"] / "predictions" / "best.npz"
    raw = bytearray(npz.read_bytes())
    raw[200:260] = os.urandom(60)  # inside the first member's compressed data: the zip directory still reads
    npz.write_bytes(bytes(raw))
    out = tmp_path / "paper"
    said = build_tables(root, out, draw=True)
    assert "figure overlays_acdc_3labeled skipped" in said, said
    index = json.loads((out / "index.json").read_text())
    assert "figures/dice_acdc.png" in index["files"]["figures_acdc"]
    assert (out / "main_acdc.md").is_file() and (out / "README.md").is_file()


def test_paper_is_written_whole_or_not_at_all(cli, two_runs, tmp_path, monkeypatch):
    import ssbench.report.build as build_module
    from ssbench.errors import WriteError

    root, _ = two_runs
    out = tmp_path / "paper"
    _table(root, out)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def full(*args, **kwargs):
        raise WriteError(f"{out}/reproduction_gap.md: cannot write (No space left on device)")

    monkeypatch.setattr(build_module, "gap_table", full)  # after every dataset's tables were written
    with pytest.raises(WriteError, match="No space left on device"):
        _table(root, out)
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before  # the previous tables, untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["paper", "results"]  # no staging left
    with pytest.raises(WriteError):
        _table(root, tmp_path / "new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["paper", "results"]


def test_table_out_that_cannot_be_written(cli, two_runs, tmp_path):
    root, _ = two_runs
    (tmp_path / "a-file").write_text("x")
    code, _, err = cli("table", "--results", root, "--out", tmp_path / "a-file")
    one_line(code, err, "--out", "a-file: not a folder")
    code, _, err = cli("table", "--results", root, "--out", tmp_path / "a-file" / "paper")
    one_line(code, err, "a-file", "cannot create the folder")
    code, _, err = cli("table", "--results", root, "--out", "/sys/paper")  # a place nobody, root included, writes
    one_line(code, err, "/sys/", "cannot create the folder")
    mine = tmp_path / "thesis"
    mine.mkdir()
    (mine / "chapter1.tex").write_text("mine")
    code, _, err = cli("table", "--results", root, "--out", mine)
    one_line(code, err, "--out", "thesis: holds files that ssbench table did not write")
    assert (mine / "chapter1.tex").read_text() == "mine"


# --- the dataset's identity in the hash, the folder and the table ----------------------------------------------


def _named(root, name, **kw):
    from formats import write_nnunet

    write_nnunet(root, **kw)
    spec = json.loads((root / "dataset.json").read_text())
    if name is not None:
        spec["name"] = name
    (root / "dataset.json").write_text(json.dumps(spec))
    return root


@pytest.mark.slow
def test_two_nnunet_datasets_never_share_a_folder_or_a_table_cell(cli, tmp_path):
    liver, spleen = _named(tmp_path / "d1", "Liver"), _named(tmp_path / "d2", "Spleen", seed=3)
    out = tmp_path / "results"
    for root in (liver, spleen):
        code, _, err = cli("run", *tiny_args(root, out))
        assert code == 0, err
    runs = sorted(p.parent.relative_to(out).parts[0] for p in out.rglob("run.json"))
    assert runs == ["nnunet-Liver", "nnunet-Spleen"]
    hashes = {yaml.safe_load(p.read_text())["config_hash"] for p in out.rglob("config.yaml")}
    assert len(hashes) == 2
    stdout = _table(out, tmp_path / "paper")
    assert len(_used(stdout)) == 2
    assert (tmp_path / "paper" / "main_nnunet-Liver.csv").is_file()
    assert (tmp_path / "paper" / "main_nnunet-Spleen.csv").is_file()


def test_unnamed_datasets_differ_in_the_hash_and_overwrite_never_destroys_the_other(cli, tiny_run, tmp_path):
    out = tiny_run.parents[3]  # results/nnunet/supervised/2/seed1337
    other = _named(tmp_path / "other", None, cases=12)
    c1 = yaml.safe_load((tiny_run / "config.yaml").read_text())
    from conftest import TINY_RUN

    code, shown, err = cli("config", "--method", "supervised", "--data-root", other,
                           *[a for a in TINY_RUN if a != "--quiet"])
    assert code == 0, err
    assert yaml.safe_load(shown)["config_hash"] != c1["config_hash"]
    assert yaml.safe_load(shown)["data"]["identity"] != c1["data"]["identity"]
    before = (tiny_run / "metrics_per_case.csv").read_bytes()
    for extra in ((), ("--overwrite",)):
        code, _, err = cli("run", *tiny_args(other, out, *extra))
        one_line(code, err, "seed1337: holds a run on other data", "another --out")
    assert (tiny_run / "metrics_per_case.csv").read_bytes() == before


def test_the_identity_is_refused_on_the_command_line(cli, tiny_nnunet, tmp_path):
    code, _, err = cli("run", *tiny_args(tiny_nnunet, tmp_path / "o", "--set", "data.identity=abc"))
    one_line(code, err, "--set data.identity: set by the dataset's files")


# --- 4. other: working directory, folder names, messages ---------------------------------------------------------


def test_the_data_root_is_recorded_absolute(cli, tiny_nnunet, tmp_path, monkeypatch):
    from conftest import TINY_RUN

    monkeypatch.chdir(tiny_nnunet.parent)
    code, shown, err = cli("config", "--method", "supervised", "--data-root", tiny_nnunet.name,
                           *[a for a in TINY_RUN if a != "--quiet"])
    assert code == 0, err
    assert yaml.safe_load(shown)["data"]["root"] == str(tiny_nnunet)


def test_eval_data_root_finds_moved_data_and_refuses_other_data(cli, tiny_run, tiny_nnunet, tmp_path):
    run = shutil.copytree(tiny_run, tmp_path / "run")
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["data"]["root"] = "data-that-moved"  # relative and gone: the root is not part of the hash
    (run / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    code, _, err = cli("eval", run, "--hd-units", "voxel", "--device", "cpu")
    one_line(code, err, "data-that-moved: data root does not exist")
    other = _named(tmp_path / "other", None, cases=12)
    code, _, err = cli("eval", run, "--hd-units", "voxel", "--device", "cpu", "--data-root", other)
    one_line(code, err, "other: not the data this run used")
    assert not (run / "evals").exists()
    moved = shutil.copytree(tiny_nnunet, tmp_path / "moved")
    code, _, err = cli("eval", run, "--hd-units", "mm", "--device", "cpu", "--data-root", moved)
    assert code == 0, err
    pd.testing.assert_frame_equal(pd.read_csv(run / "evals" / "worst-mm" / "metrics_per_case.csv"),
                                  pd.read_csv(run / "metrics_per_case.csv"))  # the same data, the same numbers


@pytest.mark.parametrize("name", ["../../escaped", "a/b", ".hidden", ""], ids=["dotdot", "slash", "dot", "empty"])
def test_plugin_names_must_be_folder_names(cli, tiny_nnunet, tmp_path, name):
    plugin = tmp_path / "escaper.py"
    plugin.write_text(f"from ssbench.methods.supervised import Supervised\n\n\nclass Escaper(Supervised):\n"
                      f"    name = {name!r}\n")
    out = tmp_path / "deep" / "results"
    code, _, err = cli("run", "--method", name or "x", *tiny_args(tiny_nnunet, out)[2:], "--plugin", plugin)
    one_line(code, err, "escaper")
    assert not (tmp_path / "deep").exists() and not (tmp_path / "escaped").exists()


def test_a_checkpoint_refused_by_weights_only_never_quotes_the_advice_to_disable_it(cli, tiny_run, tmp_path):
    import torch

    run = shutil.copytree(tiny_run, tmp_path / "run")
    torch.save({"method": {}, "config_hash": "x", "f": os.getcwd}, run / "checkpoints" / "best.pt")
    code, _, err = cli("eval", run, "--device", "cpu")
    one_line(code, err, "best.pt: not a readable checkpoint", "Python objects other than tensors", "getcwd")
    assert "weights_only" not in err and "False" not in err


def test_an_empty_test_set_is_refused_before_training(cli, tiny_nnunet, tmp_path):
    """nnunet.test_fraction=0 draws no test case: refused before anything trains (it was found after training)."""
    out = tmp_path / "o"
    code, _, err = cli("run", *tiny_args(tiny_nnunet, out, "--set", "nnunet.test_fraction=0"))
    one_line(code, err, "dataset nnunet", "the test set is empty")
    assert not out.exists()
    code, _, err = cli("split", "--dataset", "nnunet", "--data-root", tiny_nnunet, "--split", "2",
                       "--json")  # the defaults: a test set
    assert code == 0, err


@pytest.mark.parametrize("value", [1.5, True, [1, 2]], ids=["fraction", "bool", "region"])
def test_an_nnunet_label_value_that_is_not_an_integer_is_named(cli, tiny_nnunet, tmp_path, value):
    root = shutil.copytree(tiny_nnunet, tmp_path / "d")
    (root / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "organ": value}}))
    code, _, err = cli("split", "--dataset", "nnunet", "--data-root", root, "--split", "2")
    one_line(code, err, "dataset.json: labels: 'organ' has the value", "not an integer label value")


def test_a_dataset_name_becomes_a_plain_folder_name(tiny_nnunet, tmp_path):
    from ssbench.datasets.nnunet import NNUNet

    root = shutil.copytree(tiny_nnunet, tmp_path / "d")
    spec = json.loads((root / "dataset.json").read_text())
    (root / "dataset.json").write_text(json.dumps({**spec, "name": "../../evil name"}))
    ident = NNUNet(root).identity()
    assert ident["name"] == "evil_name" and ident["classes"] == ["organ", "lesion"] and ident["cases"] == 10
    assert ident["digest"] != NNUNet(tiny_nnunet).identity()["digest"]
