"""One run: resolve the config, load and validate the data, train with validation-based selection, evaluate the
test set once at the end (best-val and final checkpoints) and publish the results folder atomically.

The results folder is assembled in a hidden staging folder ``.<name>.incomplete`` beside its final place and
renamed into place only when everything is written: a run that dies leaves nothing that looks complete, and
``--resume`` continues from the staging folder's periodic checkpoint.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

from ssbench import runfolder
from ssbench.datasets.base import check_case, check_foreground, check_split
from ssbench.datasets.duplicates import check_unlabeled_against, held_out_hashes
from ssbench.engine import record
from ssbench.engine.runconfig import UNHASHED_DATA, RunConfig
from ssbench.engine.plan import RunRequest, dataset_tag, plan, plan_text  # noqa: F401  (RunRequest: the API's)
from ssbench.errors import UserError
from ssbench.runfolder import Staging


def load_cases(dataset, patients, with_label: bool):
    """The cases of ``patients``, each checked against the dataset contract (whichever loader made it). Cases read
    through the prepared cache were checked when they were prepared: their arrays stay on disk until used."""
    if getattr(dataset, "prepared", False):
        return [dataset.load_case(cid, with_label) for p in patients for cid in dataset.case_ids(p)]
    return [check_case(dataset.load_case(cid, with_label), dataset.num_classes)
            for p in patients for cid in dataset.case_ids(p)]


def open_prepared(dataset, split, method_cls, location: str | None, rank: int, world: int, console, say):
    """The dataset read through its prepared cache (``ssbench.datasets.cache``), the cases this run needs prepared
    first (rank 0 prepares, the other ranks then map the same files); the dataset itself with ``--data-cache
    off``. Returns (dataset, what run.json records of the cache)."""
    from ssbench.datasets import cache

    folder = cache.cache_location(location)
    if folder is None:
        return dataset, {"path": None}
    prepared = cache.PreparedData(dataset, folder)
    needs = cache.needs_of(dataset, split, method_cls.uses_unlabeled)
    if rank == 0:
        report = prepare_with_progress(prepared, needs, console, say)
    _barrier(world)
    if rank > 0:
        report = prepared.prepare(needs)  # everything is there now: nothing is written
    return prepared, {**prepared.record(), "cases_prepared_now": report.prepared, "cases_reused": report.reused,
                      "bytes": report.bytes}


def prepare_with_progress(prepared, needs, console, say, again: bool = False, jobs: int = 1):
    """``prepared.prepare(needs)`` with a progress bar on a terminal; says what was prepared and the disk use."""
    from ssbench.datasets.cache import human_bytes

    todo = [n for n in needs if prepared.case_info(n[0]) is None]
    bar = task = None
    if todo:
        others = prepared.others()
        why = (f" (the cache at {others[0]} was prepared by another loader version, code or options: not used)"
               if others else "")
        say(f"data: preparing {len(todo)} case(s) into {prepared.dir}{why}")
        if console is not None and console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            bar = Progress(TextColumn("prepare"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                           console=console, transient=True)
            bar.start()
            task = bar.add_task("prepare", total=len(todo))
    try:
        report = prepared.prepare(needs, (lambda done, total, cid: bar.update(task, completed=done))
                                  if bar is not None else None, again=again, jobs=jobs)
    finally:
        if bar is not None:
            bar.stop()
    if report.prepared or again:
        say(f"data: {report.prepared} case(s) prepared ({report.again} of them again: their sources changed), "
            f"{report.reused} reused; {human_bytes(report.bytes)} on disk in {prepared.dir}")
    return report


@dataclass
class Inputs:
    """Everything a run reads before it writes anything."""

    split: object
    labeled: list
    unlabeled: list
    val: list
    pools: dict


def load_inputs(cfg: RunConfig, method_cls, dataset, split, say) -> Inputs:
    """Load and validate every input. Test volumes are read here only to check that they load (shape, label
    values); their arrays are dropped and read again after training."""
    from ssbench.engine.data import SlicePool

    say(f"[bold]{cfg.method_name}[/] on {dataset_tag(cfg)}: split {cfg.data.split} -> {len(split.labeled)} labeled "
        f"patients, {len(split.unlabeled)} unlabeled, {len(split.val)} val, {len(split.test)} test")
    say(f"split protocol: {split.protocol}")
    for w in dataset.warnings():  # the loader's protocol choices (e.g. what nnU-Net's imagesTs/ is), before loading
        say(f"[bold yellow]NOTE[/]: {w}")
    check_split(split, dataset, ("labeled", "val", "test") + (("unlabeled",) if method_cls.uses_unlabeled else ()))
    labeled = load_cases(dataset, split.labeled, True)
    check_foreground(labeled, "labeled")
    unlabeled = load_cases(dataset, split.unlabeled, False) if method_cls.uses_unlabeled else []
    val = load_cases(dataset, split.val, True)
    check_foreground(val, "val")
    held_out = held_out_hashes(val, "val") if unlabeled else {}  # datasets/duplicates.py: the same scan, renamed
    for p in split.test:  # one at a time: checked, then dropped (a prepared cache checked them when preparing)
        for cid in dataset.case_ids(p):
            case = dataset.load_case(cid, True)
            if not getattr(dataset, "prepared", False):
                check_case(case, dataset.num_classes)
            if unlabeled:
                held_out.update(held_out_hashes([case], "test"))
    check_unlabeled_against(unlabeled, held_out)
    if method_cls.uses_unlabeled and not unlabeled:
        raise UserError(f"--split {cfg.data.split}: method {cfg.method_name} needs unlabeled patients, none left")
    pools = {"labeled": SlicePool.from_cases(labeled, True)}
    if unlabeled:
        pools["unlabeled"] = SlicePool.from_cases(unlabeled, False)
    return Inputs(split, labeled, unlabeled, val, pools)


def build_method(cfg: RunConfig, method_cls, dataset, device, inputs: Inputs | None = None,
                 weights_from_checkpoint: bool = False):
    """The method on ``device``, seeded, with the volumes it asked for attached. A bad checkpoint or option stops
    here, before anything is written."""
    import torch

    from ssbench.methods.api import MethodContext

    torch.manual_seed(cfg.train.seed)
    ctx = MethodContext(1, dataset.num_classes, cfg.data.train_size, cfg.train.iters, device, cfg.data.synthetic,
                        weights_from_checkpoint=weights_from_checkpoint, resize=cfg.data.train_resize)
    config = method_cls.for_evaluation(cfg.method_config) if weights_from_checkpoint else cfg.method_config
    method = method_cls(config, ctx).to(device)
    if inputs is not None:
        method.attach_labeled_volumes(inputs.pools["labeled"].labeled_volumes())
        if "unlabeled" in inputs.pools:
            method.attach_unlabeled_volumes(inputs.pools["unlabeled"].volumes())
    return method


def execute(req: RunRequest, console=None) -> Path:
    """Run end to end: plan, load and check, build, train, evaluate the test set once, publish. Returns the folder.

    Under torchrun every rank runs this; rank 0 alone writes, validates and evaluates, the others train their
    share of each batch and wait for it at the end."""
    import torch

    from ssbench.engine.evaluate import evaluate_checkpoints, rescore_under_protocol, summary_of
    from ssbench.engine.prompted_eval import PROMPTED, evaluate_prompted
    from ssbench.engine.runtime import init_distributed, make_runtime
    from ssbench.engine.train import deterministic_algorithms, train

    rank, world, rank_device = init_distributed(req.device)
    if req.world is not None and req.world != world:
        raise UserError(f"this run was planned for {req.world} process(es) and runs as {world}: start it with "
                        f"--gpus {req.world} (or as a sweep job of {req.world} GPUs)")
    say = console.print if console is not None and not req.quiet and rank == 0 else (lambda *a, **k: None)
    p = plan(req, device=rank_device or "resolve", fetch=True)
    for line in p.notes:
        say(line)
    cfg, dataset, device = p.cfg, p.dataset, p.device
    runtime = make_runtime(device, cfg.train.amp, cfg.train.deterministic, rank, world, **(req.execution or {}))
    split = p.split()
    staging = p.staging
    other = _other_dataset(p.run_dir, cfg)
    if other:  # two data sets filed under one name: --overwrite would destroy the other's run
        raise UserError(f"{p.run_dir}: holds a run on other data ({other}; this run's: {cfg.data.identity}, "
                        f"{len(dataset.patients())} cases); give this dataset another --out (or name it in its files)")
    if p.run_dir.exists() and not req.overwrite:
        diffs = config_differences(p.run_dir, cfg)
        if diffs is None:
            differs = "its config.yaml is unreadable"
        elif diffs:
            differs = f"its config differs: {'; '.join(diffs[:4])}" + (f"; +{len(diffs) - 4} more" * (len(diffs) > 4))
        else:
            differs = "the same config"
        raise UserError(f"{p.run_dir}: a completed run is already there (pass --overwrite to replace it; {differs})")

    # 1. Load and check every input, 2. build the method: both before anything is written (but the data cache).
    dataset, data_cache = open_prepared(dataset, split, p.method_cls, req.data_cache, rank, world, console, say)
    inputs = load_inputs(cfg, p.method_cls, dataset, split, say)
    p = p.with_schedule(inputs.pools)
    cfg = p.cfg
    if req.resume:
        check_resumable(staging.path, cfg)
        if staging.finished():  # interrupted between its last write and its publication
            if rank == 0:
                staging.check_lock()
                staging.publish()
            _barrier(world)
            return p.run_dir
    method = build_method(cfg, p.method_cls, dataset, device, inputs)
    if rank > 0:  # model-side randomness (dropout, strong views) differs per rank; rank 0 keeps the 1-process stream
        torch.manual_seed(cfg.train.seed + rank)
    for w in method.warnings:
        say(f"[bold red]WARNING[/]: {w}")
    say(plan_text(cfg, method, inputs, split, dataset, runtime, p.run_dir), markup=False, highlight=False,
        soft_wrap=True)

    # 3. Open the staging folder and record the protocol.
    t0 = time.time()
    info = record.run_info(p, split, runtime, method, dataset, data_cache)
    tracker = None
    if runtime.is_main and req.log:  # only rank 0 tracks (DDP)
        from ssbench.engine.tracking import Tracker, run_meta

        warn = (lambda m: console.print(f"[bold red]{m}[/]", highlight=False)) if console is not None else None
        tracker = Tracker(req.log, staging.path, run_meta(cfg, p.run_dir, req.out), **({"warn": warn} if warn else {}),
                          class_names=dataset.class_names, picture_cases={c.case_id for c in inputs.val})
    if runtime.is_main:  # only rank 0 writes; the other ranks wait at the barriers
        staging.open(resume=req.resume)
    try:
        if runtime.is_main:
            staging.write_config(cfg)
            staging.write_split(split)
            staging.write_info(info)
        _barrier(world)

        # 4. Train, selecting on val (or, named and warned, on val+test). 5. The test set, once, for the best-val
        # and the final checkpoint (rank 0).
        selection_cases = inputs.val
        if cfg.train.selection == "legacy-val+test" and runtime.is_main:
            selection_cases = inputs.val + load_cases(dataset, split.test, True)
        nondeterministic_ops: list[str] = []
        with deterministic_algorithms(cfg.train.deterministic, nondeterministic_ops):
            try:
                best = train(cfg, method, inputs.pools, selection_cases, staging.path, runtime, req.resume,
                             console if not req.quiet else None, tracker)
            finally:
                if tracker is not None:
                    tracker.close()
                    info["tracking"] = tracker.record()
            if runtime.is_main:
                test = load_cases(dataset, split.test, True)
                frame = evaluate_checkpoints(method, test, dataset, cfg, device, staging.checkpoints,
                                             staging.predictions)
        if runtime.is_main:
            selection = {"set": cfg.train.selection, "metric": "mean foreground Dice",
                         "best_iteration": best["iteration"], "best_score": best["dice"], "cases": len(selection_cases),
                         **({"stages": best["stages"]} if "stages" in best else {})}
            staging.write_results(frame, summary_of(frame, cfg, selection=selection))
            for name in cfg.eval.also_protocols:  # the published numbers' protocol, from the same predictions
                if name in PROMPTED:  # ground-truth prompts: predicted again, into evals/<name>/
                    evaluate_prompted(method, test, dataset, cfg, device, staging.path, name)
                else:
                    rescore_under_protocol(staging.path, test, dataset, cfg, name)
            staging.write_info(record.complete(info, time.time() - t0,
                                               nondeterministic_ops if cfg.train.deterministic else None))
            staging.publish()  # 6. in one rename
        _barrier(world)
    finally:
        if runtime.is_main:
            staging.release_lock()
    return p.run_dir


def _other_dataset(final_dir: Path, cfg: RunConfig) -> str:
    """'' if ``final_dir`` is absent or holds a run on the same data; else what the run there recorded."""
    try:
        recorded = runfolder.read_config(final_dir, verify=False)[0].get("data") or {}
    except runfolder.Unreadable:
        return ""  # nothing readable to compare: the usual refusal (or --overwrite) applies
    identity = recorded.get("identity") if isinstance(recorded, dict) else None
    if identity in (None, "", cfg.data.identity):
        return ""
    return f"data identity {identity}"


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def check_resumable(folder: Path, cfg: RunConfig) -> None:
    """``--resume`` continues only the run that the (staging) folder holds: the same config, key for key."""
    try:
        recorded = Staging.recorded_config_of(folder)
    except runfolder.Unreadable as exc:
        raise UserError(f"{exc}; run without --resume to start over") from None
    if recorded is None:
        return  # nothing recorded yet: the run starts from the beginning
    if recorded.pop("config_hash") == cfg.hash():
        return
    diffs = _differences(recorded, cfg)
    raise UserError(f"--resume: the interrupted run in {folder} has another config "
                    f"({'; '.join(diffs[:3]) or 'hash'}); use its options, or run without --resume to start over")


def _differences(recorded: dict, cfg: RunConfig, derived: tuple[str, ...] = ()) -> list[str]:
    now = _flatten(cfg.to_dict())
    before = _flatten(recorded)
    return [f"{k}: {before.get(k, '(absent)')} -> {now.get(k, '(absent)')}" for k in sorted(set(now) | set(before))
            if k.removeprefix("data.") not in UNHASHED_DATA and k not in derived and before.get(k) != now.get(k)]


def config_differences(folder: Path, cfg: RunConfig) -> list[str] | None:
    """'train.iters: 30000 -> 20', ...: how a recorded run's config differs from ``cfg`` (fields derived later in a
    run, such as train.iters under an epoch schedule, left out); None where unreadable."""
    try:
        recorded = runfolder.read_config(folder, verify=False)[0]
    except runfolder.Unreadable:
        return None
    derived = ("train.iters",) if cfg.train.schedule == "epochs" else ()
    return _differences(recorded, cfg, derived)


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


