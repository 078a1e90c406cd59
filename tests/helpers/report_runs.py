"""Run folders without training, for the `ssbench table` tests, written through the run folder's own writers
(``ssbench.runfolder``: config.yaml, run.json, summary.json, split.json, metrics_per_case.csv, train_log.csv and,
on request, predictions/<checkpoint>.npz). No torch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from ssbench import runfolder
from ssbench.engine.results import summarize

from ssbench.runfolder import recorded_hash as recorded_config_hash

CLASSES = ("RV", "Myo", "LV")
DISPLAY = {"supervised": "U-Net (labeled only)", "mean-teacher": "Mean Teacher", "unimatch": "UniMatch",
           "fixmatch": "FixMatch", "sss": "SSS"}
LABELED_ONLY = {"supervised"}
ACDC_TRAIN = 70


def case_ids(patients: int = 10) -> list[str]:
    return [f"patient{p:03d}_frame{f}" for p in range(1, patients + 1) for f in ("01", "12")]


def config(method: str, split: str, seed: int, dataset: str = "acdc", **dotted) -> dict:
    """The config.yaml of a cpu-small run as the engine writes it; ``dotted`` overrides, e.g.
    ``**{"train.iters": 200}``."""
    cfg = {
        "config_hash": "",
        "data": {"dataset": dataset, "root": "/data/acdc", "split": split, "split_seed": 0, "train_size": 128,
                 "train_resize": "order0", "inference_resize": "order0", "synthetic": False},
        "train": {"recipe": "cpu-small", "schedule": "iterations", "iters": 600, "epochs": 300, "batch_labeled": 4,
                  "batch_unlabeled": 4, "optimizer": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 0.0001,
                  "poly_power": 0.9, "val_every": 100, "checkpoint_every": 200, "seed": seed,
                  "augment": "rotflip-rotate", "eval_batch": 16, "selection": "val"},
        "eval": {"empty": "worst", "hd_units": "mm", "connectivity": 1},
        dataset: {"intensity": "minmax-volume"},
        method.split("@")[0]: {},
        "method": method.split("@")[0],
    }
    for key, value in dotted.items():
        section, _, name = key.partition(".")
        if value is None:
            cfg[section].pop(name, None)
        else:
            cfg[section][name] = value
    return cfg


def write_run(root: Path, method: str, split: str = "3", seed: int = 1, *, dataset: str = "acdc",
              labeled: int | None = None, dice=None, shift: float = 0.0, rng=None, cases: list[str] | None = None,
              settings: dict | None = None, folder_split: str | None = None, suffix: str = "",
              status: str = "complete", selection_score: float | None = None, predictions: dict | None = None,
              display: str | None = "default", log_iters: int = 10, hd: float | None = None) -> Path:
    """A completed run folder at <root>/<dataset>/<method>/<split tag>/seed<seed><suffix>.

    ``dice``: per-case Dice (one value per case, the same for every class), else random around 0.8 + shift.
    ``settings``: dotted config overrides. ``predictions``: case id -> label map for predictions/best.npz."""
    rng = rng if rng is not None else np.random.default_rng(seed)
    cases = cases or case_ids()
    labeled = labeled if labeled is not None else (ACDC_TRAIN if split == "all" else int(split.rstrip("%")))
    base = method.split("@")[0]
    cfg = config(method, split, seed, dataset.replace("-phantom", ""), **(settings or {}))
    cfg["config_hash"] = recorded_config_hash(cfg)  # as the engine records it: `ssbench table` checks it
    folder = root / dataset / method / (folder_split or split.lower().replace("%", "pct")) / f"seed{seed}{suffix}"
    folder.mkdir(parents=True)
    rows = []
    for i, cid in enumerate(cases):
        for cid_class, cls in enumerate(CLASSES, 1):
            for ckpt in ("best", "final"):
                d = float(dice[i]) if dice is not None else float(np.clip(rng.normal(0.8 + shift, 0.05), 0, 1))
                rows.append({"checkpoint": ckpt, "case_id": cid, "patient_id": cid.split("_")[0], "class": cls,
                             "class_id": cid_class, "status": "ok", "dice": d, "jaccard": d / (2 - d),
                             "hd95": hd if hd is not None else float(rng.uniform(1, 10)),
                             "asd": float(rng.uniform(0.2, 3)), "hd_units": cfg["eval"]["hd_units"],
                             "empty_policy": cfg["eval"]["empty"]})
    frame = pd.DataFrame(rows)
    config_hash = cfg.pop("config_hash")
    runfolder.write_config(folder, cfg, config_hash)
    info = {"status": status, "config_hash": config_hash, "method": base,
            "method_source": {"distribution": "ssbench", "version": "0.1.0", "entry_point": "x:Y"},
            "dataset": dataset, "split": split, "labeled_patients": labeled, "seed": seed, "device": "cpu",
            "schedule": {"epoch_pool": "labeled" if base in LABELED_ONLY else "unlabeled", "epoch_pool_slices": 100,
                         "iters_per_epoch": 25}, "warnings": []}
    if display == "default":
        info["method_display_name"] = DISPLAY.get(base, base)
    elif display is not None:
        info["method_display_name"] = display
    runfolder.write_info(folder, info)
    patients = sorted({c.split("_")[0] for c in cases})
    runfolder.write_split(folder, {
        "labeled": [f"L{i}" for i in range(labeled)],
        "unlabeled": [] if split == "all" else [f"U{i}" for i in range(ACDC_TRAIN - labeled)],
        "val": ["V0"], "test": patients}, "test")
    best = frame[frame.checkpoint == "best"]
    legacy = cfg["train"]["selection"] != "val"
    score = selection_score if selection_score is not None else float(best.groupby("class")["dice"].mean().mean())
    runfolder.write_results(folder, frame, {
        "config_hash": config_hash, "metric_policy": cfg["eval"],
        "selection": {"set": cfg["train"]["selection"], "metric": "mean foreground Dice", "best_iteration": 500,
                      "best_score": score, "cases": 60 if legacy else 20},
        "test_cases": len(cases), "checkpoints": summarize(frame)})
    it = np.arange(1, log_iters + 1)
    val = np.full(log_iters, np.nan)
    val[log_iters // 2 - 1], val[-1] = 0.5 + shift, 0.7 + shift
    runfolder.write_train_log(folder, pd.DataFrame({
        "iteration": it, "lr": 0.01, "loss": np.linspace(1, 0.1, log_iters) + seed * 0.01, "elapsed_s": it * 0.1,
        "val_dice": val}))
    if predictions is not None:
        path = runfolder.predictions_path(folder, "best")
        path.parent.mkdir()
        np.savez_compressed(path, **predictions)
    return folder


def hand_mean(folder: Path, metric: str = "dice", ckpt: str = "best") -> float:
    """The literature's mean, recomputed from the per-case file: per class over volumes, then over classes."""
    f = pd.read_csv(folder / "metrics_per_case.csv")
    f = f[(f.checkpoint == ckpt) & (f.status != "absent")]
    return float(f.groupby("class")[metric].mean().mean())


def hand_cases(folders, ckpt: str = "best") -> pd.Series:
    """Per-case Dice (mean over classes), averaged over the seeds' folders."""
    series = []
    for folder in folders:
        f = pd.read_csv(folder / "metrics_per_case.csv")
        f = f[(f.checkpoint == ckpt) & (f.status != "absent")]
        series.append(f.groupby(["case_id", "patient_id"])["dice"].mean())
    return pd.concat(series, axis=1).mean(axis=1)


def build_tables(root: Path, out: Path, reference: str | None = None, checkpoint: str = "best",
                 formats=("md", "tex", "csv"), draw: bool = False) -> str:
    """``ssbench table``'s build, figures left out unless asked for (they are tested on their own); returns what
    it printed."""
    from ssbench.report.build import build

    lines: list[str] = []
    build(root, out, reference, checkpoint, list(formats), say=lines.append, draw=draw)
    return "\n".join(lines) + "\n"
