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
from ssbench.errors import UserError
from ssbench.methods.api import StepInfo


class NonFiniteLoss(UserError):
    pass


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


def epoch_pool(method_cls, cfg) -> str:
    """The pool whose passes make an epoch: the unlabeled slices for methods that use them (UniMatch's
    ``len(trainloader_u)``), the labeled ones otherwise."""
    return "unlabeled" if method_cls.uses_unlabeled and cfg.train.batch_unlabeled > 0 else "labeled"


def iters_per_epoch(method_cls, cfg, pools) -> int:
    pool = epoch_pool(method_cls, cfg)
    batch = cfg.train.batch_unlabeled if pool == "unlabeled" else cfg.train.batch_labeled
    return max(1, len(pools[pool]) // batch)


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
    device_pools = {name: DevicePool(pool, runtime.device) for name, pool in pools.items()} if on_device else {}
    for name, batch in (("batch_labeled", t.batch_labeled), ("batch_unlabeled", t.batch_unlabeled)):
        if batch % world:
            raise UserError(f"train.{name}={batch}: not divisible by the {world} processes (the batch is global)")

    def sampler(pool_name, batch, seed, drop_last):
        return Sampler(pools[pool_name], batch, seed, d.train_size, d.train_resize, augment, drop_last,
                       device_pools.get(pool_name), rank, world)

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


def make_optimizer(method, t, runtime):
    params = list(method.trainable_parameters())
    fused = {"fused": True} if runtime.device.type == "cuda" else {}  # one kernel for all parameters
    if t.optimizer == "sgd":
        return torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay, **fused)
    return torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay, **fused)


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


def _channels_last(batch, runtime):
    if batch is not None and runtime.channels_last:
        batch.image = batch.image.contiguous(memory_format=torch.channels_last)
    return batch


def train_step(method, step_fn, optimizer, samplers, runtime, step: StepInfo, t, sums: dict) -> float:
    """One step: draw the batches, forward, backward, update, EMA; the losses are added to ``sums`` on the device.
    Nothing here waits for the device (tests/test_gpu_paths.py proves it with ``engine.hostsync``); the host reads
    the sums only at the loss rows. Returns the step's learning rate."""
    method.train()
    lr = step_lr(t.lr, step.iteration, t.iters, t.poly_power)
    for group in optimizer.param_groups:
        group["lr"] = lr
    labeled = _channels_last(samplers["labeled"].next(runtime.device), runtime)
    unlabeled = _channels_last(_draw_unlabeled(samplers, runtime.device), runtime)
    with runtime.autocast():
        losses = step_fn(labeled, unlabeled, step)
    optimizer.zero_grad(set_to_none=True)
    losses["loss"].backward()
    optimizer.step()
    method.after_optimizer_step(step)
    for k, v in losses.items():
        sums[k] = sums[k] + v.detach().float() if k in sums else v.detach().float()
    return lr


def train(cfg, method, pools, val_cases, staging: Path, runtime, resume: bool, console) -> dict:
    """Train for cfg.train.iters steps; write best.pt, final.pt and train_log.csv (rank 0); return the best
    ``{"dice", "iteration"}`` on the selection set."""
    t = cfg.train
    device = runtime.device
    ckpt_dir = staging / "checkpoints"
    if runtime.is_main:
        ckpt_dir.mkdir(exist_ok=True)
    if runtime.channels_last:
        method.to(memory_format=torch.channels_last)
    torch.backends.cudnn.benchmark = runtime.cudnn_benchmark
    step_fn = _step_function(method, runtime, t.sync_bn == "on")
    optimizer = make_optimizer(method, t, runtime)
    samplers = make_samplers(type(method), cfg, pools, runtime)
    val_every = iters_per_epoch(type(method), cfg, pools) if t.val_every == "epoch" else t.val_every
    start, best, log = 0, {"dice": -1.0, "iteration": -1}, []
    last = ckpt_dir / "last.pt"
    if resume and last.exists():
        start, best, log = restore_training_state(last, cfg, method, optimizer, samplers, runtime)
    else:  # a fresh start inherits no file of an earlier attempt
        for stale in [ckpt_dir / "best.pt", ckpt_dir / "final.pt", *ckpt_dir.glob("best-at-*.pt")]:
            stale.unlink(missing_ok=True)

    progress = _Progress(console if runtime.is_main else None, t.iters, start)
    t_start = time.time()
    val_dice = math.nan
    sums: dict[str, torch.Tensor] = {}
    for it in range(start, t.iters):
        lr = train_step(method, step_fn, optimizer, samplers, runtime, StepInfo(it, t.iters), t, sums)
        done = it + 1
        validate = done % val_every == 0 or done == t.iters
        save_state = done % t.checkpoint_every == 0 and done < t.iters
        if not (validate or save_state or done % runtime.log_every == 0):
            continue
        n = done - (log[-1]["iteration"] if log else start)  # steps in this row's means
        if runtime.world > 1:  # every rank reaches the same rows: the logged losses are those of the global batch
            sums = _mean_over_ranks(sums, runtime)
        row = {"iteration": done, "lr": lr, **{k: float(v) / n for k, v in sums.items()}}
        sums = {}
        if not math.isfinite(row["loss"]):  # checked on the logged rows: no host synchronisation in the step
            terms = ", ".join(f"{k}={v:.4g}" for k, v in row.items() if k.startswith("loss"))
            raise NonFiniteLoss(f"training stopped at iteration {done}: non-finite loss ({terms})"
                                + (f", means of the last {n} steps" if n > 1 else "")
                                + "; nothing was published (a smaller train.lr may help)")
        if validate and runtime.is_main:
            val_dice = mean_val_dice(method, val_cases, cfg, device)
            row["val_dice"] = val_dice
            if val_dice > best["dice"]:
                best = {"dice": val_dice, "iteration": done}
                torch_save(ckpt_dir / "best.pt", _weights(method, done, val_dice, cfg))
        row["elapsed_s"] = round(time.time() - t_start, 2)
        log.append(row)
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
                torch_save(last, {
                    "config_hash": cfg.hash(), "iteration": done, "method": method.state_dict(),
                    "optimizer": optimizer.state_dict(), "samplers": {n: s.state_dict() for n, s in samplers.items()},
                    "rng": rng, "best": best, "log": log, "best_file": best_file,
                })
                for old in ckpt_dir.glob("best-at-*.pt"):
                    if old.name != best_file:
                        old.unlink()
        progress.update(done, row, val_dice, best)
    progress.close()
    if runtime.is_main:
        if best["iteration"] < 0:
            raise UserError("no validation gave a Dice score (the validation cases hold no foreground label): "
                            "nothing to select a checkpoint with")
        torch_save(ckpt_dir / "final.pt", _weights(method, t.iters, val_dice, cfg))
    return best


def restore_training_state(last: Path, cfg, method, optimizer, samplers, runtime) -> tuple[int, dict, list]:
    """Continue from the resumable checkpoint ``last``, whatever device wrote it: the state is read to the CPU
    (``checkpoint.load``); weights and optimizer state go to the device of the parameters they belong to, sampler
    and RNG states stay on the CPU (the CUDA generator takes its state as a CPU ByteTensor); best.pt as it was
    then (rank 0). Returns (iteration, best, log) as of the checkpoint."""
    state = checkpoint.load(last, cfg.hash())
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


def _weights(method, iteration: int, val_dice: float, cfg) -> dict:
    return {"method": method.state_dict(), "iteration": iteration, "val_dice": val_dice, "config_hash": cfg.hash()}


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

    def update(self, done: int, row: dict, val_dice: float, best: dict) -> None:
        if self.console is None:
            return
        losses = " ".join(f"{k}={v:.3f}" for k, v in row.items() if k.startswith("loss"))
        val = "" if math.isnan(val_dice) else f" val_dice={val_dice:.3f} best={best['dice']:.3f}@{best['iteration']}"
        if self.bar is not None:
            self.bar.update(self.task, completed=done, info=losses + val)
            return
        now = time.time()
        if "val_dice" in row or done == self.total or now - self.last >= self.every_s:
            self.last = now
            rate = (done - self.start) / max(now - self.t0, 1e-9)
            eta = (self.total - done) / rate if rate > 0 else float("nan")
            self.console.print(f"iteration {done}/{self.total} {losses}{val} {rate:.2f} it/s ETA {_duration(eta)}",
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
