"""Evaluation: the selection score during training and the per-case metric rows of a run's checkpoints.

Both predict through ``ssbench.engine.inference.predict_volume`` with the run's recorded input size and
inference-resize protocol, so validation and test see the same pipeline.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pandas as pd

from ssbench import runfolder
from ssbench.engine.inference import predict_volume
from ssbench.engine.results import summarize
from ssbench.metrics.evaluation import evaluate_case


def predict_case(method, case, cfg, device) -> np.ndarray:
    return predict_volume(method, case.image, cfg.data.train_size, device, cfg.train.eval_batch,
                          cfg.data.inference_resize)


OVERLAY_CASES = 2  # validation cases whose slice of most foreground is tracked as a picture at each validation


def mean_val_dice(method, cases, cfg, device, detail: dict | None = None) -> float:
    """Selection metric: mean over classes of the mean Dice over volumes (absent classes left out). ``detail``
    (a dict), if given, receives what the tracking shows of the same predictions: ``per_class`` (class index ->
    mean Dice) and ``slices`` ((case id, image, label, prediction) of the slice with the most foreground of the
    first ``OVERLAY_CASES`` cases)."""
    per_class: dict[int, list[float]] = {}
    k = method.ctx.num_classes
    for i, case in enumerate(cases):
        pred = predict_case(method, case, cfg, device)
        if detail is not None and i < OVERLAY_CASES:
            z = int(np.argmax((case.label > 0).reshape(len(case.label), -1).sum(axis=1)))
            detail.setdefault("slices", []).append((case.case_id, case.image[z], case.label[z], pred[z]))
        for c in range(1, k):
            p, r = pred == c, case.label == c
            total = int(p.sum()) + int(r.sum())
            if total:
                per_class.setdefault(c, []).append(2.0 * int((p & r).sum()) / total)
    means = [float(np.mean(v)) for v in per_class.values()]
    if detail is not None:
        detail["per_class"] = {c: float(np.mean(v)) for c, v in sorted(per_class.items())}
    return float(np.mean(means)) if means else math.nan


def evaluate_cases(method, cases, dataset, cfg, device, checkpoint: str, predictions: dict | None = None) -> list[dict]:
    rows = []
    for case in cases:
        pred = predict_case(method, case, cfg, device)
        if predictions is not None:
            predictions[case.case_id] = pred
        rows += score_case(pred, case, dataset, cfg, checkpoint)
    return rows


def score_case(pred: np.ndarray, case, dataset, cfg, checkpoint: str) -> list[dict]:
    """The metric rows of one predicted volume under the run's metric policy (cfg.eval)."""
    names = {i + 1: n for i, n in enumerate(dataset.class_names)}
    spacing = case.spacing if cfg.eval.hd_units == "mm" else None
    return [{"checkpoint": checkpoint, "case_id": case.case_id, "patient_id": case.patient_id,
             "class": names[r["class_id"]], **r, "hd_units": cfg.eval.hd_units, "empty_policy": cfg.eval.empty}
            for r in evaluate_case(pred, case.label, list(names), spacing, cfg.eval, cfg.eval.hd_units)]


def rescore_under_protocol(run_dir: Path, cases, dataset, cfg, protocol: str) -> str | None:
    """Score a run's saved test predictions (predictions/<checkpoint>.npz) under the named protocol
    (``metrics.evaluation.PROTOCOLS``) into ``evals/<empty>-<units>/``, as ``ssbench eval --protocol`` would (the
    same label maps: no new prediction). Returns the folder, or None if that is the run's own policy."""
    from ssbench.metrics.evaluation import PROTOCOLS, protocol_policy

    policy = protocol_policy(protocol, cfg.eval)
    if (policy.empty, policy.hd_units, policy.connectivity) == (cfg.eval.empty, cfg.eval.hd_units,
                                                                cfg.eval.connectivity):
        return None
    sub_cfg = dataclasses.replace(cfg, eval=policy)
    rows = []
    for ckpt in runfolder.CHECKPOINT_NAMES:
        with np.load(runfolder.predictions_path(run_dir, ckpt)) as saved:
            for case in cases:
                rows += score_case(saved[case.case_id], case, dataset, sub_cfg, ckpt)
    frame = pd.DataFrame(rows)
    sub = runfolder.evaluation_dir(run_dir, policy.empty, policy.hd_units)
    runfolder.write_results(sub, frame, summary_of(frame, sub_cfg, protocol={"name": protocol,
                                                                           "description": PROTOCOLS[protocol][1]}))
    return str(sub.relative_to(run_dir))


def evaluate_checkpoints(method, cases, dataset, cfg, device, checkpoints: Path,
                         predictions_dir: Path | None = None, config_hash: str | None = None) -> pd.DataFrame:
    """Per-case rows of the best and final checkpoints on ``cases``; optionally save the predicted label maps.
    Each checkpoint must belong to the run whose config hash is ``config_hash`` (default: ``cfg``'s). When the final
    checkpoint holds the best one's weights exactly (the best was the last validation), its rows are the best's:
    inference is deterministic, so predicting again could only repeat them."""
    from ssbench.atomic import snapshot
    from ssbench.engine import checkpoint

    rows, previous = [], None
    for ckpt in runfolder.CHECKPOINT_NAMES:
        path = checkpoints / f"{ckpt}.pt"
        state = checkpoint.load(path, config_hash or cfg.hash())
        if previous is not None and _same_weights(previous[0]["method"], state["method"]):
            rows += [{**row, "checkpoint": ckpt} for row in previous[1]]
            if predictions_dir is not None:
                snapshot(predictions_dir / "best.npz", predictions_dir / f"{ckpt}.npz")
            continue
        checkpoint.load_weights(method, state, path)
        predictions: dict[str, np.ndarray] | None = {} if predictions_dir is not None else None
        these = evaluate_cases(method, cases, dataset, cfg, device, ckpt, predictions)
        rows += these
        previous = (state, these)
        if predictions_dir is not None:
            save_predictions(predictions_dir / f"{ckpt}.npz", predictions)
    return pd.DataFrame(rows)


def _same_weights(a, b) -> bool:
    """Equal method states (a method's state may nest dicts and lists of tensors)."""
    import torch

    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same_weights(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(_same_weights, a, b))
    return type(a) is type(b) and a == b


def summary_of(frame: pd.DataFrame, cfg, **extra) -> dict:
    return {
        "config_hash": cfg.hash(),
        "metric_policy": dataclasses.asdict(cfg.eval),
        **extra,
        "test_cases": int(frame["case_id"].nunique()),
        "checkpoints": summarize(frame),
    }


def save_predictions(path: Path, predictions: dict) -> None:
    """The predicted label maps of the test volumes (uint8, native grid), compressed: figures and audits."""
    from ssbench.atomic import atomic_path

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **predictions)
