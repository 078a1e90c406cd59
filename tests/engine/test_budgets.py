"""Budgets and folders that say what they are (issue 29, items 3 and 4): one training length per run, staged
methods scaled by --iters the same way on any data, differing lengths said in the table; a completed run's refusal
names what differs; a phantom written by ``ssbench data synth`` is filed and warned as one."""

import shutil

import pandas as pd
import pytest

from conftest import TINY_RUN, one_line, tiny_request
from report_runs import build_tables, write_run
from ssbench.engine.plan import RunRequest, build_config, dataset_tag
from ssbench.engine.run import execute
from ssbench.errors import UserError


def test_iters_and_set_train_iters_that_disagree_are_refused(cli, tiny_nnunet, tmp_path):
    code, _, err = cli("run", "--method", "supervised", "--data-root", tiny_nnunet, "--out", tmp_path, *TINY_RUN,
                       "--set", "train.iters=100")
    one_line(code, err, "--iters 6 and --set train.iters=100: two training lengths")
    agree, _, _ = build_config(tiny_request(tiny_nnunet, tmp_path, sets=("train.iters=6",)))
    assert agree.train.iters == 6


def test_bcp_pretrain_scales_with_iters_on_real_data_as_on_the_phantom(tiny_nnunet):
    real, _, _ = build_config(RunRequest(method="bcp", dataset="nnunet", data_root=str(tiny_nnunet), iters=300))
    phantom, _, _ = build_config(RunRequest(method="bcp", dataset="acdc", iters=300))
    assert real.method_config.pretrain_iters == phantom.method_config.pretrain_iters == 100  # 10,000 x 300 / 30,000
    recipe, _, _ = build_config(RunRequest(method="bcp", dataset="nnunet", data_root=str(tiny_nnunet)))
    assert recipe.method_config.pretrain_iters == 10000  # no --iters: the published schedule
    given, _, _ = build_config(RunRequest(method="bcp", dataset="nnunet", data_root=str(tiny_nnunet), iters=300,
                                          sets=("bcp.pretrain_iters=7",)))
    assert given.method_config.pretrain_iters == 7  # --set still wins


def test_the_table_says_when_rows_trained_for_different_lengths(tmp_path):
    root = tmp_path / "results"
    for seed in (1, 2):
        write_run(root, "supervised", seed=seed, settings={"train.iters": 600})
        write_run(root, "mean-teacher", seed=seed, settings={"train.iters": 200})
    build_tables(root, tmp_path / "paper", formats=("md", "csv"))
    md = (tmp_path / "paper" / "main_acdc.md").read_text()
    assert "Training lengths DIFFER between rows" in md and "Mean Teacher: 200 iterations" in md
    frame = pd.read_csv(tmp_path / "paper" / "main_acdc.csv")
    assert dict(frame.drop_duplicates("method")[["method", "train_iters"]].values) == {"supervised": 600,
                                                                                      "mean-teacher": 200}


def test_a_refused_rerun_names_the_settings_that_differ(tiny_run, tiny_nnunet):
    out = tiny_run.parents[3]
    with pytest.raises(UserError, match=r"its config differs: data.train_size: 32 -> 48; train.iters: 6 -> 4"):
        execute(tiny_request(tiny_nnunet, out, iters=4, sets=("data.train_size=48",)))
    with pytest.raises(UserError, match="the same config"):
        execute(tiny_request(tiny_nnunet, out))


def test_a_phantom_from_data_synth_is_filed_and_warned_as_a_phantom(acdc_phantom, tmp_path):
    copy = shutil.copytree(acdc_phantom, tmp_path / "my-acdc")  # e.g. `ssbench data synth --dataset acdc --out ...`
    cfg, _, _ = build_config(RunRequest(method="supervised", dataset="acdc", data_root=str(copy)))
    assert cfg.data.synthetic and dataset_tag(cfg) == "acdc-phantom"
    (copy / "PHANTOM.json").unlink()  # real data (no marker): filed under the dataset's name
    cfg, _, _ = build_config(RunRequest(method="supervised", dataset="acdc", data_root=str(copy)))
    assert not cfg.data.synthetic and dataset_tag(cfg) == "acdc"
