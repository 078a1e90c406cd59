"""A run says its plan before its first step (ssbench.engine.plan): data sets in patients, volumes and slices, every
stage with its length and the total, device, precision, folder; the progress lines name the stage."""

from __future__ import annotations

import json
import re

import pytest

from conftest import TINY_SETS


@pytest.mark.slow
def test_a_staged_run_prints_every_stage_and_the_total_before_it_trains(cli, tiny_nnunet, tmp_path):
    """BCP: a labeled-only pre-train before the self-training stage. The plan names both with the lengths the run
    then records (run.json "stages"), their sum as the total, and the progress lines say which stage they are in."""
    args = ["run", "--method", "bcp", "--dataset", "nnunet", "--data-root", tiny_nnunet, "--split", "2", "--iters",
            "4", "--device", "cpu", "--out", tmp_path, "--set", "bcp.pretrain_iters=2",
            *[x for t in TINY_SETS for x in ("--set", t)]]
    code, out, err = cli(*args)
    assert code == 0, err
    (run,) = (tmp_path / "nnunet").glob("bcp*/2/seed1337")  # bcp@pretrain_iters=2
    info = json.loads((run / "run.json").read_text())
    split = json.loads((run / "split.json").read_text())
    plan = [line for line in out.splitlines() if line.startswith("plan: ")]
    assert len(plan) == 3, out
    data, schedule, execution = plan
    assert f"labeled {len(split['labeled'])} patients / " in data and f"val {len(split['val'])} patients" in data
    assert f"unlabeled {len(split['unlabeled'])} patients / " in data and f"test {len(split['test'])} patients" in data
    stages = info["stages"]
    assert [s["iters"] for s in stages] == [2, 4]
    parts = " -> ".join(f"{s['name']} {s['iters']}" + ("" if s["uses_unlabeled"] else " (labeled only)")
                        for s in stages)
    assert f"2 stages ({parts} iterations), {sum(s['iters'] for s in stages)} iterations in all" in schedule
    assert "cpu x 1 process, fp32" in execution and str(run) in execution
    assert out.index(plan[-1]) < out.index("iteration ")  # before the first step
    progress = re.findall(r"^iteration (\d+)/6 \[(\w+)\]", out, re.M)
    assert progress and {stage for _, stage in progress} == {"pretrain", "train"}
    assert all((int(i) <= 2) == (stage == "pretrain") for i, stage in progress)
