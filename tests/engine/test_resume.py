"""What ``--resume`` does, told apart from what would give the same numbers on CPU: retraining from iteration 0
(CPU runs are bit-deterministic, so equal results alone cannot show that ``last.pt`` was used), retraining a run
that had finished, keeping a ``best.pt`` written after the checkpoint. Each test counts the training steps a resume
runs, or makes the resumed attempt differ on purpose. In-process and on the tiny dataset; checkpoint files are
also checked on their own (``ssbench.engine.checkpoint``)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import one_line, tiny_args, tiny_request
from runs import RUN, interrupted as _interrupted, same_results


@pytest.fixture
def steps(monkeypatch):
    """The 0-based iterations of the training steps the supervised method runs from here on."""
    from ssbench.methods.supervised import Supervised

    seen, original = [], Supervised.training_step

    def step(self, labeled, unlabeled, info):
        seen.append(info.iteration)
        return original(self, labeled, unlabeled, info)

    monkeypatch.setattr(Supervised, "training_step", step)
    return seen


def finished(run):
    """A published run whose best.pt is the selected checkpoint (the equality with an uninterrupted run is
    test_resume_runs_only_the_steps_after_the_checkpoint's and tests/engine/test_crash.py's)."""
    assert json.loads((run / "run.json").read_text())["status"] == "complete"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.pt", "final.pt"]
    assert not list(run.rglob("*.tmp")) and not (run / "LOCK").exists()
    summary = json.loads((run / "summary.json").read_text())
    best = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    assert best["iteration"] == summary["selection"]["best_iteration"]
    assert best["val_dice"] == pytest.approx(summary["selection"]["best_score"])


def _files(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_resume_runs_only_the_steps_after_the_checkpoint(cli, tiny_nnunet, tiny_run, tmp_path, monkeypatch, steps):
    out = tmp_path / "results"
    staging = _interrupted(tiny_nnunet, out, monkeypatch, at=3)  # checkpoints at 2 and 4: last.pt is iteration 2
    assert torch.load(staging / "checkpoints" / "last.pt", weights_only=True)["iteration"] == 2
    steps.clear()
    code, _, err = cli("run", *tiny_args(tiny_nnunet, out, "--resume"))
    assert code == 0, err
    assert steps == [2, 3, 4, 5]  # not [0, ..., 5]: the state of iteration 2 was restored
    same_results(out / RUN, tiny_run)


@pytest.mark.slow
def test_without_a_checkpoint_resume_starts_over_and_drops_the_old_attempts_files(tiny_nnunet, tmp_path, monkeypatch,
                                                                                    steps):
    from ssbench.engine.run import execute

    out = tmp_path / "results"
    staging = _interrupted(tiny_nnunet, out, monkeypatch, at=1)  # before the first checkpoint (2)
    ckpt = staging / "checkpoints"
    assert not (ckpt / "last.pt").exists()
    planted = {name: {"method": {}, "config_hash": "x", "iteration": 99} for name in ("best.pt", "final.pt",
                                                                                        "best-at-9.pt")}
    for name, state in planted.items():
        torch.save(state, ckpt / name)
    steps.clear()
    execute(tiny_request(tiny_nnunet, out, resume=True))
    assert steps == [0, 1, 2, 3, 4, 5]
    finished(out / RUN)  # best.pt is this attempt's (its iteration is the selected one)


def test_best_pt_is_put_back_as_it_was_at_the_checkpoint(tiny_nnunet, tmp_path, monkeypatch, steps):
    """A validation after the last checkpoint wrote a new best.pt, then the run died. The resumed attempt validates
    worse this time (a stand-in for a GPU's non-deterministic kernels): the selected checkpoint must be the one of
    iteration 4, restored from best-at-4.pt, not the file the dead attempt left."""
    from ssbench.engine import train as train_mod
    from ssbench.engine.run import execute
    from ssbench.methods.supervised import Supervised

    out = tmp_path / "results"
    sets = ("train.val_every=1",)  # validations at 1..6, checkpoints at 2 and 4
    calls = []
    monkeypatch.setattr(train_mod, "mean_val_dice", lambda *a: (calls.append(1), len(calls) / 10)[1])  # rising
    recorded = Supervised.training_step

    def dies_at_5(self, labeled, unlabeled, info):
        if info.iteration == 5:  # after the validation at 5, which followed the checkpoint at 4
            raise KeyboardInterrupt
        return recorded(self, labeled, unlabeled, info)

    monkeypatch.setattr(Supervised, "training_step", dies_at_5)
    with pytest.raises(KeyboardInterrupt):
        execute(tiny_request(tiny_nnunet, out, sets=sets))
    ckpt = out / RUN.with_name(".seed1337.incomplete") / "checkpoints"
    assert torch.load(ckpt / "best.pt", weights_only=True)["iteration"] == 5
    assert torch.load(ckpt / "best-at-4.pt", weights_only=True)["iteration"] == 4
    assert torch.load(ckpt / "last.pt", weights_only=True)["best_file"] == "best-at-4.pt"

    monkeypatch.setattr(Supervised, "training_step", recorded)
    monkeypatch.setattr(train_mod, "mean_val_dice", lambda *a: 0.0)  # every later validation is worse
    steps.clear()
    run = execute(tiny_request(tiny_nnunet, out, sets=sets, resume=True))
    assert steps == [4, 5]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["selection"]["best_iteration"] == 4 and summary["selection"]["best_score"] == pytest.approx(0.4)
    best = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    assert best["iteration"] == 4 and best["val_dice"] == pytest.approx(0.4)


def test_a_finished_staging_folder_is_published_as_it_is(tiny_nnunet, tmp_path, monkeypatch, steps):
    """Killed between its last write and its publication: --resume trains nothing, evaluates nothing and publishes
    the files written before the interruption, run.json (its times) included."""
    from ssbench.engine import evaluate, run as run_mod
    from ssbench.runfolder import Staging

    out = tmp_path / "results"

    def interrupted(staging):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(Staging, "publish", interrupted)
        with pytest.raises(KeyboardInterrupt):
            run_mod.execute(tiny_request(tiny_nnunet, out))
    staging = out / RUN.with_name(".seed1337.incomplete")
    before = _files(staging)
    assert json.loads(before["run.json"])["status"] == "complete" and "checkpoints/last.pt" in before
    steps.clear()
    evaluations = []
    monkeypatch.setattr(evaluate, "evaluate_cases", lambda *a, **k: evaluations.append(a) or 1 / 0)
    run = run_mod.execute(tiny_request(tiny_nnunet, out, resume=True))
    assert steps == [] and evaluations == []
    after = _files(run)
    resume_state = {"checkpoints/last.pt", "checkpoints/best-at-4.pt", "LOCK"}
    assert after == {k: v for k, v in before.items() if k not in resume_state}
    finished(run)


@pytest.mark.slow
def test_a_partial_test_evaluation_is_done_again(tiny_nnunet, tmp_path, monkeypatch, steps):
    """Killed while evaluating the final checkpoint (best's predictions written): the resumed run trains from the
    last checkpoint (4) and evaluates both checkpoints again."""
    from ssbench.engine import evaluate
    from ssbench.engine.run import execute

    out = tmp_path / "results"
    original = evaluate.evaluate_cases

    def dies_at_final(method, cases, dataset, cfg, device, checkpoint, predictions=None):
        if checkpoint == "final":
            raise KeyboardInterrupt
        return original(method, cases, dataset, cfg, device, checkpoint, predictions)

    with monkeypatch.context() as m:
        m.setattr(evaluate, "evaluate_cases", dies_at_final)
        with pytest.raises(KeyboardInterrupt):
            execute(tiny_request(tiny_nnunet, out))
    staging = out / RUN.with_name(".seed1337.incomplete")
    assert (staging / "predictions" / "best.npz").is_file() and not (staging / "predictions" / "final.npz").exists()
    (staging / "predictions" / "best.npz").write_bytes(b"left by the dead attempt")
    steps.clear()
    evaluated = []
    monkeypatch.setattr(evaluate, "evaluate_cases",
                        lambda method, cases, dataset, cfg, device, checkpoint, predictions=None:
                        (evaluated.append(checkpoint),
                         original(method, cases, dataset, cfg, device, checkpoint, predictions))[1])
    run = execute(tiny_request(tiny_nnunet, out, resume=True))
    assert steps == [4, 5] and evaluated == ["best", "final"]
    finished(run)
    best = dict(np.load(run / "predictions" / "best.npz"))  # written again, for every test case
    assert sorted(best) == sorted(pd.read_csv(run / "metrics_per_case.csv")["case_id"].unique())


@pytest.mark.parametrize("damage,needles", [
    ("truncate", ["checkpoints/last.pt: not a readable checkpoint"]),
    *[pytest.param(*case, marks=pytest.mark.slow) for case in [
        ("garbage", ["checkpoints/last.pt: not a readable checkpoint"]),
        ("not-ssbench", ["checkpoints/last.pt: not an ssbench checkpoint (no method weights and config hash)"]),
        ("other-run", ["checkpoints/last.pt: belongs to another run (its config hash is 0123abcd, this run's is "]),
        ("other-world", ["checkpoints/last.pt: started with 2 processes; resume it with as many"]),
        ("other-weights", ["checkpoints/last.pt: its weights do not fit method 'supervised' (RuntimeError: "])]],
    ("no-best-snapshot", ["checkpoints/best-at-2.pt: missing (the best checkpoint as of last.pt); cannot resume"]),
])
def test_a_damaged_last_pt_is_one_line_and_the_staging_folder_stays(cli, tiny_nnunet, tmp_path, monkeypatch, damage,
                                                                     needles):
    out = tmp_path / "results"
    staging = _interrupted(tiny_nnunet, out, monkeypatch, at=3)
    last = staging / "checkpoints" / "last.pt"
    state = torch.load(last, weights_only=True)
    if damage == "truncate":
        last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    elif damage == "garbage":
        last.write_bytes(b"\x00not a checkpoint" * 50)
    elif damage == "not-ssbench":
        torch.save({"iteration": 2}, last)
    elif damage == "other-run":
        torch.save({**state, "config_hash": "0123abcd"}, last)
    elif damage == "other-world":
        torch.save({**state, "rng": state["rng"] * 2}, last)
    elif damage == "other-weights":
        weights = dict(state["method"])
        weights["net.head.weight"] = torch.zeros(1)
        torch.save({**state, "method": weights}, last)
    else:
        (staging / "checkpoints" / "best-at-2.pt").unlink()
    before = _files(staging)
    code, _, err = cli("run", *tiny_args(tiny_nnunet, out, "--resume"))
    one_line(code, err, *needles)
    assert _files(staging).keys() - {"LOCK"} == before.keys() - {"LOCK"}
    assert {k: v for k, v in _files(staging).items() if k not in ("LOCK", "run.json")} == \
        {k: v for k, v in before.items() if k not in ("LOCK", "run.json")}
    assert not (out / RUN).exists()


# --- checkpoint files on their own -------------------------------------------------------------------------------

def test_checkpoint_load_reads_to_the_cpu_and_checks_the_run(tmp_path):
    from ssbench.engine import checkpoint
    from ssbench.errors import UserError

    path = tmp_path / "c.pt"
    state = {"method": {"w": torch.arange(3.0)}, "config_hash": "abc", "iteration": 7}
    torch.save(state, path)
    got = checkpoint.load(path, "abc")
    assert got["iteration"] == 7 and torch.equal(got["method"]["w"], torch.arange(3.0))
    assert checkpoint.load(str(path))["config_hash"] == "abc"  # no hash given: any run's checkpoint
    with pytest.raises(UserError) as err:
        checkpoint.load(path, "xyz")
    assert str(err.value) == f"{path}: belongs to another run (its config hash is abc, this run's is xyz)"
    with pytest.raises(UserError) as err:
        checkpoint.load(tmp_path / "none.pt")
    assert str(err.value) == f"{tmp_path / 'none.pt'}: missing checkpoint"
    (tmp_path / "dir.pt").mkdir()
    with pytest.raises(UserError, match="missing checkpoint"):
        checkpoint.load(tmp_path / "dir.pt")
    for bad in ([1, 2], {"config_hash": "abc"}, {"method": [1], "config_hash": "abc"}, {"method": {}}):
        torch.save(bad, path)
        with pytest.raises(UserError) as err:
            checkpoint.load(path)
        assert str(err.value) == f"{path}: not an ssbench checkpoint (no method weights and config hash)"
    path.write_bytes(b"")
    with pytest.raises(UserError) as err:
        checkpoint.load(path)
    assert str(err.value) == f"{path}: not a readable checkpoint (EOFError: no detail)"  # torch gives no text
    path.write_bytes(b"\x00not a checkpoint" * 50)
    with pytest.raises(UserError) as err:
        checkpoint.load(path)
    assert str(err.value) == (f"{path}: not a readable checkpoint (UnpicklingError: not a file of tensors and plain "
                              "values (Unsupported operand 0))")  # never torch's advice to drop weights_only
    assert "\n" not in str(err.value)
    torch.save({"method": {}, "config_hash": "abc", "obj": __import__("fractions").Fraction(1, 3)}, path)  # not weights-only
    with pytest.raises(UserError, match="not a readable checkpoint .*UnpicklingError"):
        checkpoint.load(path)


def test_checkpoint_errors_are_one_line_of_at_most_200_characters_of_detail():
    from ssbench.errors import first_line as _first_line

    assert _first_line(ValueError("first\nsecond")) == "first"
    assert _first_line(ValueError("  padded  ")) == "padded"
    assert _first_line(ValueError("")) == "no detail"
    assert _first_line(ValueError("x" * 300)) == "x" * 200


def test_load_weights_names_the_file_and_the_method():
    from ssbench.engine import checkpoint
    from ssbench.errors import UserError
    from ssbench.methods.api import MethodContext
    from ssbench.methods.supervised import Supervised, SupervisedConfig

    method = Supervised(SupervisedConfig(), MethodContext(1, 3, 32, 10, torch.device("cpu")))
    state = {"method": {k: v.clone() + 1 for k, v in method.state_dict().items()}}
    checkpoint.load_weights(method, state, "x.pt")
    assert all(torch.equal(v, state["method"][k]) for k, v in method.state_dict().items())
    for weights, kind in (({"nope": torch.zeros(1)}, "RuntimeError"),
                          ({**state["method"], "net.head.weight": torch.zeros(2)}, "RuntimeError")):
        with pytest.raises(UserError) as err:
            checkpoint.load_weights(method, {"method": weights}, "x.pt")
        assert str(err.value).startswith(f"x.pt: its weights do not fit method 'supervised' ({kind}: Error(s) in "
                                         "loading state_dict for Supervised")
    with pytest.raises(UserError, match=r"x.pt: its weights do not fit method 'supervised' \(KeyError: "):
        checkpoint.load_weights(method, {}, "x.pt")


@pytest.mark.slow
def test_a_best_checkpoint_older_than_the_checkpoint_is_kept_across_a_resume(tiny_nnunet, tmp_path, monkeypatch,
                                                                              steps):
    """The best validation was at iteration 1, before the checkpoint at 2: its snapshot travels with last.pt."""
    from ssbench.engine import train as train_mod
    from ssbench.engine.run import execute

    out = tmp_path / "results"
    sets = ("train.val_every=1",)
    scores = iter([0.5, 0.1, 0.2])
    monkeypatch.setattr(train_mod, "mean_val_dice", lambda *a: next(scores, 0.0))
    staging = _interrupted(tiny_nnunet, out, monkeypatch, at=3, sets=sets)
    assert torch.load(staging / "checkpoints" / "last.pt", weights_only=True)["best_file"] == "best-at-2.pt"
    steps.clear()
    run = execute(tiny_request(tiny_nnunet, out, sets=sets, resume=True))
    assert steps == [2, 3, 4, 5]
    assert torch.load(run / "checkpoints" / "best.pt", weights_only=True)["iteration"] == 1
    finished(run)


@pytest.mark.slow
def test_a_last_pt_from_before_best_snapshots_still_resumes(tiny_nnunet, tmp_path, monkeypatch, steps):
    """Checkpoints written before ``best_file`` was recorded: resumed, best.pt left as the folder holds it."""
    from ssbench.engine.run import execute

    out = tmp_path / "results"
    staging = _interrupted(tiny_nnunet, out, monkeypatch, at=3)
    last = staging / "checkpoints" / "last.pt"
    state = torch.load(last, weights_only=True)
    del state["best_file"]
    torch.save(state, last)
    (staging / "checkpoints" / "best-at-2.pt").unlink()
    steps.clear()
    run = execute(tiny_request(tiny_nnunet, out, resume=True))
    assert steps == [2, 3, 4, 5]
    finished(run)


@pytest.mark.slow
@pytest.mark.parametrize("dies_at", [3, 2])
def test_a_checkpoint_taken_before_any_validation_restores_no_best_pt(dies_at, tiny_nnunet, tmp_path, monkeypatch):
    """Checkpoint at 2, first validation at 3. Died after it (its best.pt is the dead attempt's) or before it (no
    best.pt): either way the resumed attempt starts from iteration 2 with no best.pt."""
    from ssbench.engine.run import execute
    from ssbench.methods.supervised import Supervised

    out = tmp_path / "results"
    sets = ("train.val_every=3", "train.checkpoint_every=2")
    staging = _interrupted(tiny_nnunet, out, monkeypatch, at=dies_at, sets=sets)
    ckpt = staging / "checkpoints"
    assert torch.load(ckpt / "last.pt", weights_only=True)["best_file"] is None
    assert (ckpt / "best.pt").exists() == (dies_at == 3)
    seen = {}
    original = Supervised.training_step

    def first_step(self, labeled, unlabeled, info):  # the state as restored, before anything is trained
        seen.update(iteration=info.iteration, best=(ckpt / "best.pt").exists())
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(Supervised, "training_step", first_step)
        with pytest.raises(KeyboardInterrupt):
            execute(tiny_request(tiny_nnunet, out, sets=sets, resume=True))
    assert seen == {"iteration": 2, "best": False} and Supervised.training_step is original


def _as_if_saved_on(path, location: str) -> None:
    """Rewrite a torch checkpoint's storage locations from 'cpu' to ``location`` (e.g. 'cuda:0'), as a GPU run
    writes them: the tensors' bytes are the same, only the device torch would restore them to differs."""
    import zipfile

    with zipfile.ZipFile(path) as z:
        items = [(name, z.read(name)) for name in z.namelist()]
    cpu, there = b"X\x03\x00\x00\x00cpu", b"X" + len(location).to_bytes(4, "little") + location.encode()
    assert any(name.endswith("data.pkl") and cpu in data for name, data in items)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for name, data in items:
            z.writestr(name, data.replace(cpu, there) if name.endswith("data.pkl") else data)


def test_a_checkpoint_written_on_a_gpu_is_read_on_a_machine_without_one(tmp_path):
    from ssbench.engine import checkpoint

    path = tmp_path / "gpu.pt"
    torch.save({"method": {"w": torch.arange(3.0)}, "config_hash": "h"}, path)
    _as_if_saved_on(path, "cuda:0")
    if not torch.cuda.is_available():  # the file really names a GPU: torch alone would refuse it here
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(path, weights_only=True)
    state = checkpoint.load(path, "h")
    assert state["method"]["w"].device.type == "cpu" and torch.equal(state["method"]["w"], torch.arange(3.0))


def test_a_fresh_start_drops_the_old_attempts_files_before_its_first_step(tiny_nnunet, tmp_path, monkeypatch):
    from ssbench.engine.run import execute
    from ssbench.methods.supervised import Supervised

    out = tmp_path / "results"
    staging = _interrupted(tiny_nnunet, out, monkeypatch, at=1)  # before the first checkpoint: no last.pt
    ckpt = staging / "checkpoints"
    for name in ("best.pt", "final.pt", "best-at-9.pt"):
        torch.save({"method": {}, "config_hash": "x"}, ckpt / name)
    seen = []

    def first_step(self, labeled, unlabeled, info):
        seen.append((info.iteration, sorted(p.name for p in ckpt.iterdir())))
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(Supervised, "training_step", first_step)
        with pytest.raises(KeyboardInterrupt):
            execute(tiny_request(tiny_nnunet, out, resume=True))
    assert seen == [(0, [])]


def test_a_cpu_resume_leaves_a_recorded_cuda_generator_state_alone(tiny_nnunet, tmp_path, monkeypatch, steps):
    """A last.pt that carries a CUDA generator state (written on a GPU) resumes on the CPU: the CPU state is
    restored, the CUDA one is not touched (there may be no CUDA at all)."""
    from ssbench.engine.run import execute

    out = tmp_path / "results"
    staging = _interrupted(tiny_nnunet, out, monkeypatch, at=3)
    last = staging / "checkpoints" / "last.pt"
    state = torch.load(last, weights_only=True)
    ((cpu_rng, cuda_rng),) = state["rng"]
    assert cuda_rng is None
    torch.save({**state, "rng": [(cpu_rng, torch.zeros(16, dtype=torch.uint8))]}, last)
    steps.clear()
    finished(execute(tiny_request(tiny_nnunet, out, resume=True)))
    assert steps == [2, 3, 4, 5]
