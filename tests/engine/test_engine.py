"""End-to-end runs on the embedded phantom with a tiny recipe: results layout, numbers traceable to the per-case
file, validation-only selection and atomic publication (--resume: tests/engine/test_resume.py, tests/engine/test_crash.py)."""

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from ssbench.engine.plan import RunRequest
from ssbench.engine.run import execute
from ssbench.errors import UserError

pytestmark = pytest.mark.slow  # whole runs on the embedded phantom (the tiny-dataset tests cover the same paths fast)

TINY = ("train.val_every=3", "train.checkpoint_every=3", "data.train_size=32", "train.batch_labeled=2",
        "train.batch_unlabeled=2")


def _request(out, **kw):
    base = dict(method="supervised", split="1", iters=6, sets=TINY, out=str(out), device="cpu", quiet=True)
    base.update(kw)
    return RunRequest(**base)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, acdc_phantom):
    out = tmp_path_factory.mktemp("results")
    return execute(_request(out))


def test_results_folder_is_complete_and_traceable(finished_run):
    run = finished_run
    assert run.name == "seed1337" and run.parent.name == "1" and run.parts[-4:-2] == ("acdc-phantom", "supervised")
    assert not any(p.name.endswith(".incomplete") for p in run.parent.iterdir())
    names = {p.name for p in run.iterdir()}
    assert {"config.yaml", "run.json", "split.json", "metrics_per_case.csv", "summary.json", "train_log.csv",
            "checkpoints"} <= names
    assert {p.name for p in (run / "checkpoints").iterdir()} == {"best.pt", "final.pt"}
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "complete" and info["versions"]["torch"] and info["wall_time_s"] > 0
    assert info["warnings"] and "phantom" in info["warnings"][0]
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["config_hash"] == info["config_hash"]
    assert cfg["eval"] == {"empty": "worst", "hd_units": "mm", "connectivity": 1, "also_protocols": []}
    assert cfg["data"]["synthetic"] is True and cfg["train"]["recipe"] == "cpu-small"
    split = json.loads((run / "split.json").read_text())
    assert split["labeled"] == ["patient099"] and len(split["test"]) == 20

    frame = pd.read_csv(run / "metrics_per_case.csv")
    assert len(frame) == 40 * 3 * 2  # volumes x classes x checkpoints
    assert set(frame["checkpoint"]) == {"best", "final"}
    assert set(frame["status"]) <= {"ok", "missed", "false_positive", "absent"}
    summary = json.loads((run / "summary.json").read_text())
    for ckpt in ("best", "final"):
        rows = frame[(frame.checkpoint == ckpt) & (frame.status != "absent")]
        per_class = rows.groupby("class")["dice"].mean()
        for cls, value in per_class.items():
            assert summary["checkpoints"][ckpt]["per_class"][cls]["dice"] == pytest.approx(value)
        assert summary["checkpoints"][ckpt]["mean"]["dice"] == pytest.approx(per_class.mean())
    log = pd.read_csv(run / "train_log.csv")
    assert list(log["iteration"]) == [1, 2, 3, 4, 5, 6]
    assert log["val_dice"].notna().sum() == 2  # iterations 3 and 6
    best_iter = summary["selection"]["best_iteration"]
    assert best_iter == int(log.loc[log["val_dice"].idxmax(), "iteration"])


def test_checkpoints_load_with_weights_only(finished_run):
    import torch

    state = torch.load(finished_run / "checkpoints" / "best.pt", weights_only=True)
    assert state["config_hash"] == json.loads((finished_run / "run.json").read_text())["config_hash"]


def test_existing_run_is_not_overwritten_silently(finished_run, acdc_phantom):
    out = finished_run.parents[3]
    with pytest.raises(UserError, match="already there"):
        execute(_request(out))


def test_eval_reevaluates_under_another_policy(finished_run, cli):
    code, out, err = cli("eval", finished_run, "--hd-units", "voxel", "--empty-policy", "legacy-zero", "--device", "cpu")
    assert code == 0, err
    sub = finished_run / "evals" / "legacy-zero-voxel"
    frame = pd.read_csv(sub / "metrics_per_case.csv")
    orig = pd.read_csv(finished_run / "metrics_per_case.csv")
    assert (frame["hd_units"] == "voxel").all() and (frame["empty_policy"] == "legacy-zero").all()
    np.testing.assert_allclose(frame["dice"].fillna(-1), orig["dice"].fillna(-1))  # same predictions
    missed = frame["status"].isin(["missed", "false_positive"])
    assert missed.any() and (frame.loc[missed, "hd95"] == 0).all()


def test_test_set_is_read_for_metrics_only_after_training(tmp_path, acdc_phantom, monkeypatch):
    """Test volumes are validated before training (so bad files stop the run early), but model selection sees
    only val cases and the test set is predicted once, after training, for the two checkpoints."""
    from ssbench.datasets.acdc import ACDC
    from ssbench.engine import evaluate as evaluate_mod
    from ssbench.engine import train as train_mod

    test_ids = set(ACDC.frozen_split("1").test)
    events = []
    original_select, original_eval = train_mod.mean_val_dice, evaluate_mod.evaluate_cases

    def spy_select(method, cases, cfg, device, *detail):
        assert not {c.patient_id for c in cases} & test_ids
        events.append("select")
        return original_select(method, cases, cfg, device, *detail)

    def spy_eval(method, cases, dataset, cfg, device, checkpoint, predictions=None):
        assert {c.patient_id for c in cases} == test_ids
        events.append(f"test-{checkpoint}")
        return original_eval(method, cases, dataset, cfg, device, checkpoint, predictions)

    monkeypatch.setattr(train_mod, "mean_val_dice", spy_select)
    monkeypatch.setattr(evaluate_mod, "evaluate_cases", spy_eval)
    execute(_request(tmp_path))
    assert events == ["select", "select", "test-best", "test-final"]


@pytest.mark.parametrize("val_scores", [(0.9, 0.1), (0.1, 0.9)], ids=["best-before-final", "best-is-final"])
def test_the_test_set_is_predicted_again_only_for_other_weights(tmp_path, tiny_nnunet, monkeypatch, val_scores):
    """Best and final checkpoints are both scored; when the best is the final one (the same weights), its
    predictions are not made twice: the final rows and prediction file are the best's, under the final's name."""
    from conftest import tiny_request

    from ssbench.engine import evaluate as evaluate_mod
    from ssbench.engine import train as train_mod

    scores, calls = iter(val_scores), []
    monkeypatch.setattr(train_mod, "mean_val_dice", lambda *a: next(scores))
    original = evaluate_mod.evaluate_cases
    monkeypatch.setattr(evaluate_mod, "evaluate_cases", lambda *a, **k: calls.append(a[5]) or original(*a, **k))
    run = execute(tiny_request(tiny_nnunet, tmp_path, iters=4))
    frame = pd.read_csv(run / "metrics_per_case.csv")
    best, final = (frame[frame["checkpoint"] == c].drop(columns="checkpoint").reset_index(drop=True)
                   for c in ("best", "final"))
    assert len(best) == len(final) == 2 * 2  # 2 test cases x 2 classes
    preds = [np.load(run / "predictions" / f"{c}.npz") for c in ("best", "final")]
    same = all(np.array_equal(preds[0][k], preds[1][k]) for k in preds[0].files)
    if val_scores[0] > val_scores[1]:
        assert calls == ["best", "final"]
    else:
        assert calls == ["best"] and same
        pd.testing.assert_frame_equal(best, final)


def test_end_to_end_on_acdc_folders_ssbench_did_not_write(tmp_path):
    """The raw archive written with nibabel directly, and the literature's h5 layout written with h5py."""
    from formats import write_acdc_h5, write_acdc_raw
    from ssbench.datasets.acdc import ACDC

    split = ACDC.frozen_split("1")
    patients = list(split.labeled + split.val + split.test)
    raw = write_acdc_raw(tmp_path / "raw", patients)
    run = execute(_request(tmp_path / "out", data_root=str(raw), iters=2, sets=TINY + ("train.val_every=1",)))
    assert run.parts[-4] == "acdc"  # real-format data: no phantom tag
    frame = pd.read_csv(run / "metrics_per_case.csv")
    assert len(frame) == 40 * 3 * 2 and (frame["hd_units"] == "mm").all()
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["data"]["synthetic"] is False and cfg["train"]["recipe"] == "published"
    assert cfg["data"]["train_size"] == 32  # --set wins over the published 256
    preds = np.load(run / "predictions" / "best.npz")
    assert set(preds.files) == set(frame["case_id"]) and preds["patient001_frame01"].shape == (6, 40, 48)

    h5 = write_acdc_h5(tmp_path / "h5", patients)
    run = execute(_request(tmp_path / "out2", data_root=str(h5), iters=2, sets=TINY + ("train.val_every=1",)))
    frame = pd.read_csv(run / "metrics_per_case.csv")
    assert (frame["hd_units"] == "voxel").all()  # the h5 layout keeps no spacing
    with pytest.raises(UserError, match="keep no voxel spacing"):
        execute(_request(tmp_path / "out3", data_root=str(h5), iters=2, sets=TINY + ("eval.hd_units=mm",)))


def test_a_live_run_folder_is_not_taken_over(tmp_path, acdc_phantom):
    import os
    import subprocess

    staging = tmp_path / "acdc-phantom" / "supervised" / "1" / ".seed1337.incomplete"
    staging.mkdir(parents=True)
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        (staging / "LOCK").write_text(str(sleeper.pid))
        with pytest.raises(UserError, match="another ssbench run"):
            execute(_request(tmp_path))
    finally:
        sleeper.kill()
    assert os.path.isdir(staging)


def test_end_to_end_on_the_bhsd_phantom(tmp_path, bhsd_phantom):
    run = execute(_request(tmp_path, dataset="bhsd", split="10%", iters=2,
                           sets=TINY + ("train.val_every=1", "bhsd.window=[0,80]")))
    assert run.parts[-4:-1] == ("bhsd-phantom", "supervised", "10pct")
    frame = pd.read_csv(run / "metrics_per_case.csv")
    assert set(frame["class"]) == {"EDH", "IPH", "IVH", "SAH", "SDH"}
    assert frame["case_id"].nunique() == 20  # dataset.json's test list
    assert (frame["status"] == "absent").any()  # lesion classes are often absent: a status, not a number
    assert frame.loc[frame.status == "absent", "dice"].isna().all()
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["bhsd"]["window"] == [0.0, 80.0] and cfg["bhsd"]["storage"] == "auto"
