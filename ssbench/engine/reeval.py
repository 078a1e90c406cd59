"""``ssbench eval``: re-evaluate a completed run's checkpoints on its test set under another metric policy.

The run's own files are never changed: results go to ``evals/<empty>-<units>/`` inside the run folder. The run
folder is checked first: its config must be the one recorded (hash), and each checkpoint must belong to it.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from ssbench import registry
from ssbench.atomic import write_csv, write_json
from ssbench.config import config_hash
from ssbench.engine.config import RunConfig
from ssbench.errors import ConfigError, UserError


def reevaluate(run_dir: Path, hd_units: str | None, empty: str | None, device_name: str) -> str:

    from ssbench.config import apply_override
    from ssbench.engine.evaluate import evaluate_checkpoints, summary_of
    from ssbench.engine.run import build_method, load_cases, resolve_device, resolve_hd_units
    from ssbench.engine.train import deterministic_algorithms

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: not a folder (expected a completed run folder)")
    for name in ("config.yaml", "run.json", "split.json", "checkpoints/best.pt", "checkpoints/final.pt"):
        if not (run_dir / name).is_file():
            raise UserError(f"{run_dir / name}: missing (not a completed run folder)")
    info = _read(run_dir / "run.json", dict)
    if info.get("status") != "complete":
        raise UserError(f"{run_dir}: the run is not complete")
    raw = _read(run_dir / "config.yaml", dict)
    recorded = raw.pop("config_hash", None)
    if recorded is None or recorded != _recorded_hash(raw):
        raise UserError(f"{run_dir / 'config.yaml'}: does not match its recorded config hash (edited after the run?)")
    try:
        method_cls = _registered(registry.method, str(raw["method"]), info.get("method_source"))
        dataset_cls = _registered(registry.dataset, str(raw["data"]["dataset"]), None)
        cfg = RunConfig.from_dict(raw, method_cls, dataset_cls)
    except (KeyError, TypeError) as exc:
        raise UserError(f"{run_dir / 'config.yaml'}: not a run config (missing {exc})") from None
    except ConfigError as exc:
        raise ConfigError(f"{run_dir / 'config.yaml'}: {exc}") from None
    split = _read(run_dir / "split.json", dict)
    if not isinstance(split.get("test"), list) or not all(isinstance(p, str) for p in split["test"]):
        raise UserError(f"{run_dir / 'split.json'}: no list of test patients")
    policy = cfg.eval
    if hd_units is not None:
        policy = apply_override(policy, "hd_units", hd_units, label="--hd-units")
    if empty is not None:
        policy = apply_override(policy, "empty", empty, label="--empty-policy")
    cfg = dataclasses.replace(cfg, eval=policy)
    dataset = dataset_cls(cfg.data.root, cfg.dataset_options)
    cfg = resolve_hd_units(cfg, dataset)
    device = resolve_device(device_name)
    method = build_method(cfg, method_cls, dataset, device, weights_from_checkpoint=True)
    test = load_cases(dataset, split["test"], True)
    with deterministic_algorithms(cfg.train.deterministic):
        frame = evaluate_checkpoints(method, test, dataset, cfg, device, run_dir / "checkpoints",
                                     config_hash=recorded)
    sub = f"evals/{cfg.eval.empty}-{cfg.eval.hd_units}"
    write_csv(run_dir / sub / "metrics_per_case.csv", frame)
    write_json(run_dir / sub / "summary.json", summary_of(frame, cfg))
    return sub


def _recorded_hash(raw: dict) -> str:
    """The hash RunConfig.hash() gave when the run wrote ``raw``, computed from the file as written (so a field
    added to a config class later does not make an old run look edited)."""
    from ssbench.engine.config import UNHASHED_DATA

    data = raw.get("data")
    d = {**raw, "data": {k: v for k, v in data.items() if k not in UNHASHED_DATA}} if isinstance(data, dict) else raw
    return config_hash(d)


def _read(path: Path, kind: type):
    """A run file's content (JSON or YAML), which must be a ``kind``; a UserError naming the file otherwise."""
    import yaml

    try:
        text = path.read_text()
        data = yaml.safe_load(text) if path.suffix == ".yaml" else json.loads(text)
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as exc:
        raise UserError(f"{path}: unreadable ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
                        ) from None
    if not isinstance(data, kind):
        raise UserError(f"{path}: expected a {'mapping' if kind is dict else kind.__name__}, got {type(data).__name__}")
    return data


def _registered(load, name: str, source):
    """The registered class, or an error that says how the run's own came in (a --plugin must be given again)."""
    try:
        return load(name)
    except UserError as exc:
        if isinstance(source, dict) and source.get("plugin"):
            raise UserError(f"{exc}; the run was made with --plugin {source['plugin']}: give it again") from None
        raise
