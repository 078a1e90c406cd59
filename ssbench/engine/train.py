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


def make_samplers(method_cls, cfg, pools) -> dict[str, Sampler]:
    """One sampler per stream. A method that draws ``unlabeled_batch_multiplier`` unlabeled batches per step gets
    as many independent unlabeled streams (UniMatch's second loader over the same set for CutMix sources)."""
    t, d = cfg.train, cfg.data
    augment = t.augment != "none" and method_cls.engine_weak_augmentation
    by_epoch = t.schedule == "epochs"
    first = epoch_pool(method_cls, cfg)
    samplers = {"labeled": Sampler(pools["labeled"], t.batch_labeled, t.seed, d.train_size, d.train_resize, augment,
                                   drop_last=by_epoch and first == "labeled")}
    if first == "unlabeled":
        for k in range(method_cls.unlabeled_batch_multiplier):
            name = "unlabeled" if k == 0 else f"unlabeled_{k + 1}"
            samplers[name] = Sampler(pools["unlabeled"], t.batch_unlabeled, t.seed + 1 + k, d.train_size,
                                     d.train_resize, augment, drop_last=by_epoch)
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


def train(cfg, method, pools, val_cases, staging: Path, device, resume: bool, console) -> dict:
    """Train for cfg.train.iters steps; write best.pt, final.pt and train_log.csv; return the best
    ``{"dice", "iteration"}`` on the selection set."""
    t = cfg.train
    ckpt_dir = staging / "checkpoints"
    ckpt_dir.mkdir(exist_ok=True)
    if t.optimizer == "sgd":
        optimizer = torch.optim.SGD(method.trainable_parameters(), lr=t.lr, momentum=t.momentum,
                                    weight_decay=t.weight_decay)
    else:
        optimizer = torch.optim.AdamW(method.trainable_parameters(), lr=t.lr, weight_decay=t.weight_decay)
    samplers = make_samplers(type(method), cfg, pools)
    val_every = iters_per_epoch(type(method), cfg, pools) if t.val_every == "epoch" else t.val_every
    start, best, log = 0, {"dice": -1.0, "iteration": -1}, []
    last = ckpt_dir / "last.pt"
    if resume and last.exists():
        state = checkpoint.load(last, device, cfg.hash())
        checkpoint.load_weights(method, state, last)
        optimizer.load_state_dict(state["optimizer"])
        for name, s in samplers.items():
            s.load_state_dict(state["samplers"][name])
        torch.set_rng_state(state["torch_rng"])
        if device.type == "cuda" and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"], device)
        start, best, log = state["iteration"], state["best"], state["log"]
        _restore_best(ckpt_dir, state, last)
    else:  # a fresh start inherits no file of an earlier attempt
        for stale in [ckpt_dir / "best.pt", ckpt_dir / "final.pt", *ckpt_dir.glob("best-at-*.pt")]:
            stale.unlink(missing_ok=True)

    progress = _Progress(console, t.iters, start)
    t_start = time.time()
    val_dice = math.nan
    for it in range(start, t.iters):
        method.train()
        lr = step_lr(t.lr, it, t.iters, t.poly_power)
        for group in optimizer.param_groups:
            group["lr"] = lr
        labeled = samplers["labeled"].next(device)
        unlabeled = _draw_unlabeled(samplers, device)
        step = StepInfo(it, t.iters)
        losses = method.training_step(labeled, unlabeled, step)
        loss = losses["loss"]
        if not torch.isfinite(loss):
            terms = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in losses.items() if k.startswith("loss"))
            raise NonFiniteLoss(f"training stopped at iteration {it + 1}: non-finite loss ({terms}); nothing was "
                                f"published (a smaller train.lr may help)")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        method.after_optimizer_step(step)
        done = it + 1
        row = {"iteration": done, "lr": lr, **{k: float(v.detach()) for k, v in losses.items()}}
        validate = done % val_every == 0 or done == t.iters
        if validate:
            val_dice = mean_val_dice(method, val_cases, cfg, device)
            row["val_dice"] = val_dice
            if val_dice > best["dice"]:
                best = {"dice": val_dice, "iteration": done}
                torch_save(ckpt_dir / "best.pt", _weights(method, done, val_dice, cfg))
        row["elapsed_s"] = round(time.time() - t_start, 2)
        log.append(row)
        if validate:
            write_csv(staging / "train_log.csv", pd.DataFrame(log))
        if done % t.checkpoint_every == 0 and done < t.iters:
            # best.pt as of this checkpoint: a resumed run restores it, so that its best checkpoint never comes
            # from iterations the interrupted attempt ran past the checkpoint.
            best_file = None
            if best["iteration"] > 0:
                best_file = f"best-at-{done}.pt"
                snapshot(ckpt_dir / "best.pt", ckpt_dir / best_file)
            torch_save(last, {
                "config_hash": cfg.hash(), "iteration": done, "method": method.state_dict(),
                "optimizer": optimizer.state_dict(), "samplers": {n: s.state_dict() for n, s in samplers.items()},
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                "best": best, "log": log, "best_file": best_file,
            })
            for old in ckpt_dir.glob("best-at-*.pt"):
                if old.name != best_file:
                    old.unlink()
        progress.update(done, row, val_dice, best)
    progress.close()
    if best["iteration"] < 0:
        raise UserError("no validation gave a Dice score (the validation cases hold no foreground label): "
                        "nothing to select a checkpoint with")
    torch_save(ckpt_dir / "final.pt", _weights(method, t.iters, val_dice, cfg))
    return best


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
    """A rich progress bar with iteration, losses, val Dice and ETA; silent without a console."""

    def __init__(self, console, total: int, start: int):
        self.bar = None
        if console is None:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(
            TextColumn("train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
            TimeRemainingColumn(), console=console, transient=False,
        )
        self.bar.start()
        self.task = self.bar.add_task("train", total=total, completed=start, info="")

    def update(self, done: int, row: dict, val_dice: float, best: dict) -> None:
        if self.bar is None:
            return
        losses = " ".join(f"{k}={v:.3f}" for k, v in row.items() if k.startswith("loss"))
        val = "" if math.isnan(val_dice) else f" val_dice={val_dice:.3f} best={best['dice']:.3f}@{best['iteration']}"
        self.bar.update(self.task, completed=done, info=losses + val)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
