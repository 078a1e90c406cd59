"""``ssbench eval``: re-evaluate a completed run's checkpoints on its test set under another metric policy.

The run's own files are never changed: results go to ``evals/<empty>-<units>/`` inside the run folder.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import yaml

from ssbench import registry
from ssbench.atomic import write_csv, write_json
from ssbench.engine.config import RunConfig
from ssbench.errors import UserError


def reevaluate(run_dir: Path, hd_units: str | None, empty: str | None, device_name: str) -> str:

    from ssbench.config import apply_override
    from ssbench.engine.evaluate import evaluate_checkpoints, summary_of
    from ssbench.engine.run import build_method, load_cases, resolve_device, resolve_hd_units

    run_dir = Path(run_dir)
    for name in ("config.yaml", "run.json", "split.json", "checkpoints/best.pt", "checkpoints/final.pt"):
        if not (run_dir / name).is_file():
            raise UserError(f"{run_dir / name}: missing (not a completed run folder)")
    if json.loads((run_dir / "run.json").read_text()).get("status") != "complete":
        raise UserError(f"{run_dir}: the run is not complete")
    raw = yaml.safe_load((run_dir / "config.yaml").read_text())
    raw.pop("config_hash", None)
    method_cls = registry.method(raw["method"])
    dataset_cls = registry.dataset(raw["data"]["dataset"])
    cfg = RunConfig.from_dict(raw, method_cls, dataset_cls)
    policy = cfg.eval
    if hd_units is not None:
        policy = apply_override(policy, "hd_units", hd_units, label="--hd-units")
    if empty is not None:
        policy = apply_override(policy, "empty", empty, label="--empty-policy")
    cfg = dataclasses.replace(cfg, eval=policy)
    dataset = dataset_cls(cfg.data.root, cfg.dataset_options)
    cfg = resolve_hd_units(cfg, dataset)
    device = resolve_device(device_name)
    split = json.loads((run_dir / "split.json").read_text())
    method = build_method(cfg, method_cls, dataset, device, weights_from_checkpoint=True)
    test = load_cases(dataset, split["test"], True)
    frame = evaluate_checkpoints(method, test, dataset, cfg, device, run_dir / "checkpoints")
    sub = f"evals/{cfg.eval.empty}-{cfg.eval.hd_units}"
    write_csv(run_dir / sub / "metrics_per_case.csv", frame)
    write_json(run_dir / sub / "summary.json", summary_of(frame, cfg))
    return sub
