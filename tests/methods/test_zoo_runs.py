"""BCP, ABD and AD-MT end to end as a user runs them: ``ssbench run`` (a few steps on the tiny dataset),
``ssbench eval``, ``ssbench table`` under their published names, the zoo sweep grid, and a run on real-format ACDC
folders (tests/helpers/formats.py)."""

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import TINY_RUN

# A 2-step pre-train where there is one, then 4 steps; validation and a resumable checkpoint every 2.
SETS = {"bcp": ("--set", "bcp.pretrain_iters=2"), "abd": ("--set", "abd.pretrain_iters=2"), "admt": ()}
FOLDER = {"bcp": "bcp@pretrain_iters=2/2/seed1337", "abd": "abd@pretrain_iters=2/2/seed1337",
          "admt": "admt/2/seed2023"}


@pytest.fixture(scope="module")
def zoo_runs(tmp_path_factory, tiny_nnunet):
    from ssbench.cli import main
    import sys

    out = tmp_path_factory.mktemp("zoo") / "results"
    for method, sets in SETS.items():
        old = sys.argv
        sys.argv = ["ssbench", "run", "--method", method, "--data-root", str(tiny_nnunet), "--out", str(out),
                    *TINY_RUN, "--iters", "4", *sets]
        try:
            main()
        except SystemExit as exc:
            assert not exc.code, (method, exc.code)
        finally:
            sys.argv = old
    return out


def _run(out, method) -> Path:
    return out / "nnunet" / FOLDER[method]


def test_each_method_records_its_recipe_networks_and_stages(zoo_runs):
    for method in SETS:
        run = _run(zoo_runs, method)
        info = json.loads((run / "run.json").read_text())
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        log = pd.read_csv(run / "train_log.csv")
        assert info["status"] == "complete" and info["method_display_name"] == {"bcp": "BCP", "abd": "ABD",
                                                                               "admt": "AD-MT"}[method]
        assert cfg["eval"]["also_protocols"] == ["bcp"] and (run / "evals" / "legacy-zero-voxel").is_dir()
        if method == "admt":
            assert cfg["train"]["seed"] == 2023 and cfg["train"]["lr_schedule"] == "poly"
            assert info["evaluated_model"] == "student" and "stages" not in info
            assert log["lr"].iloc[-1] < log["lr"].iloc[0]
            continue
        assert cfg["train"]["lr_schedule"] == "constant" and set(log["lr"]) == {0.01}  # constant in both stages
        assert [s["name"] for s in info["stages"]] == ["pretrain", "train"] and info["stages"][0]["iters"] == 2
        assert list(log["stage"]) == ["pretrain"] * 2 + ["train"] * 4
        assert (run / "checkpoints" / "pretrain-best.pt").is_file()
        assert info["evaluated_model"] == {"bcp": "student", "abd": "model1"}[method]
        if method == "abd":
            assert info["optimizers"] == ["model1", "model2"]
            assert info["stages"][1]["optimizer_from"] == {"model2": "model1"}
            assert {"loss_cross_mixed", "loss_cross_displaced"} <= set(log.columns)


def test_eval_and_table_show_the_methods_under_their_published_names(zoo_runs, cli, tmp_path):
    run = _run(zoo_runs, "bcp")
    auto = pd.read_csv(run / "evals" / "legacy-zero-voxel" / "metrics_per_case.csv")
    code, _, err = cli("eval", run, "--protocol", "bcp")
    assert code == 0, err
    pd.testing.assert_frame_equal(pd.read_csv(run / "evals" / "legacy-zero-voxel" / "metrics_per_case.csv"), auto)
    out = tmp_path / "paper"
    code, stdout, err = cli("table", "--results", zoo_runs, "--out", out, "--format", "csv,md")
    assert code == 0, err
    rows = set(pd.read_csv(out / "main_nnunet.csv")["row"])
    for name in ("BCP", "ABD", "AD-MT"):
        assert any(r == name or r.startswith(name + " ") for r in rows), rows
    notes = (out / "main_nnunet-notes.tex").read_text() if (out / "main_nnunet-notes.tex").exists() else ""
    md = (out / "main_nnunet.md").read_text() if (out / "main_nnunet.md").exists() else notes
    assert "2 pretrain + 4 train iterations" in md + notes  # a staged method's length is both stages


def test_the_zoo_grid_is_every_builtin_method_on_acdc_at_5_and_10_percent_with_3_seeds(tmp_path):
    from ssbench import registry
    from ssbench.sweep.grid import load_grid

    g = load_grid("zoo")
    builtin = {e.name for e in registry.entries(registry.METHODS_GROUP) if e.builtin}
    assert set(g.methods) == builtin >= {"bcp", "abd", "admt", "supervised", "mean-teacher", "unimatch"}
    assert (g.datasets, g.splits, g.seeds) == (("acdc",), ("5%", "10%"), (0, 1, 2))


@pytest.fixture(scope="module")
def acdc_raw(tmp_path_factory):
    """The raw challenge archive written with nibabel (every patient: the SSL methods read the unlabeled ones)."""
    from formats import write_acdc_raw
    from ssbench.datasets.acdc import ACDC

    split = ACDC.frozen_split("1")
    return write_acdc_raw(tmp_path_factory.mktemp("acdc") / "raw",
                          sorted(split.labeled + split.unlabeled + split.val + split.test), shape_xyz=(32, 32, 3))


@pytest.mark.parametrize("method", [pytest.param("bcp", marks=pytest.mark.slow), "abd",
                                    pytest.param("admt", marks=pytest.mark.slow)])
def test_the_methods_run_on_real_format_acdc_folders(acdc_raw, tmp_path, cli, method):
    out = tmp_path / "results"
    code, _, err = cli("run", "--method", method, "--data-root", acdc_raw, "--split", "1", "--out", out, "--iters",
                       "2", "--device", "cpu", "--quiet", "--set", "data.train_size=32", "--set",
                       "train.batch_labeled=2", "--set", "train.batch_unlabeled=2", "--set", "train.val_every=2",
                       *SETS[method])
    assert code == 0, err
    run = next((out / "acdc").glob(f"{method}*/1/seed*"))
    frame = pd.read_csv(run / "metrics_per_case.csv")
    assert len(frame) == 40 * 3 * 2 and (frame["hd_units"] == "mm").all()  # 40 test volumes, 3 classes, 2 checkpoints
    legacy = pd.read_csv(run / "evals" / "legacy-zero-voxel" / "metrics_per_case.csv")
    assert (legacy["hd_units"] == "voxel").all() and (legacy["empty_policy"] == "legacy-zero").all()
    assert len(legacy) == len(frame)
