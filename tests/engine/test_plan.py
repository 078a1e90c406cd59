"""A run says its plan before its first step (ssbench.engine.plan): data sets in patients, volumes and slices, every
stage with its length and the total, device, precision, folder; the progress lines name the stage."""

from __future__ import annotations

import io
from pathlib import Path

import torch

from conftest import tiny_request


def test_the_plan_names_every_stage_and_the_total(tiny_nnunet, tmp_path):
    """BCP: a labeled-only pre-train before the self-training stage. The plan gives both with the lengths the
    method will run (``Method.stages``), their sum, and the sets as loaded."""
    from ssbench.engine.plan import plan_text
    from ssbench.engine.plan import build_config
    from ssbench.engine.run import build_method, load_inputs
    from ssbench.engine.runtime import make_runtime

    cfg, method_cls, dataset = build_config(tiny_request(tiny_nnunet, tmp_path, method="bcp", iters=4,
                                                         sets=("bcp.pretrain_iters=2",)))
    split = dataset.split(cfg.data.split, cfg.data.split_seed)
    inputs = load_inputs(cfg, method_cls, dataset, split, lambda *a: None)
    method = build_method(cfg, method_cls, dataset, torch.device("cpu"), inputs)
    text = plan_text(cfg, method, inputs, split, dataset, make_runtime(torch.device("cpu"), "off", False),
                     Path("results/x"))
    data, schedule, execution = text.splitlines()
    slices = sum(c.image.shape[0] for c in inputs.labeled)
    assert f"labeled {len(split.labeled)} patients / {len(inputs.labeled)} volumes / {slices} slices" in data
    assert f"unlabeled {len(split.unlabeled)} patients / {len(inputs.unlabeled)} volumes" in data
    assert f"val {len(split.val)} patients" in data and f"test {len(split.test)} patients" in data
    assert [(s.name, s.iters) for s in method.stages()] == [("pretrain", 2), ("train", 4)]
    assert "2 stages (pretrain 2 (labeled only) -> train 4 iterations), 6 iterations in all" in schedule
    assert execution == "plan: cpu x 1 process, fp32; results: results/x"


def test_the_progress_line_names_the_stage():
    from rich.console import Console

    from ssbench.engine.train import _Progress

    out = io.StringIO()
    progress = _Progress(Console(file=out, force_terminal=False, width=200), total=6, start=0)
    progress.update(2, {"iteration": 2, "loss": 0.5, "val_dice": 0.4}, 0.4, {"dice": 0.4, "iteration": 2},
                    "pretrain")
    progress.update(6, {"iteration": 6, "loss": 0.3}, float("nan"), {"dice": 0.4, "iteration": 2})
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("iteration 2/6 [pretrain] loss=0.500 val_dice=0.400")
    assert lines[1].startswith("iteration 6/6 loss=0.300")  # a method of one stage: no stage named
