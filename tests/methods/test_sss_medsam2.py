"""The ``medsam2`` protocol (MedSAM-2's 3-D validation, metrics/medsam2.py): which slices and classes it
evaluates, its prompts, its threshold-averaged 2-D Dice on hand-made volumes; and ``ssbench eval RUN --protocol
medsam2`` / ``eval.also_protocols`` on a tiny SSS run, whose rows are never pooled with the run's own."""

import json

import numpy as np
import pytest
import torch

from ssbench.metrics import medsam2

pytestmark = pytest.mark.usefixtures("sam2_once")


def _label():
    """12 slices: foreground on slices 2..9 (the slab: 8 slices, of which MedSAM-2 evaluates the first 2), class 1
    on slices 2-3, class 2 only on slices 6-7 (outside the evaluated slices), class 3 on slice 3."""
    lab = torch.zeros(12, 16, 16, dtype=torch.long)
    lab[2:4, 2:6, 3:9] = 1
    lab[6:8, 10:14, 10:14] = 2
    lab[3, 12:15, 1:4] = 3
    lab[9, 0, 0] = 1
    return lab


def test_evaluated_slices_classes_and_prompts_are_medsam2s():
    lab = _label()
    assert medsam2.evaluated_slices(lab.numpy()) == [2, 3]  # first int(8 / 4) slices of the labeled slab
    assert medsam2.evaluated_slices(np.zeros((5, 4, 4))) == []
    seen = {}

    def predict(x, prompts):
        seen.update(prompts)
        return torch.full((len(x), 3, 16, 16), -20.0)

    scores, evaluated = medsam2.evaluate_volume(predict, torch.zeros(12, 1, 16, 16), lab, 3, prompt_freq=1)
    assert evaluated and set(scores) == {1, 3}  # class 2 is not on an evaluated slice: not scored at all
    assert seen == {0: {1: (3.0, 2.0, 8.0, 5.0), 3: None}, 1: {1: (3.0, 2.0, 8.0, 5.0), 3: (1.0, 12.0, 3.0, 14.0)}}
    # nothing predicted: class 1 misses both slices (Dice ~0); class 3 is absent from slice 0 (empty vs empty:
    # 1, as the code's eps makes it) and missed on slice 1
    assert scores[1][0] == pytest.approx(0, abs=1e-4) and scores[3][0] == pytest.approx(0.5, abs=1e-4)


def test_dice_is_averaged_over_logit_thresholds():
    """The code thresholds the logits (its sigmoid is commented out) at 0.1 ... 0.9: a logit of 0.4 on the
    structure counts at 0.1 and 0.3 only."""
    target = torch.zeros(1, 8, 8, dtype=torch.bool)
    target[0, 2:6, 2:6] = True
    logits = torch.where(target, 0.4, -1.0)
    dice, iou = medsam2.slice_dice(logits, target)
    assert float(dice[0]) == pytest.approx(2 / 5, abs=1e-5) and float(iou[0]) == pytest.approx(2 / 5, abs=1e-5)
    dice, _ = medsam2.slice_dice(torch.where(target, 5.0, -1.0), target)
    assert float(dice[0]) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.slow
def test_eval_protocol_medsam2_on_an_sss_run(tmp_path, tiny_nnunet, cli):
    """A tiny SSS run with eval.also_protocols = [medsam2], then `ssbench eval RUN --protocol medsam2`: the same
    rows again (deterministic), in evals/medsam2/, whose summary names the protocol so that the tables never pool
    them with the run's own numbers; a method without prompts is refused."""
    import pandas as pd

    from ssbench.engine.plan import RunRequest
    from ssbench.engine.run import execute
    from ssbench.report.collect import collect

    sets = ("sss.model=sam2.1_hiera_t", "sss.init=random", "data.train_size=32", "train.batch_labeled=1",
            "train.batch_unlabeled=1", "sss.clip_length=2", "eval.also_protocols=[medsam2]")
    run = execute(RunRequest(method="sss", dataset="nnunet", data_root=str(tiny_nnunet), split="2", iters=1,
                             sets=sets, out=str(tmp_path), device="cpu", quiet=True))
    first = pd.read_csv(run / "evals" / "medsam2" / "metrics_per_case.csv")
    code, out, err = cli("eval", run, "--protocol", "medsam2", "--device", "cpu")
    assert code == 0, err
    assert "medsam2 best: mean Dice" in out
    again = pd.read_csv(run / "evals" / "medsam2" / "metrics_per_case.csv")
    pd.testing.assert_frame_equal(first, again)
    assert set(again["protocol"]) == {"medsam2"} and again["hd95"].isna().all()
    assert (again["status"] == "ok").any()
    summary = json.loads((run / "evals" / "medsam2" / "summary.json").read_text())
    assert summary["metric_policy"]["protocol"] == "medsam2"
    assert set(summary["protocol"]["volume_means"]) == {"best", "final"}
    runs, _ = collect(tmp_path, "best")
    own = [r for r in runs if r.evaluation == ""][0]
    prompted = [r for r in runs if r.evaluation == "medsam2"][0]
    assert prompted.settings != own.settings and prompted.settings["eval.protocol"] == "medsam2"
    code, _, err = cli("eval", run, "--protocol", "medsam2", "--hd-units", "voxel")
    assert code == 2 and "--protocol" in err
