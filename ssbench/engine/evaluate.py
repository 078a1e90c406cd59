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

from ssbench.engine.inference import predict_volume
from ssbench.engine.results import summarize
from ssbench.metrics.evaluation import evaluate_case


def predict_case(method, case, cfg, device) -> np.ndarray:
    return predict_volume(method, case.image, cfg.data.train_size, device, cfg.train.eval_batch,
                          cfg.data.inference_resize)


def mean_val_dice(method, cases, cfg, device) -> float:
    """Selection metric: mean over classes of the mean Dice over volumes (absent classes left out)."""
    per_class: dict[int, list[float]] = {}
    k = method.ctx.num_classes
    for case in cases:
        pred = predict_case(method, case, cfg, device)
        for c in range(1, k):
            p, r = pred == c, case.label == c
            total = int(p.sum()) + int(r.sum())
            if total:
                per_class.setdefault(c, []).append(2.0 * int((p & r).sum()) / total)
    means = [float(np.mean(v)) for v in per_class.values()]
    return float(np.mean(means)) if means else math.nan


def evaluate_cases(method, cases, dataset, cfg, device, checkpoint: str, predictions: dict | None = None) -> list[dict]:
    names = {i + 1: n for i, n in enumerate(dataset.class_names)}
    rows = []
    for case in cases:
        pred = predict_case(method, case, cfg, device)
        if predictions is not None:
            predictions[case.case_id] = pred
        spacing = case.spacing if cfg.eval.hd_units == "mm" else None
        for r in evaluate_case(pred, case.label, list(names), spacing, cfg.eval, cfg.eval.hd_units):
            rows.append({
                "checkpoint": checkpoint, "case_id": case.case_id, "patient_id": case.patient_id,
                "class": names[r["class_id"]], **r, "hd_units": cfg.eval.hd_units, "empty_policy": cfg.eval.empty,
            })
    return rows


def evaluate_checkpoints(method, cases, dataset, cfg, device, checkpoints: Path,
                         predictions_dir: Path | None = None, config_hash: str | None = None) -> pd.DataFrame:
    """Per-case rows of the best and final checkpoints on ``cases``; optionally save the predicted label maps.
    Each checkpoint must belong to the run whose config hash is ``config_hash`` (default: ``cfg``'s)."""
    from ssbench.engine import checkpoint

    rows = []
    for ckpt in ("best", "final"):
        path = checkpoints / f"{ckpt}.pt"
        state = checkpoint.load(path, config_hash or cfg.hash())
        checkpoint.load_weights(method, state, path)
        predictions: dict[str, np.ndarray] | None = {} if predictions_dir is not None else None
        rows += evaluate_cases(method, cases, dataset, cfg, device, ckpt, predictions)
        if predictions_dir is not None:
            save_predictions(predictions_dir / f"{ckpt}.npz", predictions)
    return pd.DataFrame(rows)


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
