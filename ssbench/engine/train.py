"""The training loop: SGD/AdamW with poly LR, periodic validation and checkpoints, resumable bit for bit on CPU."""

from __future__ import annotations

import math
import os
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import torch

from ssbench.atomic import snapshot, torch_save, write_csv
from ssbench.engine import checkpoint
from ssbench.engine.data import Sampler
from ssbench.engine.evaluate import mean_val_dice
from ssbench.engine.schedule import epoch_pool, iters_per_epoch  # noqa: F401  (the loop's epochs)
from ssbench.errors import UserError
from ssbench.methods.api import StepInfo


class NonFiniteLoss(UserError):
    pass


def finite_state(state: dict, iteration: int, name: str) -> dict:
    """``state`` (a method's state_dict) if every floating tensor in it is finite; else stop the run before
    ``name`` is saved. One reduction over all tensors (one host sync per saved checkpoint): the logged losses
    come before each step's update, so weights that overflow in the last steps are caught only here."""
    floats = [t for t in state.values() if torch.is_tensor(t) and t.is_floating_point()]
    if floats and not bool(torch.stack([torch.isfinite(t).all() for t in floats]).all()):
        bad = sum(int((~torch.isfinite(t)).sum()) for t in floats)
        total = sum(t.numel() for t in floats)
        raise NonFiniteLoss(f"training stopped at iteration {iteration}: the weights hold {bad} of {total} "
                            f"non-finite values (NaN or infinity) as {name} was to be saved; nothing was published "
                            "(a smaller train.lr may help)")
    return state


@contextmanager
def deterministic_algorithms(enabled: bool, record: list | None = None):
    """``train.deterministic`` (``--deterministic``): the same numbers from the same seed on a GPU too, at some
    speed cost. cuDNN autotuning off and its deterministic kernels on, ``torch.use_deterministic_algorithms`` and
    the cuBLAS workspace setting it needs (``CUBLAS_WORKSPACE_CONFIG=:4096:8`` unless already set). An op without
    a deterministic CUDA kernel warns instead of failing; its message is appended to ``record`` (run.json).
    On CPU the UNet methods repeat exactly without it. The previous global settings are restored on exit."""
    if not enabled:
        yield
        return
    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved[2], saved[3]
        if record is not None:
            record.extend(dict.fromkeys(str(w.message).splitlines()[0] for w in caught
                                        if "deterministic" in str(w.message)))
        for w in caught:  # everything else is shown as usual
            if "deterministic" not in str(w.message):
                warnings.showwarning(w.message, w.category, w.filename, w.lineno)


def poly_lr(base: float, it: int, total: int, power: float) -> float:
    return base * (1.0 - it / total) ** power


def step_lr(base: float, it: int, total: int, power: float) -> float:
    """The LR of (0-based) step ``it``. SSL4MIS and UniMatch both set the LR *after* each optimizer step from that
    step's index, so step 0 and step 1 run with ``base`` and step k with poly(k - 1): reproduced here."""
    return poly_lr(base, max(it - 1, 0), total, power)


def make_samplers(method_cls, cfg, pools, runtime=None) -> dict[str, Sampler]:
    """One sampler per stream. A method that draws ``unlabeled_batch_multiplier`` unlabeled batches per step gets
    as many independent unlabeled streams (UniMatch's second loader over the same set for CutMix sources)."""
    from ssbench.engine.data import DevicePool

    t, d = cfg.train, cfg.data
    augment = t.augment != "none" and method_cls.engine_weak_augmentation
    by_epoch = t.schedule == "epochs"
    first = epoch_pool(method_cls, cfg)
    rank, world = (runtime.rank, runtime.world) if runtime is not None else (0, 1)
    on_device = runtime is not None and runtime.augment_on_device
    device_pools = {}
    if on_device:  # the budget (data.device_budget_gb) goes to the labeled pool first, the rest to the unlabeled
        budget = int(d.device_budget_gb * 2**30)
        for name in ("labeled", "unlabeled"):
            if name in pools:
                device_pools[name] = DevicePool(pools[name], runtime.device, budget)
                budget -= device_pools[name].resident_bytes
    for name, batch in (("batch_labeled", t.batch_labeled), ("batch_unlabeled", t.batch_unlabeled)):
        if batch % world:
            raise UserError(f"train.{name}={batch}: not divisible by the {world} processes (the batch is global)")

    workers = runtime.data_workers if runtime is not None else 0
    pin = runtime is not None and runtime.device.type == "cuda"

    def sampler(pool_name, batch, seed, drop_last):
        return Sampler(pools[pool_name], batch, seed, d.train_size, d.train_resize, augment, drop_last,
                       device_pools.get(pool_name), rank, world, workers, pin,
                       weak_always=t.augment == "rotflip-or-rotate")

    samplers = {"labeled": sampler("labeled", t.batch_labeled, t.seed, by_epoch and first == "labeled")}
    if first == "unlabeled":
        for k in range(method_cls.unlabeled_batch_multiplier):
            name = "unlabeled" if k == 0 else f"unlabeled_{k + 1}"
            samplers[name] = sampler("unlabeled", t.batch_unlabeled, t.seed + 1 + k, by_epoch)
    return samplers


def _draw_unlabeled(samplers, device):
    from ssbench.methods.api import Batch

    parts = [s.next(device) for name, s in samplers.items() if name.startswith("unlabeled")]
    if not parts:
        return None
    if len(parts) == 1:
        return parts[0]
    return Batch(torch.cat([p.image for p in parts]), None, sum((p.case_ids for p in parts), []),
                 sum((p.slice_indices for p in parts), []))


class Optimizers:
    """The optimizers of a method (``Method.optimizer_params``), used as one: ``zero_grad``, ``step`` (of the
    active ones: a stage may step only some), ``param_groups``, ``state``, ``state_dict``. The learning rate of each
    param group follows ``train.lr_schedule`` from that group's own initial rate. One optimizer saves its plain
    torch state dict (the format of single-network runs); several save ``{"optimizers": {name: state dict}}``."""

    def __init__(self, optimizers: dict[str, torch.optim.Optimizer]):
        self.optimizers = optimizers
        self.active = list(optimizers)
        # Initial rates, by group, kept here (not in the groups, which load_state_dict replaces).
        self.base_lrs = {name: [g["lr"] for g in o.param_groups] for name, o in optimizers.items()}

    def __getitem__(self, name: str) -> torch.optim.Optimizer:
        return self.optimizers[name]

    @property
    def param_groups(self) -> list[dict]:
        return [g for o in self.optimizers.values() for g in o.param_groups]

    @property
    def state(self) -> dict:
        return {k: v for o in self.optimizers.values() for k, v in o.state.items()}

    def set_lr(self, rate) -> float:
        """Each group's lr = ``rate(its initial lr)``; returns the first active group's."""
        first = None
        for name, o in self.optimizers.items():
            for group, base in zip(o.param_groups, self.base_lrs[name]):
                group["lr"] = rate(base)
                if first is None and name in self.active:
                    first = group["lr"]
        return first

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.optimizers.values():
            o.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for name in self.active:
            self.optimizers[name].step()

    def state_dict(self) -> dict:
        if len(self.optimizers) == 1:
            return next(iter(self.optimizers.values())).state_dict()
        return {"optimizers": {name: o.state_dict() for name, o in self.optimizers.items()}}

    def states(self, state: dict) -> dict:
        """name -> torch state dict, from either saved format."""
        if "optimizers" in state:
            return state["optimizers"]
        return {next(iter(self.optimizers)): state}

    def load_state_dict(self, state: dict) -> None:
        saved = self.states(state)
        if set(saved) != set(self.optimizers):
            raise ValueError(f"optimizers {sorted(saved)} saved, {sorted(self.optimizers)} expected")
        for name, o in self.optimizers.items():
            o.load_state_dict(saved[name])


def make_optimizer(method, t, runtime) -> Optimizers:
    """Every optimizer the method names (``optimizer_params``), built from ``train.*``."""
    fused = {"fused": True} if runtime.device.type == "cuda" else {}  # one kernel for all parameters
    built = {}
    for name, params in method.optimizer_params().items():
        params = list(params)
        if t.optimizer == "sgd":
            built[name] = torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay, **fused)
        else:
            built[name] = torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay, **fused)
        for group in built[name].param_groups:  # a group's rate relative to train.lr (UniMatch V2's head: x40)
            if "lr_scale" in group:
                group["lr"] = t.lr * group["lr_scale"]
    if not built:
        raise UserError(f"method {type(method).name!r} names no optimizer (optimizer_params() is empty)")
    return Optimizers(built)


def stage_lr(t, base: float, step: StepInfo) -> float:
    """The learning rate of ``step`` from the initial rate ``base`` (train.lr_schedule, over the step's stage)."""
    if t.lr_schedule == "constant":
        return base
    return step_lr(base, step.iteration, step.total, t.poly_power)


def run_stages(method) -> list:
    """The method's stages, checked: unique names, at least one step each, optimizers it has."""
    stages = list(method.stages())
    names = [s.name for s in stages]
    known = set(method.optimizer_params())
    if not stages or len(set(names)) != len(names):
        raise UserError(f"method {type(method).name!r}: stages() must name at least one stage, each once ({names})")
    for s in stages:
        if s.iters < 1:
            raise UserError(f"method {type(method).name!r}: stage {s.name!r} has {s.iters} iterations (at least 1)")
        used = set(s.optimizers or ()) | {x for pair in s.optimizer_from for x in pair}
        if used - known:
            raise UserError(f"method {type(method).name!r}: stage {s.name!r} names optimizer "
                            f"{sorted(used - known)[0]!r}, not one of {sorted(known)}")
    return stages


class _Step(torch.nn.Module):
    """A method's training step as a module's forward, so DistributedDataParallel can wrap it."""

    def __init__(self, method):
        super().__init__()
        self.method = method

    def forward(self, labeled, unlabeled, step):
        return self.method.training_step(labeled, unlabeled, step)


def _step_function(method, runtime, sync_bn: bool):
    if runtime.world == 1:
        return method.training_step
    from torch.nn.parallel import DistributedDataParallel

    if sync_bn:  # resolved by runtime.resolve_sync_bn (CUDA only); the BN statistics of the global batch
        torch.nn.SyncBatchNorm.convert_sync_batchnorm(method)
    # broadcast_buffers=False as UniMatch's official runs: with sync_bn off, each rank keeps its own statistics.
    return DistributedDataParallel(_Step(method), device_ids=[runtime.device.index] if runtime.device.type == "cuda"
                                   else None, broadcast_buffers=False, find_unused_parameters=True)


def _mean_over_ranks(sums: dict, runtime) -> dict:
    import torch.distributed as dist

    keys = sorted(sums)  # a method may log host scalars (a ramp weight): all go to the device for the collective
    stacked = torch.stack([sums[k].float().to(runtime.device) for k in keys])
    dist.all_reduce(stacked)
    return dict(zip(keys, stacked / runtime.world))


def _rng_states(runtime) -> list:
    """Every rank's torch (and CUDA) RNG state, gathered on all ranks (a collective: all ranks call it)."""
    own = (torch.get_rng_state(), torch.cuda.get_rng_state(runtime.device) if runtime.device.type == "cuda" else None)
    if runtime.world == 1:
        return [own]
    import torch.distributed as dist

    states = [None] * runtime.world
    dist.all_gather_object(states, own)
    return states


def compile_networks(method) -> list:
    """``train.compile=on``: torch.compile each of the method's networks in place (their forward; weights, state
    dict and checkpoints stay as they are). Returns the compiled modules.

    A network with BatchNorm is compiled block by block: each module holding a BatchNorm layer as a direct child.
    Methods also call a network's parts (UniMatch: ``encode``/``decode`` for the feature-perturbed pass), so a
    compiled whole-network forward and an eager call of the same BatchNorm would meet in one step, and the compiled
    graph's write-back of the running statistics invalidates what the eager call saved for backward (RuntimeError:
    "modified by an inplace operation"). Compiled blocks are on every path."""
    compiled = []
    for network in method.compile_targets():
        blocks = [m for m in network.modules()
                  if any(isinstance(c, torch.nn.modules.batchnorm._BatchNorm) for c in m.children())]
        for module in blocks or [network]:
            module.compile()
            compiled.append(module)
    return compiled


def _channels_last(batch, runtime):
    if batch is not None and runtime.channels_last:
        batch.image = batch.image.contiguous(memory_format=torch.channels_last)
    return batch


def train_step(method, step_fn, optimizer, samplers, runtime, step: StepInfo, t, sums: dict,
               draw_unlabeled: bool = True) -> float:
    """One step: draw the batches, forward, backward, update, EMA; the losses are added to ``sums`` on the device.
    Nothing here waits for the device (tests/engine/test_gpu_paths.py proves it with ``engine.hostsync``); the host reads
    the sums only at the loss rows. ``draw_unlabeled=False``: a labeled-only stage. Returns the step's learning
    rate."""
    method.train()
    lr = optimizer.set_lr(lambda base: stage_lr(t, base, step))
    labeled = _channels_last(samplers["labeled"].next(runtime.device), runtime)
    unlabeled = _channels_last(_draw_unlabeled(samplers, runtime.device), runtime) if draw_unlabeled else None
    with runtime.autocast():
        losses = step_fn(labeled, unlabeled, step)
    optimizer.zero_grad(set_to_none=True)
    losses["loss"].backward()
    optimizer.step()
    method.after_optimizer_step(step)
    for k, v in losses.items():
        sums[k] = sums[k] + v.detach().float() if k in sums else v.detach().float()
    return lr


def val_schedule(t, per_epoch: int):
    """Whether a validation is due after ``done`` steps of a stage of ``total`` steps: every ``train.val_every``
    steps, or with ``val_every=epoch`` at the end of the first epoch and every ``val_epochs``-th one after it (AD-MT:
    its epochs 0, 2, 4, ...); always at the end of the stage."""
    def due(done: int, total: int) -> bool:
        if done == total:
            return True
        if t.val_every == "epoch":
            return done % per_epoch == 0 and (done // per_epoch - 1) % t.val_epochs == 0
        return done % t.val_every == 0
    return due


def train(cfg, method, pools, val_cases, staging: Path, runtime, resume: bool, console, tracker=None) -> dict:
    """Train the method's stages (one stage of cfg.train.iters steps for most methods); write best.pt, final.pt
    and train_log.csv (rank 0); return the best ``{"dice", "iteration"}`` on the selection set of the last stage,
    with ``"stages"``: each stage's best (a method with stages also keeps ``checkpoints/<stage>-best.pt`` of each
    stage but the last). ``tracker`` (rank 0; ``engine.tracking``) is started here from the step the run continues
    from and given each log row's values, as the host already holds them; its caller closes it."""
    t = cfg.train
    device = runtime.device
    ckpt_dir = staging / "checkpoints"
    if runtime.is_main:
        ckpt_dir.mkdir(exist_ok=True)
    if runtime.channels_last:
        method.to(memory_format=torch.channels_last)
    if t.compile == "on":
        compile_networks(method)
    torch.backends.cudnn.benchmark = runtime.cudnn_benchmark
    step_fn = _step_function(method, runtime, t.sync_bn == "on")
    optimizer = make_optimizer(method, t, runtime)
    stages = run_stages(method)
    ends = [sum(s.iters for s in stages[: i + 1]) for i in range(len(stages))]
    total = ends[-1]
    samplers = make_samplers(type(method), cfg, pools, runtime)
    val_due = val_schedule(t, iters_per_epoch(type(method), cfg, pools))
    start, best, log = 0, {"dice": -1.0, "iteration": -1}, []
    last = ckpt_dir / "last.pt"
    saved: dict = {}
    if resume and last.exists():
        start, best, log = restore_training_state(last, cfg, method, optimizer, samplers, runtime, saved)
    else:  # a fresh start inherits no file of an earlier attempt
        for stale in [ckpt_dir / "best.pt", ckpt_dir / "final.pt", *ckpt_dir.glob("best-at-*.pt"),
                      *(ckpt_dir / _stage_best(s) for s in stages)]:
            stale.unlink(missing_ok=True)
    # The stage of the last step done (resumed exactly at a stage's end, the next stage begins in the loop).
    k = next(i for i, end in enumerate(ends) if start <= end)
    optimizer.active = list(stages[k].optimizers or optimizer.optimizers)

    if tracker is not None:
        tracker.start(start, saved.get("tracking"))
    progress = _Progress(console if runtime.is_main else None, total, start)
    t_start = time.time()
    val_dice = math.nan
    sums: dict[str, torch.Tensor] = {}
    for it in range(start, total):
        if it == ends[k]:  # the next stage starts from this one's best checkpoint
            _begin_stage(method, optimizer, stages[k], stages[k + 1], ckpt_dir, cfg, runtime)
            k += 1
            best = {"dice": -1.0, "iteration": -1}
        stage = stages[k]
        offset = ends[k] - stage.iters
        step = StepInfo(it - offset, stage.iters, stage.name)
        lr = train_step(method, step_fn, optimizer, samplers, runtime, step, t, sums, stage.uses_unlabeled)
        done = it + 1
        validate = val_due(done - offset, stage.iters)
        save_state = done % t.checkpoint_every == 0 and done < total
        if not (validate or save_state or done % runtime.log_every == 0):
            continue
        n = done - (log[-1]["iteration"] if log else start)  # steps in this row's means
        if runtime.world > 1:  # every rank reaches the same rows: the logged losses are those of the global batch
            sums = _mean_over_ranks(sums, runtime)
        row = {"iteration": done, **({"stage": stage.name} if len(stages) > 1 else {}), "lr": lr,
               **{k_: float(v) / n for k_, v in sums.items()}}
        sums = {}
        if not math.isfinite(row["loss"]):  # checked on the logged rows: no host synchronisation in the step
            terms = ", ".join(f"{k_}={v:.4g}" for k_, v in row.items() if k_.startswith("loss"))
            raise NonFiniteLoss(f"training stopped at iteration {done}: non-finite loss ({terms})"
                                + (f", means of the last {n} steps" if n > 1 else "")
                                + "; nothing was published (a smaller train.lr may help)")
        detail: dict = {}
        if validate and runtime.is_main:
            val_dice = mean_val_dice(method, val_cases, cfg, device, detail)
            row["val_dice"] = val_dice
            if val_dice > best["dice"]:
                best = {"dice": val_dice, "iteration": done}
                # A stage that another follows keeps its optimizer state too: the next stage starts from it.
                torch_save(ckpt_dir / "best.pt", _weights(method, done, val_dice, cfg,
                                                          optimizer if k < len(stages) - 1 else None, "best.pt"))
        if validate and done == ends[k] and best["iteration"] < 0 and runtime.is_main:
            raise UserError(f"no validation gave a Dice score{_in_stage(stage, stages)} (the validation cases hold "
                            "no foreground label): nothing to select a checkpoint with")
        row["elapsed_s"] = round(time.time() - t_start, 2)
        log.append(row)
        if tracker is not None:
            _track(tracker, done, row, optimizer, detail, method.ctx.num_classes)
        if validate and runtime.is_main:
            write_csv(staging / "train_log.csv", pd.DataFrame(log))
        if save_state:
            rng = _rng_states(runtime)
            if runtime.is_main:
                # best.pt as of this checkpoint: a resumed run restores it, so that its best checkpoint never
                # comes from iterations the interrupted attempt ran past the checkpoint.
                best_file = None
                if best["iteration"] > 0:
                    best_file = f"best-at-{done}.pt"
                    snapshot(ckpt_dir / "best.pt", ckpt_dir / best_file)
                if tracker is not None:  # every step up to this checkpoint written, so that a resume finds it
                    tracker.flush()
                torch_save(last, {
                    "config_hash": cfg.hash(), "iteration": done,
                    "method": finite_state(method.state_dict(), done, last.name),
                    "optimizer": optimizer.state_dict(), "samplers": {n: s.state_dict() for n, s in samplers.items()},
                    "rng": rng, "best": best, "log": log, "best_file": best_file,
                    **({"tracking": tracker.history} if tracker is not None else {}),
                })
                for old in ckpt_dir.glob("best-at-*.pt"):
                    if old.name != best_file:
                        old.unlink()
        progress.update(done, row, val_dice, best, stage.name if len(stages) > 1 else None)
    progress.close()
    for s in samplers.values():
        s.close()  # the DataLoader workers, if any
    if runtime.is_main:
        torch_save(ckpt_dir / "final.pt", _weights(method, total, val_dice, cfg, name="final.pt"))
    if len(stages) > 1:
        return {**best, "stages": stage_bests(log, stages)}
    return best


def stage_bests(log: list[dict], stages) -> list[dict]:
    """Each stage's selected checkpoint, from the training log: the first validation with the stage's highest
    score (the engine keeps a checkpoint only when the score improves)."""
    out = []
    for s in stages:
        rows = [r for r in log if r.get("stage") == s.name and not math.isnan(r.get("val_dice", math.nan))]
        top = max(rows, key=lambda r: (r["val_dice"], -r["iteration"]), default=None)
        out.append({"name": s.name, "iterations": s.iters, "best_iteration": top["iteration"] if top else None,
                    "best_score": top["val_dice"] if top else None})
    return out


def _stage_best(stage) -> str:
    return f"{stage.name}-best.pt"


def _in_stage(stage, stages) -> str:
    return f" in stage {stage.name!r}" if len(stages) > 1 else ""


def _begin_stage(method, optimizer: Optimizers, previous, stage, ckpt_dir: Path, cfg, runtime) -> None:
    """Start ``stage`` from the best checkpoint of ``previous`` (kept as ``<previous>-best.pt``): the method's
    state and every optimizer's state as they were then, ``stage.optimizer_from`` applied; then the method's own
    ``begin_stage``. Every rank reads the file rank 0 wrote."""
    kept = ckpt_dir / _stage_best(previous)
    if runtime.is_main:
        os.replace(ckpt_dir / "best.pt", kept)
    if runtime.world > 1:
        import torch.distributed as dist

        dist.barrier()
    state = checkpoint.load(kept, cfg.hash())
    checkpoint.load_weights(method, state, kept)
    optimizer.load_state_dict(state["optimizer"])
    saved = optimizer.states(state["optimizer"])
    for target, source in stage.optimizer_from:
        optimizer[target].load_state_dict(saved[source])
    optimizer.active = list(stage.optimizers or optimizer.optimizers)
    method.begin_stage(stage)


def restore_training_state(last: Path, cfg, method, optimizer, samplers, runtime,
                           extra: dict | None = None) -> tuple[int, dict, list]:
    """Continue from the resumable checkpoint ``last``, whatever device wrote it: the state is read to the CPU
    (``checkpoint.load``); weights and optimizer state go to the device of the parameters they belong to, sampler
    and RNG states stay on the CPU (the CUDA generator takes its state as a CPU ByteTensor); best.pt as it was
    then (rank 0). Returns (iteration, best, log) as of the checkpoint; ``extra`` receives the tracked rows
    (``"tracking"``) where the checkpoint has them."""
    state = checkpoint.load(last, cfg.hash())
    if extra is not None and "tracking" in state:
        extra["tracking"] = state["tracking"]
    if len(state.get("rng", ())) != runtime.world:
        raise UserError(f"{last}: started with {len(state.get('rng', ()))} processes; resume it with as many")
    checkpoint.load_weights(method, state, last)
    optimizer.load_state_dict(state["optimizer"])
    for name, s in samplers.items():
        s.load_state_dict(state["samplers"][name])
    cpu_rng, cuda_rng = state["rng"][runtime.rank]
    torch.set_rng_state(cpu_rng)
    if runtime.device.type == "cuda" and cuda_rng is not None:
        torch.cuda.set_rng_state(cuda_rng, runtime.device)
    if runtime.is_main:
        _restore_best(last.parent, state, last)
    return state["iteration"], state["best"], state["log"]


def _restore_best(ckpt_dir: Path, state: dict, last: Path) -> None:
    """best.pt as it was when ``last`` was saved (checkpoints written before this record have no snapshot)."""
    if "best_file" not in state:
        return
    if state["best_file"] is None:
        (ckpt_dir / "best.pt").unlink(missing_ok=True)
        return
    saved = ckpt_dir / state["best_file"]
    if not saved.is_file():
        raise UserError(f"{saved}: missing (the best checkpoint as of {last.name}); cannot resume this run")
    snapshot(saved, ckpt_dir / "best.pt")


def _track(tracker, done: int, row: dict, optimizer: Optimizers, detail: dict, num_classes: int) -> None:
    """A log row to the tracker: the row's values, each param group's rate, a validation's per-class Dice and its
    overlay pictures (all on the host already: validation predicted them)."""
    from ssbench.engine.tracking import overlay, row_scalars

    names = tracker.class_names
    per_class = {names[c - 1] if c - 1 < len(names) else f"class{c}": v
                 for c, v in detail.get("per_class", {}).items()}
    tracker.log(done, row_scalars(row, optimizer, per_class))
    for case_id, image, label, pred in detail.get("slices", ()):
        if tracker.picture_cases is None or case_id in tracker.picture_cases:
            tracker.image(done, f"val/overlay/{case_id}", overlay(image, label, pred, num_classes))


def _weights(method, iteration: int, val_dice: float, cfg, optimizer: Optimizers | None = None,
             name: str = "a checkpoint") -> dict:
    state = {"method": finite_state(method.state_dict(), iteration, name), "iteration": iteration,
             "val_dice": val_dice, "config_hash": cfg.hash()}
    if optimizer is not None:
        state["optimizer"] = optimizer.state_dict()
    return state


class _Progress:
    """Progress of a run: a rich bar on a terminal; without one (a job's log file) a plain line every
    ``every_s`` seconds and at each validation (iteration, losses, val Dice, it/s, ETA); silent without a
    console."""

    def __init__(self, console, total: int, start: int, every_s: float = 30.0):
        self.console, self.total, self.start = console, total, start
        self.bar = None
        self.t0 = self.last = time.time()
        self.every_s = every_s
        if console is None or not console.is_terminal:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(
            TextColumn("train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
            TimeRemainingColumn(), console=console, transient=False,
        )
        self.bar.start()
        self.task = self.bar.add_task("train", total=total, completed=start, info="")

    def update(self, done: int, row: dict, val_dice: float, best: dict, stage: str | None = None) -> None:
        if self.console is None:
            return
        where = f" [{stage}]" if stage else ""
        losses = " ".join(f"{k}={v:.3f}" for k, v in row.items() if k.startswith("loss"))
        val = "" if math.isnan(val_dice) else f" val_dice={val_dice:.3f} best={best['dice']:.3f}@{best['iteration']}"
        if self.bar is not None:
            self.bar.update(self.task, completed=done, info=(f"{stage} " if stage else "") + losses + val)
            return
        now = time.time()
        if "val_dice" in row or done == self.total or now - self.last >= self.every_s:
            self.last = now
            rate = (done - self.start) / max(now - self.t0, 1e-9)
            eta = (self.total - done) / rate if rate > 0 else float("nan")
            self.console.print(f"iteration {done}/{self.total}{where} {losses}{val} {rate:.2f} it/s ETA {_duration(eta)}",
                               highlight=False, markup=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def _duration(seconds: float) -> str:
    if math.isnan(seconds):
        return "?"
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"
