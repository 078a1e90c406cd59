"""How a run executes — device, mixed precision, memory layout, where augmentation runs, log cadence, processes.

None of this changes what is trained except the precision (``train.amp``, resolved into the run's config because
bf16 changes numbers; ``benchmarks/amp_parity.py`` measures by how much). The rest is recorded in run.json.

Processes: under ``torchrun`` (WORLD_SIZE > 1) every rank trains on its share of each global batch with
DistributedDataParallel (NCCL on CUDA, gloo on CPU); rank 0 alone validates, evaluates and writes results.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
from dataclasses import asdict, dataclass

import torch

from ssbench.errors import UserError


@dataclass
class Runtime:
    device: torch.device
    amp: bool  # bf16 autocast around the training step
    channels_last: bool  # NHWC memory layout for the convolutions (pays with bf16 on recent GPUs)
    augment_on_device: bool  # weak augmentation and resize on the device (pixel-equal to the host path)
    log_every: int  # steps between loss rows: a row needs a host synchronisation
    cudnn_benchmark: bool
    data_workers: int = 0  # DataLoader processes reading and augmenting host batches ahead of the step
    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def record(self) -> dict:
        out = asdict(self)
        out["device"] = str(self.device)
        return out

    def autocast(self):
        if not self.amp:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)


def distributed_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) outside it."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    return int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0"))


def init_distributed(device_name: str) -> tuple[int, int, torch.device | None]:
    """Join torchrun's process group; returns (rank, world, this rank's device or None outside torchrun)."""
    import torch.distributed as dist

    rank, world, local = distributed_env()
    if world == 1:
        return 0, 1, None
    use_cuda = device_name == "cuda" or (device_name == "auto" and torch.cuda.is_available())
    if use_cuda:
        if torch.cuda.device_count() <= local:
            raise UserError(f"torchrun rank {rank}: no CUDA device {local} (found {torch.cuda.device_count()})")
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        # Evaluation runs on rank 0 while the others wait at a barrier: allow it hours.
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=dt.timedelta(hours=6))
    return rank, world, torch.device("cuda", local) if use_cuda else torch.device("cpu")


def resolve_sync_bn(setting: str, device: torch.device, world: int) -> str:
    """'auto' -> 'on' under DDP on CUDA, 'off' otherwise; 'on' needs CUDA (torch's SyncBatchNorm)."""
    if setting == "auto":
        return "on" if world > 1 and device.type == "cuda" else "off"
    if setting == "on" and world > 1 and device.type != "cuda":
        raise UserError("train.sync_bn=on: SyncBatchNorm needs CUDA devices (use train.sync_bn=off on CPU)")
    return setting


def resolve_amp(setting: str, device: torch.device) -> str:
    """'auto' -> 'bf16' on CUDA, 'off' elsewhere."""
    if setting == "auto":
        return "bf16" if device.type == "cuda" else "off"
    if setting == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError(f"train.amp=bf16: {torch.cuda.get_device_name(device)} does not support bfloat16")
    return setting


def make_runtime(device: torch.device, amp: str, deterministic: bool, rank: int = 0, world: int = 1,
                 channels_last: bool | None = None, augment_on_device: bool | None = None,
                 log_every: int | None = None, data_workers: int = 0) -> Runtime:
    cuda = device.type == "cuda"
    return Runtime(
        device=device,
        amp=amp == "bf16",
        channels_last=cuda if channels_last is None else channels_last,
        augment_on_device=cuda if augment_on_device is None else augment_on_device,
        log_every=(25 if cuda else 1) if log_every is None else log_every,
        cudnn_benchmark=cuda and not deterministic,
        data_workers=data_workers,
        rank=rank,
        world=world,
    )
