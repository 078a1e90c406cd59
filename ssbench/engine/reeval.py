"""``ssbench eval``: re-evaluate a completed run's checkpoints on its test set under another metric policy.

The run's own files are never changed: results go to ``evals/<empty>-<units>/`` inside the run folder. The run
folder is checked first: its config must be the one recorded (hash), and each checkpoint must belong to it.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from ssbench import registry, runfolder
from ssbench.engine.runconfig import RunConfig
from ssbench.errors import ConfigError, UserError


def reevaluate(run_dir: Path, hd_units: str | None, empty: str | None, device_name: str,
               data_root: str | None = None) -> str:
    """``data_root``: where the run's data are now (else the recorded data.root); they must be the same data
    (the recorded data.identity: name, classes, case list)."""
    from ssbench.engine.evaluate import evaluate_checkpoints, summary_of
    from ssbench.engine.train import deterministic_algorithms

    run_dir = Path(run_dir)
    cfg, dataset, method, test, recorded, device = _open_run(run_dir, hd_units, empty, device_name, data_root)
    with deterministic_algorithms(cfg.train.deterministic):
        frame = evaluate_checkpoints(method, test, dataset, cfg, device, run_dir / runfolder.CHECKPOINTS,
                                     config_hash=recorded)
    sub = runfolder.evaluation_dir(run_dir, cfg.eval.empty, cfg.eval.hd_units)
    runfolder.write_results(sub, frame, summary_of(frame, cfg))
    return str(sub.relative_to(run_dir))


def reevaluate_prompted(run_dir: Path, protocol: str, device_name: str, data_root: str | None = None) -> str:
    """``ssbench eval RUN --protocol medsam2``: predict again with ground-truth prompts (engine/prompted_eval.py)."""
    from ssbench.engine.prompted_eval import check_promptable, evaluate_prompted
    from ssbench.engine.train import deterministic_algorithms

    run_dir = Path(run_dir)
    cfg, dataset, method, test, recorded, device = _open_run(run_dir, None, None, device_name, data_root,
                                                             lambda cls: check_promptable(cls, protocol))
    with deterministic_algorithms(cfg.train.deterministic):
        return evaluate_prompted(method, test, dataset, cfg, device, run_dir, protocol, config_hash=recorded)


def _open_run(run_dir: Path, hd_units: str | None, empty: str | None, device_name: str,
              data_root: str | None = None, check=None):
    """A completed run folder, checked -> (cfg, dataset, method with the run's architecture, test cases, recorded
    config hash, device)."""
    from ssbench.fields import apply_override
    from ssbench.engine.plan import resolve_device, resolve_hd_units
    from ssbench.engine.run import build_method, load_cases

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: not a folder (expected a completed run folder)")
    for name in runfolder.missing_files(run_dir, weights=True):
        if name not in (runfolder.SUMMARY, runfolder.CASES):  # what is re-evaluated need not be there
            raise UserError(f"{run_dir / name}: missing (not a completed run folder)")
    info = runfolder.read_info(run_dir, full_path=True)
    if info.get("status") != "complete":
        raise UserError(f"{run_dir}: the run is not complete")
    raw, recorded = runfolder.read_config(run_dir, full_path=True)
    try:
        method_cls = _registered(registry.method, str(raw["method"]), info.get("method_source"))
        dataset_cls = _registered(registry.dataset, str(raw["data"]["dataset"]), None)
        cfg = RunConfig.from_dict(raw, method_cls, dataset_cls)
    except (KeyError, TypeError) as exc:
        raise UserError(f"{run_dir / runfolder.CONFIG}: not a run config (missing {exc})") from None
    except ConfigError as exc:
        raise ConfigError(f"{run_dir / runfolder.CONFIG}: {exc}") from None
    split = runfolder.read_json(run_dir / runfolder.SPLIT, full_path=True)
    if not isinstance(split.get("test"), list) or not all(isinstance(p, str) for p in split["test"]):
        raise UserError(f"{run_dir / runfolder.SPLIT}: no list of test patients")
    if check is not None:
        check(method_cls)
    policy = cfg.eval
    if hd_units is not None:
        policy = apply_override(policy, "hd_units", hd_units, label="--hd-units")
    if empty is not None:
        policy = apply_override(policy, "empty", empty, label="--empty-policy")
    cfg = dataclasses.replace(cfg, eval=policy)
    if data_root is not None:
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, root=os.path.abspath(data_root)))
    dataset = dataset_cls(cfg.data.root, cfg.dataset_options)
    found = dataset.identity()["digest"]
    if cfg.data.identity and found != cfg.data.identity:
        raise UserError(f"{cfg.data.root}: not the data this run used (their identity is {found}, the run's "
                        f"{cfg.data.identity}: another name, class list or case list)"
                        + ("" if data_root is not None else "; give the run's data with --data-root"))
    cfg = resolve_hd_units(cfg, dataset)
    device = resolve_device(device_name)
    method = build_method(cfg, method_cls, dataset, device, weights_from_checkpoint=True)
    test = load_cases(dataset, split["test"], True)
    return cfg, dataset, method, test, recorded, device


def _registered(load, name: str, source):
    """The registered class, or an error that says how the run's own came in (a --plugin must be given again)."""
    try:
        return load(name)
    except UserError as exc:
        if isinstance(source, dict) and source.get("plugin"):
            raise UserError(f"{exc}; the run was made with --plugin {source['plugin']}: give it again") from None
        raise
