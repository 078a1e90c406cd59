"""Tracking (ssbench.engine.tracking): a run's TensorBoard events hold what its train_log.csv holds, read back with
tensorboard's own readers; a resumed run has each step once in TensorBoard and in a W&B offline run; a failing
backend is one warning and the run completes; logging never holds the training loop up."""

from __future__ import annotations

import json
import struct
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import tiny_request
from runs import RUN


def tb_events(folder: Path) -> list:
    """Every event of every event file under ``folder``, as written (tensorboard's raw reader: no purging)."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    return [e for p in sorted(folder.glob("events.out.tfevents.*")) for e in EventFileLoader(str(p)).Load()]


def tb_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] as tensorboard's EventAccumulator reads them, orphan purging off (a duplicated step
    stays visible)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0}, purge_orphaned_data=False)
    acc.Reload()
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}


def assert_events_match_log(run: Path) -> None:
    log = pd.read_csv(run / "train_log.csv")
    scalars = tb_scalars(run / "tensorboard")
    for column in log.columns.drop(["iteration", "stage"], errors="ignore"):
        tag = {"val_dice": "val/dice", "elapsed_s": "time/elapsed_s"}.get(column, f"train/{column}")
        rows = log[["iteration", column]].dropna()
        steps, values = zip(*scalars[tag])
        assert list(steps) == rows["iteration"].tolist(), column  # each logged step, once, in order
        np.testing.assert_allclose(values, rows[column], rtol=1e-6, err_msg=column)  # event values are float32


def test_tensorboard_events_hold_the_train_log(tiny_run):
    """The tiny run (TensorBoard by default): every train_log.csv column under its tag at the same steps with the
    same values; each parameter group's rate, per-class validation Dice, overlays at each validation, the config."""
    assert_events_match_log(tiny_run)
    log = pd.read_csv(tiny_run / "train_log.csv")
    scalars = tb_scalars(tiny_run / "tensorboard")
    assert [v for _, v in scalars["lr/main/group0"]] == pytest.approx(log["lr"].tolist())
    val_steps = log.dropna(subset=["val_dice"])["iteration"].tolist()
    for name in ("organ", "lesion"):  # the tiny dataset's classes
        assert [s for s, _ in scalars[f"val/dice_{name}"]] == val_steps
    images = [(e.step, v.tag) for e in tb_events(tiny_run / "tensorboard") if e.HasField("summary")
              for v in e.summary.value if v.metadata.plugin_data.plugin_name == "images"]
    assert sorted({s for s, _ in images}) == val_steps and all(t.startswith("val/overlay/") for _, t in images)
    texts = [v for e in tb_events(tiny_run / "tensorboard") for v in e.summary.value if v.tag.startswith("config")]
    assert texts and b"config_hash" in texts[0].tensor.string_val[0]
    assert json.loads((tiny_run / "run.json").read_text())["tracking"] == {"backends": ["tensorboard"], "failed": {}}


def wandb_history(run: Path) -> list[dict]:
    """The history rows of the W&B offline runs under ``run``: its ``.wandb`` files (LevelDB log records of
    wandb's Record protobuf), read as ``wandb sync`` would send them."""
    rows = []
    for path in sorted(run.glob("wandb/offline-run-*/run-*.wandb")):
        for record in _records(path):
            if record.WhichOneof("record_type") == "history":
                rows.append({(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in record.history.item})
    return rows


@pytest.mark.slow
def test_a_resumed_run_has_each_step_once_in_tensorboard_and_wandb(tiny_nnunet, tmp_path, monkeypatch):
    """Interrupted after the checkpoint at 4 with row 5 already written to both backends, then resumed: the event
    files are cut back to 4 and the W&B offline run replaced by a replay up to 4, so rows 1..6 appear once each
    with the uninterrupted values (train_log.csv)."""
    pytest.importorskip("wandb")
    from ssbench.engine.run import execute
    from ssbench.methods.supervised import Supervised

    monkeypatch.setenv("WANDB_MODE", "offline")
    out, log = tmp_path / "results", ("tensorboard", "wandb")
    original = Supervised.training_step

    def step(self, labeled, unlabeled, info):
        if info.iteration == 5:
            raise KeyboardInterrupt
        return original(self, labeled, unlabeled, info)

    with monkeypatch.context() as m:
        m.setattr(Supervised, "training_step", step)
        with pytest.raises(KeyboardInterrupt):
            execute(tiny_request(tiny_nnunet, out, log=log))
    staging = out / RUN.with_name(".seed1337.incomplete")
    before = [e.step for e in tb_events(staging / "tensorboard") for v in e.summary.value if v.tag == "train/loss"]
    assert before == [1, 2, 3, 4, 5]  # row 5 came after the last checkpoint (4): the resume runs it again
    assert [r["_step"] for r in wandb_history(staging) if "train/loss" in r] == [1, 2, 3, 4, 5]

    run = execute(tiny_request(tiny_nnunet, out, log=log, resume=True))
    counts = Counter((e.step, v.tag) for e in tb_events(run / "tensorboard") for v in e.summary.value)
    assert counts and max(counts.values()) == 1, [k for k, n in counts.items() if n > 1]
    assert_events_match_log(run)
    history = [r for r in wandb_history(run) if "train/loss" in r]
    logged = pd.read_csv(run / "train_log.csv")
    assert [r["_step"] for r in history] == logged["iteration"].tolist()
    assert [r["train/loss"] for r in history] == pytest.approx(logged["loss"].tolist(), rel=1e-12)
    assert json.loads((run / "run.json").read_text())["tracking"]["failed"] == {}


@pytest.mark.slow
def test_a_failing_backend_is_one_warning_and_the_run_completes(tiny_nnunet, tmp_path, monkeypatch, capsys):
    """W&B asked for with a mode it refuses (as a bad setting or a dead service would fail it): one warning line,
    named in run.json; TensorBoard beside it still gets every row; the run completes."""
    pytest.importorskip("wandb")
    from ssbench.engine.run import execute

    monkeypatch.setenv("WANDB_MODE", "no-such-mode")
    run = execute(tiny_request(tiny_nnunet, tmp_path, log=("wandb", "tensorboard")))
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if "tracking with" in line]
    assert len(warnings) == 1 and "wandb failed during open" in warnings[0], err
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "complete" and list(info["tracking"]["failed"]) == ["wandb"]
    assert_events_match_log(run)


def test_a_backend_that_fails_later_is_dropped_after_one_warning(tmp_path):
    """TensorBoard into a folder that cannot be made (a file stands there): one warning for the first call, none for
    the hundred after, and the failure recorded."""
    from ssbench.engine.tracking import Tracker

    (tmp_path / "tensorboard").write_text("not a folder")
    seen = []
    tracker = Tracker(["tensorboard"], tmp_path, {"config_yaml": "", "config_flat": {}}, warn=seen.append)
    tracker.start(0)
    for step in range(1, 101):
        tracker.log(step, {"train/loss": 1.0 / step})
    tracker.flush()
    tracker.close()
    assert len(seen) == 1 and "tensorboard failed during open" in seen[0]
    assert list(tracker.record()["failed"]) == ["tensorboard"]
    assert len(tracker.history) == 100  # kept for a resume all the same


def test_logging_never_waits_for_a_backend(tmp_path):
    """A backend stuck on its disk or network: ``log`` and ``image`` return at once (the worker thread waits, not
    the training loop); ``flush`` gives up after its timeout."""
    from ssbench.engine import tracking

    release = threading.Event()

    class Stuck(tracking.Backend):
        name = "stuck"
        flushes = True  # a disk that hangs: a checkpoint's flush waits for it, at most its timeout

        def scalars(self, step, values):
            release.wait(30)

    tracker = tracking.Tracker([], tmp_path, {})
    tracker.backends = [Stuck(tmp_path, {})]
    tracker.start(0)
    t0 = time.perf_counter()
    for step in range(1, 201):
        tracker.log(step, {"train/loss": 1.0})
        tracker.image(step, "val/overlay/x", np.zeros((4, 12, 3), np.uint8))
    assert time.perf_counter() - t0 < 1.0  # 400 calls, queued; the first one is blocked for up to 30 s
    t0 = time.perf_counter()
    tracker.flush(timeout=0.2)
    assert 0.2 <= time.perf_counter() - t0 < 5.0
    release.set()
    tracker.close()

    class StuckNetwork(Stuck):  # a backend that replays on resume (W&B, MLflow): a checkpoint does not wait for it
        flushes = False

    release.clear()
    tracker = tracking.Tracker([], tmp_path, {})
    tracker.backends = [StuckNetwork(tmp_path, {})]
    tracker.start(0)
    tracker.log(1, {"train/loss": 1.0})
    t0 = time.perf_counter()
    tracker.flush(timeout=5.0)
    assert time.perf_counter() - t0 < 1.0
    release.set()
    tracker.close()


def test_log_option_names_known_backends(cli, tiny_nnunet, tmp_path):
    from conftest import one_line, tiny_args
    from ssbench.engine.tracking import parse_backends

    assert parse_backends("tensorboard, wandb") == ("tensorboard", "wandb")
    assert parse_backends("none") == ()
    code, _, err = cli("run", *tiny_args(tiny_nnunet, tmp_path, "--log", "tensorboard,aim"))
    one_line(code, err, "--log tensorboard,aim", "'aim'", "tensorboard, wandb, mlflow")
    assert not tmp_path.joinpath("nnunet").exists()


@pytest.mark.slow  # a matplotlib figure: about 4 s
def test_the_curves_figure_reads_the_event_files(tiny_run, tmp_path):
    """``ssbench table``'s curves come from a run's TensorBoard events: with train_log.csv's losses zeroed the
    figure still draws the tracked ones (its moving mean of them) and the tracked validation Dice."""
    import shutil

    from ssbench.report import figures
    from ssbench.report.collect import collect
    from ssbench.report.pooling import layouts

    run = tmp_path / "results" / "nnunet" / "supervised" / "2" / "seed1337"
    shutil.copytree(tiny_run, run)
    log = pd.read_csv(run / "train_log.csv")
    log.assign(loss=0.0, val_dice=log["val_dice"] * 0).to_csv(run / "train_log.csv", index=False)
    (lay,) = layouts(collect(tmp_path / "results", "best")[0])
    fig = figures.learning_curves(lay, figures.palette(["supervised"]))
    ax_loss, ax_val = fig.axes[:2]
    (loss,), (val,) = ax_loss.get_lines(), ax_val.get_lines()
    tracked = tb_scalars(run / "tensorboard")
    steps, values = map(np.array, zip(*tracked["train/loss"]))
    window = min(20, max(1, len(values) // 10))
    np.testing.assert_allclose(loss.get_xdata(), steps)
    np.testing.assert_allclose(loss.get_ydata(), pd.Series(values).rolling(window, min_periods=1).mean(), rtol=1e-6)
    v_steps, v_values = map(np.array, zip(*tracked["val/dice"]))
    np.testing.assert_allclose(val.get_xdata(), v_steps)
    np.testing.assert_allclose(val.get_ydata(), v_values * 100, rtol=1e-6)
    assert np.abs(loss.get_ydata()).min() > 0  # not the zeroed train_log.csv


@pytest.mark.slow  # MLflow's import: about 4 s
def test_a_resumed_mlflow_run_has_each_step_once(tmp_path, monkeypatch):
    """MLflow (an extra): the interrupted attempt's run is deleted and a new one with the same ssbench id replays
    the rows up to the checkpoint (3), then goes on; rows 4 and 5 of the first attempt are gone. Through a file
    store (MLFLOW_TRACKING_URI): the run folder's default SQLite store takes ~20 s of migrations to create."""
    mlflow = pytest.importorskip("mlflow")
    from ssbench.engine.tracking import Tracker

    uri = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")

    meta = {"run_id": "r1", "name": "acdc/x/3/seed1", "group": "results", "method": "x",
            "config_flat": {"train.lr": 0.01}, "config_yaml": ""}
    first = Tracker(["mlflow"], tmp_path, meta)
    first.start(0)
    for step in range(1, 6):
        first.log(step, {"train/loss": 1.0 / step})
    first.close()
    again = Tracker(["mlflow"], tmp_path, meta)
    again.start(3, first.history)
    for step in range(4, 7):
        again.log(step, {"train/loss": 10.0 / step})
    again.close()
    assert first.failed == again.failed == {}
    client = mlflow.MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("results").experiment_id])
    history = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "train.loss")]
    assert sorted(history) == [(1, 1.0), (2, 0.5), (3, 1 / 3), (4, 2.5), (5, 2.0), (6, 10 / 6)]


@pytest.mark.slow
def test_overlays_show_validation_cases_only_even_under_legacy_selection(tiny_nnunet, tmp_path):
    """Selected on val+test (the legacy protocol, warned), the validation pass also predicts test volumes; the
    tracked pictures are of validation cases only."""
    from ssbench.engine.run import execute

    run = execute(tiny_request(tiny_nnunet, tmp_path, sets=("train.selection=legacy-val+test",)))
    split = json.loads((run / "split.json").read_text())
    shown = {v.tag.rsplit("/", 1)[-1] for e in tb_events(run / "tensorboard") for v in e.summary.value
             if v.tag.startswith("val/overlay/")}
    val_cases = {f"{p}" for p in split["val"]}  # nnU-Net cases: one volume per patient, named alike
    assert shown and shown <= val_cases, (shown, val_cases)


@pytest.mark.slow
def test_sweep_jobs_track_where_log_says_grouped_by_their_sweep(cli, tiny_nnunet, tmp_path, monkeypatch):
    """``ssbench sweep --log tensorboard,wandb``: every job records both backends (run.json, not the config) and its
    W&B offline run carries the sweep's results root as its group."""
    pytest.importorskip("wandb")
    from conftest import TINY_SETS

    monkeypatch.setenv("WANDB_MODE", "offline")
    out = tmp_path / "sweep-a"
    code, _, err = cli("sweep", "--methods", "supervised", "--splits", "2", "--seeds", "1,2", "--dataset", "nnunet",
                       "--data-root", tiny_nnunet, "--iters", "2", "--out", out, "--device", "cpu", "--executor",
                       "debug", "--gpus-per-job", "0", "--log", "tensorboard,wandb",
                       *[x for s in TINY_SETS for x in ("--set", s)])
    assert code == 0, err
    for seed in (1, 2):
        run = out / "nnunet" / "supervised" / "2" / f"seed{seed}"
        assert json.loads((run / "run.json").read_text())["tracking"] == {"backends": ["tensorboard", "wandb"],
                                                                          "failed": {}}
        assert "log" not in (run / "config.yaml").read_text()
        (record,) = list(run.glob("wandb/offline-run-*/run-*.wandb"))
        runs = [r for r in _records(record) if r.WhichOneof("record_type") == "run"]
        assert runs and runs[0].run.run_group == "sweep-a", runs[0].run


def _records(path: Path):
    """wandb's Record protobufs of a ``.wandb`` file: LevelDB log records (header ':W&B' + magic + version, then
    32 KiB blocks of records; a block's tail shorter than a record header is padding)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    pos, block, parts = 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        length, kind = struct.unpack("<HB", data[pos + 4: pos + 7])
        if length == 0 and kind == 0:
            break
        parts += data[pos + 7: pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST: a whole record
            record = pb.Record()
            record.ParseFromString(parts)
            parts = b""
            yield record
