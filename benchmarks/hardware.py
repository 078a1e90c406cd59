"""What a benchmark figure was measured on, and the targets it may be judged against.

A target names the hardware and the settings it is for (the scale-out issue's: one H100, bf16, the published
batch). A figure is judged MET / NOT MET only when both match; otherwise it is printed beside the target, unjudged.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass

import torch


def describe(device: torch.device) -> str:
    """'NVIDIA H100 80GB HBM3 (CUDA 12.8), torch 2.x' or 'CPU x86_64, 2 threads, torch 2.x'."""
    if device.type == "cuda":
        name = f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    else:
        name = f"CPU {platform.machine()}, {torch.get_num_threads()} threads of {os.cpu_count()} cores"
    return f"{name}, torch {torch.__version__}"


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"


@dataclass(frozen=True)
class Target:
    what: str  # the figure, e.g. "UniMatch it/s"
    bound: float
    higher_is_better: bool
    hardware: str  # a substring of the device name, e.g. "H100"
    settings: dict  # the settings the target is for, e.g. {"batch": 12, "size": 256, "amp": "bf16"}

    def text(self) -> str:
        op = ">=" if self.higher_is_better else "<="
        cond = ", ".join(f"{k} {v}" for k, v in self.settings.items())
        return f"{self.what} {op} {self.bound:g} on one {self.hardware} ({cond})"

    def judge(self, value: float, device: torch.device, settings: dict) -> str:
        """'MET (...)' / 'NOT MET (...)' on the target's hardware and settings; else the target, unjudged."""
        here = device_name(device)
        off = [f"{k} {settings.get(k)}" for k, v in self.settings.items() if settings.get(k) != v]
        if self.hardware not in here or off:
            why = f"this is {here}" if self.hardware not in here else "measured with " + ", ".join(off)
            return f"target {self.text()}: not judged ({why})"
        ok = value >= self.bound if self.higher_is_better else value <= self.bound
        return f"{'MET' if ok else 'NOT MET'} ({self.text()})"
