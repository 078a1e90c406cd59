"""Methods with several networks, several optimizers and stages: the co-training example of docs/plugins.md,
written from the public API alone, run as a user runs it (``--plugin file.py``), killed in each stage and resumed
(on CPU the resumed run ends with the numbers of an uninterrupted one); the LR schedules and validation schedule
the recipes name; the optimizers' checkpoint format."""

import json
import re
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import TINY_RUN
from runs import DRIVER, REPO

DOCS = Path(__file__).parents[2] / "docs" / "plugins.md"
RUN = Path("nnunet") / "cross-teaching@warmup_iters=3" / "2" / "seed1337"
# Stage 'warmup' 3 steps (labeled only), stage 'train' 4 steps; resumable checkpoints after global steps 2 (in
# the warm-up) and 4 (in the second stage); validation after every step.
STAGED = ("--set", "cross-teaching.warmup_iters=3", "--set", "train.val_every=1", "--iters", "4",
          "--set", "eval.also_protocols=[bcp]")


def documented_plugin(tmp_path) -> Path:
    """The co-training example of docs/plugins.md, as a file."""
    text = DOCS.read_text()
    section = text[text.index("## A co-training method with stages"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    path = tmp_path / "cross_teaching.py"
    path.write_text(code)
    return path


def staged_args(plugin, root, out, *extra):
    return ["--plugin", str(plugin), "--method", "cross-teaching", "--data-root", str(root), "--out", str(out),
            *TINY_RUN, *STAGED, *map(str, extra)]


def killed_at(point, plugin, root, out, *extra):
    import os
    import subprocess
    import sys

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, str(DRIVER), point, "run", *staged_args(plugin, root, out, *extra)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == -9, (proc.returncode, proc.stderr[-2000:])


@pytest.fixture(scope="module")
def staged_run(tmp_path_factory, tiny_nnunet):
    """An uninterrupted staged run of the documented plugin, through the CLI in this process."""
    from ssbench.cli import main

    tmp = tmp_path_factory.mktemp("staged")
    plugin, out = documented_plugin(tmp), tmp / "results"
    import sys

    old = sys.argv
    sys.argv = ["ssbench", "run", *staged_args(plugin, tiny_nnunet, out)]
    try:
        main()
    except SystemExit as exc:
        assert not exc.code, exc.code
    finally:
        sys.argv = old
    return plugin, out / RUN


def test_the_documented_co_training_method_runs_in_two_stages_with_two_optimizers(staged_run):
    _, run = staged_run
    info = json.loads((run / "run.json").read_text())
    assert info["evaluated_model"] == "net1" and info["optimizers"] == ["net1", "net2"]
    assert info["stages"] == [
        {"name": "warmup", "iters": 3, "uses_unlabeled": False, "optimizers": ["net1"]},
        {"name": "train", "iters": 4, "uses_unlabeled": True, "optimizers": ["net1", "net2"],
         "optimizer_from": {"net2": "net1"}}]
    log = pd.read_csv(run / "train_log.csv")
    assert list(log["iteration"]) == list(range(1, 8))
    assert list(log["stage"]) == ["warmup"] * 3 + ["train"] * 4
    assert log["loss_cross"].isna().tolist() == [True] * 3 + [False] * 4  # no unlabeled term in the warm-up
    summary = json.loads((run / "summary.json").read_text())
    stages = summary["selection"]["stages"]
    assert [s["name"] for s in stages] == ["warmup", "train"]
    warm = log[log["stage"] == "warmup"]
    assert stages[0]["best_iteration"] == int(warm.loc[warm["val_dice"].idxmax(), "iteration"])
    assert 4 <= summary["selection"]["best_iteration"] <= 7  # the run's own best comes from the last stage
    kept = torch.load(run / "checkpoints" / "warmup-best.pt", weights_only=True)
    assert kept["iteration"] == stages[0]["best_iteration"] and "optimizer" in kept  # the hand-over point
    best = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    assert best["iteration"] == summary["selection"]["best_iteration"] and "optimizer" not in best


def test_a_run_also_scores_its_test_predictions_under_the_published_protocol(cli, staged_run):
    """eval.also_protocols=[bcp]: the same test predictions scored as BCP's test script does (voxel HD95, an empty
    prediction 0 on all metrics) into evals/legacy-zero-voxel/, exactly what ``ssbench eval --protocol bcp``
    writes; the run's own numbers stay under the benchmark's policy."""
    plugin, run = staged_run
    sub = run / "evals" / "legacy-zero-voxel"
    auto = pd.read_csv(sub / "metrics_per_case.csv")
    assert set(auto["empty_policy"]) == {"legacy-zero"} and set(auto["hd_units"]) == {"voxel"}
    assert json.loads((sub / "summary.json").read_text())["protocol"]["name"] == "bcp"
    own = pd.read_csv(run / "metrics_per_case.csv")
    assert set(own["empty_policy"]) == {"worst"} and set(own["hd_units"]) == {"mm"}
    code, _, err = cli("eval", run, "--protocol", "bcp", "--plugin", plugin)
    assert code == 0, err
    pd.testing.assert_frame_equal(pd.read_csv(sub / "metrics_per_case.csv"), auto)


@pytest.mark.parametrize("point", [
    "step:5",  # in stage 'train', after the checkpoint at 4: resumes in stage 'train'
    pytest.param("step:2", marks=pytest.mark.slow),  # in the warm-up after its checkpoint at 2: the boundary is
    # crossed again by the resumed process, from the warm-up's best checkpoint on disk
])
def test_a_staged_run_killed_in_either_stage_resumes_to_the_uninterrupted_numbers(cli, staged_run, tiny_nnunet,
                                                                                   tmp_path, point):
    plugin, reference = staged_run
    out = tmp_path / "results"
    killed_at(point, plugin, tiny_nnunet, out)
    staging = out / RUN.with_name(".seed1337.incomplete")
    last = torch.load(staging / "checkpoints" / "last.pt", weights_only=True)
    assert set(last["optimizer"]["optimizers"]) == {"net1", "net2"}  # both optimizers saved
    code, _, err = cli("run", *staged_args(plugin, tiny_nnunet, out, "--resume"))
    assert code == 0, err
    run = out / RUN
    pd.testing.assert_frame_equal(pd.read_csv(run / "metrics_per_case.csv"),
                                  pd.read_csv(reference / "metrics_per_case.csv"))
    a, b = pd.read_csv(run / "train_log.csv"), pd.read_csv(reference / "train_log.csv")
    pd.testing.assert_frame_equal(a.drop(columns="elapsed_s"), b.drop(columns="elapsed_s"))
    assert json.loads((run / "summary.json").read_text()) == json.loads((reference / "summary.json").read_text())
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.pt", "final.pt", "warmup-best.pt"]


class _TwoNets(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Linear(3, 1), torch.nn.Linear(3, 1)


def _optimizers(t):
    from ssbench.engine.runtime import make_runtime
    from ssbench.engine.train import make_optimizer

    class M(_TwoNets):
        name = "two"

        def optimizer_params(self):
            return {"a": self.a.parameters(), "b": [{"params": self.b.parameters(), "lr": 0.5}]}

    model = M()
    return model, make_optimizer(model, t, make_runtime(torch.device("cpu"), "off", False))


@pytest.mark.parametrize("schedule", ["constant", "poly"])
def test_the_learning_rate_in_the_optimizers_follows_train_lr_schedule(schedule):
    """BCP and ABD never change the learning rate: with lr_schedule=constant every group of every optimizer keeps
    its initial rate for the whole stage; poly decays each from its own initial rate."""
    from ssbench.engine.runconfig import TrainConfig
    from ssbench.engine.train import stage_lr, step_lr
    from ssbench.methods.api import StepInfo

    t = TrainConfig(lr_schedule=schedule, lr=0.01)
    _, opt = _optimizers(t)
    seen = []
    for it in range(0, 30000, 997):
        opt.set_lr(lambda base: stage_lr(t, base, StepInfo(it, 30000)))
        seen.append([g["lr"] for g in opt.param_groups])
    if schedule == "constant":
        assert all(lrs == [0.01, 0.5] for lrs in seen)
    else:
        assert seen[-1] == [step_lr(0.01, 29910, 30000, 0.9), step_lr(0.5, 29910, 30000, 0.9)]
        assert seen[-1][0] < 0.001


def test_several_optimizers_save_each_state_and_restore_it():
    from ssbench.engine.runconfig import TrainConfig

    model, opt = _optimizers(TrainConfig())
    x = torch.rand(4, 3)
    (model.a(x).sum() + model.b(x).sum()).backward()
    opt.step()
    saved = opt.state_dict()
    assert set(saved["optimizers"]) == {"a", "b"}
    _, fresh = _optimizers(TrainConfig())
    fresh.load_state_dict(saved)
    assert fresh.state_dict() == saved
    with pytest.raises(ValueError, match="saved"):
        fresh.load_state_dict({"optimizers": {"a": saved["optimizers"]["a"]}})


def test_validation_every_k_epochs_follows_ad_mt():
    """val_every=epoch, val_epochs=2: after epochs 1, 3, 5, ... (AD-MT validates when epoch_num % 2 == 0, 0-based)
    and at the end of the stage."""
    from ssbench.engine.runconfig import TrainConfig
    from ssbench.engine.train import val_schedule

    due = val_schedule(TrainConfig(val_every="epoch", val_epochs=2), 103)
    assert [d for d in range(1, 1000) if due(d, 999)] == [103, 309, 515, 721, 927, 999]
    every = val_schedule(TrainConfig(val_every="epoch"), 103)
    assert [d for d in range(1, 400) if every(d, 10_000)] == [103, 206, 309]


def test_a_stage_starts_from_the_previous_stages_best_weights_and_optimizer_states(tmp_path):
    """The hand-over: the method's state and every optimizer's state as at the previous stage's best checkpoint
    (not as at its end), ``optimizer_from`` applied (ABD's second student takes the first one's SGD state), then
    ``begin_stage``; the best file is kept under the stage's name."""
    from ssbench.engine.runconfig import TrainConfig
    from ssbench.engine.runtime import make_runtime
    from ssbench.engine.train import _begin_stage, _weights, make_optimizer
    from ssbench.methods.api import Stage

    class Cfg:
        def hash(self):
            return "h"

    class M(_TwoNets):
        name = "two"
        begun = None

        def optimizer_params(self):
            return {"a": self.a.parameters(), "b": self.b.parameters()}

        def begin_stage(self, stage):
            self.begun = stage.name

    torch.manual_seed(0)
    model = M()
    opt = make_optimizer(model, TrainConfig(), make_runtime(torch.device("cpu"), "off", False))
    opt.active = ["a"]

    def step():
        opt.zero_grad()
        model.a(torch.rand(4, 3)).pow(2).sum().backward()
        opt.step()

    step()
    torch.save(_weights(model, 1, 0.5, Cfg(), opt), tmp_path / "best.pt")  # the warm-up's best
    at_best = {k: v.clone() for k, v in model.state_dict().items()}
    momentum_a = opt["a"].state[model.a.weight]["momentum_buffer"].clone()
    step()  # the warm-up goes on past its best
    second = Stage("train", 4, optimizer_from=(("b", "a"),))
    _begin_stage(model, opt, Stage("warmup", 2, optimizers=("a",)), second, tmp_path, Cfg(),
                 make_runtime(torch.device("cpu"), "off", False))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in at_best.items())
    assert torch.equal(opt["a"].state[model.a.weight]["momentum_buffer"], momentum_a)
    assert torch.equal(opt["b"].state[model.b.weight]["momentum_buffer"], momentum_a)  # b took a's state
    assert opt.active == ["a", "b"] and model.begun == "train"
    assert (tmp_path / "warmup-best.pt").is_file() and not (tmp_path / "best.pt").exists()


@pytest.mark.slow
def test_a_staged_run_killed_right_after_a_checkpoint_at_the_stage_boundary_resumes_to_the_same_numbers(
        cli, tiny_nnunet, tmp_path):
    """Warm-up of 2 steps and a checkpoint after step 2: the resumed process starts exactly at the boundary."""
    plugin = documented_plugin(tmp_path)
    sets = ("--set", "cross-teaching.warmup_iters=2")
    ref, out = tmp_path / "ref", tmp_path / "results"
    code, _, err = cli("run", *staged_args(plugin, tiny_nnunet, ref, *sets))
    assert code == 0, err
    killed_at("step:3", plugin, tiny_nnunet, out, *sets)
    code, _, err = cli("run", *staged_args(plugin, tiny_nnunet, out, "--resume", *sets))
    assert code == 0, err
    run = Path("nnunet") / "cross-teaching@warmup_iters=2" / "2" / "seed1337"
    pd.testing.assert_frame_equal(pd.read_csv(out / run / "metrics_per_case.csv"),
                                  pd.read_csv(ref / run / "metrics_per_case.csv"))
    assert json.loads((out / run / "summary.json").read_text()) == json.loads((ref / run / "summary.json").read_text())
