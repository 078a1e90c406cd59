"""Find completed runs under a results folder and read what the tables need: per-case rows and protocol facts.

A run counts only if its folder holds run.json with status 'complete', config.yaml and metrics_per_case.csv;
everything else is reported as skipped with the reason (staging folders of runs that did not finish, failed
runs, unreadable files).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import yaml


@dataclass
class Run:
    path: Path
    dataset: str  # e.g. 'acdc', 'acdc-phantom'
    method: str  # method name plus its variant, e.g. 'sss' or 'sss@dfe=false'
    base_method: str
    split: str  # the --split text
    labeled: int  # labeled patients it resolved to
    seed: int
    config_hash: str
    protocol: dict  # what must match to share a cell: metric policy, HD units, selection
    method_config: dict
    frame: pd.DataFrame = field(repr=False)
    train_log: pd.DataFrame | None = field(default=None, repr=False)

    @property
    def protocol_key(self) -> tuple:
        return tuple(sorted(self.protocol.items()))


@dataclass
class Skipped:
    path: Path
    reason: str


def collect(results: Path) -> tuple[list[Run], list[Skipped]]:
    runs, skipped = [], []
    for info_path in sorted(Path(results).rglob("run.json")):
        folder = info_path.parent
        if folder.name.endswith(".incomplete"):
            skipped.append(Skipped(folder, "incomplete (a staging folder: the run did not finish)"))
            continue
        try:
            info = json.loads(info_path.read_text())
            if info.get("status") != "complete":
                skipped.append(Skipped(folder, f"status {info.get('status')!r}, not complete"))
                continue
            cfg = yaml.safe_load((folder / "config.yaml").read_text())
            frame = pd.read_csv(folder / "metrics_per_case.csv")
        except (OSError, ValueError, yaml.YAMLError, pd.errors.ParserError) as exc:
            skipped.append(Skipped(folder, f"unreadable ({type(exc).__name__}: {exc})".splitlines()[0]))
            continue
        log = None
        if (folder / "train_log.csv").is_file():
            log = pd.read_csv(folder / "train_log.csv")
        method = cfg["method"]
        variant = folder.parent.parent.name
        runs.append(Run(
            path=folder,
            dataset=info["dataset"],
            method=variant if variant.startswith(method) else method,
            base_method=method,
            split=str(cfg["data"]["split"]),
            labeled=int(info["labeled_patients"]),
            seed=int(cfg["train"]["seed"]),
            config_hash=info["config_hash"],
            protocol={
                "empty_policy": cfg["eval"]["empty"],
                "hd_units": cfg["eval"]["hd_units"],
                "selection": cfg["train"]["selection"],
            },
            method_config=cfg.get(method, {}),
            frame=frame,
            train_log=log,
        ))
    return runs, skipped
