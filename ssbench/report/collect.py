"""Find completed runs under a results folder and read what the tables need: per-case rows and protocol facts.

A run counts only if its folder holds run.json with status 'complete', a readable config.yaml with the keys the
tables compare, and a metrics_per_case.csv with the metric columns and rows of the checkpoint asked for. Anything
else is reported as skipped with one line naming the file and what is wrong (staging folders of runs that did not
finish, failed runs, malformed YAML/JSON/CSV, missing keys). Nothing here raises on a bad run folder.

Re-evaluations written by ``ssbench eval`` (``<run>/evals/<policy>/``) are read as runs of their own metric
policy, so that a table of that policy (e.g. the literature's legacy-zero, voxel HD95) can be built from them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ssbench import runfolder
from ssbench.metrics.catalog import metric_names
from ssbench.runfolder import Unreadable, read_cases
# Keys the tables read; a config.yaml without them is skipped, naming the key.
REQUIRED = ("method", "data.dataset", "data.split", "train.seed", "train.selection", "eval.empty", "eval.hd_units")
# Fields added to the engine after the first runs were written: older runs used the value given here, so they
# pool with newer runs that record it explicitly.
LEGACY_DEFAULTS = {"eval.connectivity": 1, "data.inference_resize": "order0", "data.train_resize": "order0",
                   "train.schedule": "iterations", "train.lr_schedule": "poly", "train.val_epochs": 1}
# Never part of the comparison: the pooled dimension (seed), where the data live, how the split was spelled
# (the labeled count is compared instead) and the hash (it covers the seed).
NOT_COMPARED = ("train.seed", "data.root", "data.split", "config_hash",
                "eval.also_protocols")  # extra scorings in evals/ never change the run's own numbers


@dataclass
class Run:
    path: Path
    dataset: str  # e.g. 'acdc', 'acdc-phantom'
    method: str  # method name plus its variant folder, e.g. 'sss' or 'sss@dfe=false'
    base_method: str
    display_name: str  # run.json's method_display_name (+ variant); the registry name for older runs
    split: str  # the --split text
    labeled: int  # labeled patients it resolved to
    seed: int
    config_hash: str
    settings: dict  # flattened config ('train.iters': 200, ...) minus NOT_COMPARED: what must agree to pool
    labeled_only: bool  # trains on labeled slices only (the supervised baseline and the upper bound)
    full: bool  # every training patient labeled (--split all): the fully supervised upper bound
    frame: pd.DataFrame = field(repr=False)
    train_log: pd.DataFrame | None = field(default=None, repr=False)
    summary: dict | None = field(default=None, repr=False)
    info: dict = field(default_factory=dict, repr=False)  # run.json
    config: dict = field(default_factory=dict, repr=False)  # the whole flattened config.yaml
    evaluation: str = ""  # '' for the run's own test evaluation, else the evals/ sub-folder it came from
    _means: dict = field(default_factory=dict, repr=False)

    def class_means(self, checkpoint: str) -> pd.DataFrame:
        """Per class (rows, in file order) the mean of each metric over the test volumes, absent pairs left out."""
        if checkpoint not in self._means:
            f = self.frame[(self.frame["checkpoint"] == checkpoint) & (self.frame["status"] != "absent")]
            self._means[checkpoint] = f.groupby("class", sort=False)[metric_names()].mean()
        return self._means[checkpoint]

    @property
    def policy(self) -> tuple:
        """The metric policy: runs of different policies never share a table."""
        s = self.settings
        return s["eval.empty"], s["eval.hd_units"], int(s["eval.connectivity"])

    @property
    def selection(self) -> str:
        return self.settings["train.selection"]

    @property
    def inference_resize(self) -> str:
        return self.settings["data.inference_resize"]

    @property
    def method_config(self) -> dict:
        prefix = f"{self.base_method}."
        return {k[len(prefix):]: v for k, v in self.settings.items() if k.startswith(prefix)}

    @property
    def selection_score(self) -> float | None:
        """Mean foreground Dice on the selection set at the chosen checkpoint (summary.json), if recorded."""
        block = (self.summary or {}).get("selection") or {}
        score = block.get("best_score")
        return float(score) if isinstance(score, (int, float)) and np.isfinite(score) else None

    @property
    def selection_cases(self) -> int | None:
        block = (self.summary or {}).get("selection") or {}
        return block.get("cases")

    @property
    def iterations(self) -> int | None:
        """Training iterations as run (derived from the data under an epoch schedule)."""
        it = self.config.get("train.iters")
        return int(it) if isinstance(it, (int, float)) else None

    @property
    def schedule_text(self) -> str:
        it = self.iterations
        stages = self.info.get("stages")
        if isinstance(stages, list) and len(stages) > 1 and all(isinstance(s, dict) for s in stages):
            # a method with stages (BCP, ABD): every stage's length, e.g. '10,000 pretrain + 30,000 train iterations'
            return " + ".join(f"{s.get('iters', 0):,} {s.get('name', '')}" for s in stages) + " iterations"
        if self.settings.get("train.schedule") == "epochs":
            pool = (self.info.get("schedule") or {}).get("epoch_pool", "")
            return f"{self.settings.get('train.epochs')} epochs over {pool} slices".replace("  ", " ") + \
                (f" ({it:,} iterations)" if it else "")
        return f"{it:,} iterations" if it else "unknown"

    @property
    def test_cases(self) -> int:
        return int(self.frame["case_id"].nunique())


@dataclass
class Skipped:
    path: Path
    reason: str

    @property
    def cell(self) -> tuple[str, str, int] | None:
        """(dataset, method folder, labeled) of the cell this run would have filled, when its run.json says."""
        info = runfolder.read_optional_json(self.path / runfolder.RUN_INFO) or {}
        parts = self.path.parts
        if len(parts) < 4:
            return None
        labeled = info.get("labeled_patients")
        if not isinstance(labeled, int):  # a run that died early: the split folder may still say
            labeled = int(parts[-2]) if parts[-2].isdigit() else None
        return None if labeled is None else (str(info.get("dataset", parts[-4])), parts[-3], labeled)


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = tuple(v) if isinstance(v, list) else v
    return out


def collect(results: Path, checkpoint: str = "best") -> tuple[list[Run], list[Skipped]]:
    from ssbench.report.verify import verify_run

    runs, skipped = [], []
    for info_path in sorted(Path(results).rglob(runfolder.RUN_INFO)):
        folder = info_path.parent
        if runfolder.is_hidden(folder, Path(results)):
            # README: readers ignore hidden folders; a staging folder is named, as a cell it leaves empty
            hidden = [p for p in folder.relative_to(results).parts if p.startswith(".")]
            if any(p.endswith(runfolder.STAGING_SUFFIX) for p in hidden) and ".replaced-" not in folder.name:
                skipped.append(Skipped(folder, "incomplete (a staging folder: the run did not finish)"))
            continue
        try:
            run = read_run(folder, checkpoint)
            if run is not None:
                verify_run(run, Unreadable)
        except Unreadable as exc:
            skipped.append(Skipped(folder, str(exc)))
            continue
        if run is None:
            continue
        runs.append(run)
        for sub in sorted((folder / runfolder.EVALS).glob(f"*/{runfolder.CASES}")):
            try:
                again = read_reevaluation(run, sub.parent, checkpoint)
                verify_run(again, Unreadable)
                runs.append(again)
            except Unreadable as exc:
                skipped.append(Skipped(sub.parent, str(exc)))
    return runs, skipped


def read_run(folder: Path, checkpoint: str) -> Run | None:
    info = runfolder.read_info(folder)
    if info.get("status") != "complete":
        raise Unreadable(f"status {info.get('status')!r}, not complete")
    missing = runfolder.missing_files(folder)
    if missing:
        raise Unreadable(f"{missing[0]}: missing")
    cfg = runfolder.read_yaml(folder / runfolder.CONFIG)
    flat = flatten(cfg)
    missing = [k for k in REQUIRED if k not in flat]
    if missing:
        raise Unreadable(f"config.yaml: missing key {missing[0]}")
    for key in ("dataset", "labeled_patients"):
        if key not in info:
            raise Unreadable(f"run.json: missing key {key}")
    try:
        labeled, seed = int(info["labeled_patients"]), int(flat["train.seed"])
    except (TypeError, ValueError):
        raise Unreadable("run.json labeled_patients / config.yaml train.seed: not an integer") from None
    settings = {**LEGACY_DEFAULTS, **{k: v for k, v in flat.items() if k not in NOT_COMPARED}}
    _drop_derived(settings)
    frame = read_cases(folder / runfolder.CASES, checkpoint)
    method = str(flat["method"])
    variant = folder.parent.parent.name
    folder_method = variant if variant.startswith(method + "@") else method
    display = str(info.get("method_display_name") or method)
    if folder_method != method:
        display += f" ({folder_method.split('@', 1)[1]})"
    split_file = runfolder.read_optional_json(folder / runfolder.SPLIT)
    full = (str(flat["data.split"]).strip().lower() in ("all", "100%")
            or (split_file is not None and "unlabeled" in split_file and not split_file["unlabeled"]))
    schedule = info.get("schedule") or {}
    labeled_only = (schedule.get("epoch_pool") == "labeled") if "epoch_pool" in schedule else method == "supervised"
    return Run(
        path=folder, dataset=str(info["dataset"]), method=folder_method, base_method=method, display_name=display,
        split=str(flat["data.split"]), labeled=labeled, seed=seed,
        config_hash=str(info.get("config_hash") or flat.get("config_hash") or ""), settings=settings,
        labeled_only=labeled_only, full=full, frame=frame, train_log=_train_log(folder / runfolder.TRAIN_LOG),
        summary=runfolder.read_optional_json(folder / runfolder.SUMMARY), info=info, config=flat,
    )


def read_reevaluation(run: Run, sub: Path, checkpoint: str) -> Run:
    """A run re-evaluated under another metric policy (``ssbench eval``): same training, new per-case rows."""
    summary = runfolder.read_json(sub / runfolder.SUMMARY)
    policy = summary.get("metric_policy")
    if not isinstance(policy, dict) or not {"empty", "hd_units"} <= set(policy):
        raise Unreadable("summary.json: missing metric_policy (empty, hd_units)")
    settings = {**run.settings, **{f"eval.{k}": v for k, v in policy.items() if f"eval.{k}" not in NOT_COMPARED}}
    frame = read_cases(sub / runfolder.CASES, checkpoint)
    return Run(**{**run.__dict__, "path": sub, "settings": settings, "frame": frame, "_means": {},
                  "summary": {**summary, "selection": (run.summary or {}).get("selection")},
                  "evaluation": sub.name})


def _drop_derived(settings: dict) -> None:
    """A length in epochs derives train.iters from the data (it differs by split); a length in iterations makes
    train.epochs unused. Only the length the run was asked for is compared."""
    if settings.get("train.schedule") == "epochs":
        settings.pop("train.iters", None)
    else:
        settings.pop("train.epochs", None)


def _train_log(path: Path) -> pd.DataFrame | None:
    """The training log for the curves; an unreadable log costs the run its curve only."""
    if not path.is_file():
        return None
    try:
        log = pd.read_csv(path)
    except (OSError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError):
        return None
    if "iteration" not in log.columns:
        return None
    for col in log.columns:
        log[col] = pd.to_numeric(log[col], errors="coerce")
    return log
