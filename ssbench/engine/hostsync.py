"""Find the host synchronisations of a training step, without a GPU.

On an accelerator, a step runs at full speed only if the host queues kernels without waiting for the device. It
waits (a *host synchronisation*) when it reads a device value (``.item()``, ``float(t)``, ``if t.any():``,
``.tolist()``, ``.cpu()``), when an op's output shape depends on device values (``nonzero``, boolean-mask
indexing, ``unique``), and when it copies host memory to the device from pageable memory (``.to(device)`` of a
tensor just built on the host, ``torch.tensor(data, device=...)``).

``HostSyncRecorder`` records each such event while code runs, with the line of ssbench code that caused it. Run
the step on a stand-in device — ``meta``, which holds shapes and no values — and the recorder sees exactly the
transfers and reads that would happen on a GPU (a ``meta`` tensor, like a CUDA one, lives away from the host).
Device values read on ``meta`` have no value: the recorder answers them with 0 so that the step runs on and every
later event is recorded too. On a real GPU it records without changing anything.

It is public (``ssbench.api``) so that a plugin author can prove a method's step free of host synchronisations
the way the built-ins are proved (tests/engine/test_gpu_paths.py).
"""

from __future__ import annotations

import os
import traceback
from dataclasses import dataclass

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten

# Ops whose output shape depends on the values of their input: the host must wait for the device to know it.
_DATA_DEPENDENT = {aten.nonzero.default, aten.masked_select.default, aten._unique2.default,
                   aten.unique_consecutive.default, aten.unique_dim.default, aten.repeat_interleave.Tensor}
_FACTORIES_FROM_HOST_DATA = {torch.tensor, torch.as_tensor, torch.asarray}
_HOST_READS = {torch.Tensor.tolist, torch.Tensor.numpy}
_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass(frozen=True)
class HostSync:
    kind: str  # 'host-to-device copy', 'device-to-host copy', 'device value read', 'data-dependent shape'
    op: str
    where: str  # file:line of the innermost ssbench frame (or the caller's code) that caused it
    blocking: bool = True  # a non_blocking copy (from pinned memory on CUDA) lets the host run on

    def __str__(self) -> str:
        return f"{self.kind} ({self.op}{'' if self.blocking else ', non_blocking'}) at {self.where}"


def _off_host(t) -> bool:
    return isinstance(t, torch.Tensor) and t.device.type != "cpu"


def _caller() -> str:
    frames = [f for f in traceback.extract_stack()
              if "torch" + os.sep not in f.filename and f.filename != __file__]
    ours = [f for f in frames if f.filename.startswith(_PACKAGE)]
    f = (ours or frames or [None])[-1]
    return f"{os.path.relpath(f.filename, os.path.dirname(_PACKAGE))}:{f.lineno}" if f else "?"


class _Dispatch(TorchDispatchMode):
    def __init__(self, events: list):
        super().__init__()
        self.events = events

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (aten._to_copy.default, aten.copy_.default):
            src = args[1] if func is aten.copy_.default else args[0]
            dst_device = args[0].device if func is aten.copy_.default else kwargs.get("device", src.device)
            dst_off = torch.device(dst_device).type != "cpu"
            non_blocking = bool(args[2] if func is aten.copy_.default and len(args) > 2 else
                                kwargs.get("non_blocking", False))
            if not _off_host(src) and dst_off:
                self.events.append(HostSync("host-to-device copy", str(func), _caller(), not non_blocking))
            elif _off_host(src) and not dst_off:
                self.events.append(HostSync("device-to-host copy", str(func), _caller(), not non_blocking))
                if src.device.type == "meta":  # no data to copy: an uninitialised host tensor, and run on
                    if func is aten.copy_.default:
                        return args[0]
                    return torch.empty(src.shape, dtype=kwargs.get("dtype") or src.dtype)
        elif func is aten._local_scalar_dense.default and _off_host(args[0]):
            self.events.append(HostSync("device value read", "item/bool/float/int", _caller()))
            if args[0].device.type == "meta":  # no value to read: answer 0 and run on
                return False if args[0].dtype == torch.bool else 0
        elif func in _DATA_DEPENDENT or (func is aten.index.Tensor and any(
                isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in args[1] if i is not None)):
            if any(_off_host(a) for a in args):
                self.events.append(HostSync("data-dependent shape", str(func), _caller()))
        return func(*args, **kwargs)


class _Function(TorchFunctionMode):
    """What the dispatcher does not see: tensors made from host data straight onto a device."""

    def __init__(self, events: list):
        super().__init__()
        self.events = events

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _FACTORIES_FROM_HOST_DATA and kwargs.get("device") is not None \
                and torch.device(kwargs["device"]).type != "cpu" and not isinstance(args[0] if args else None,
                                                                                   torch.Tensor):
            self.events.append(HostSync("host-to-device copy", f"torch.{func.__name__}", _caller()))
        elif func in _HOST_READS and _off_host(args[0] if args else None):
            self.events.append(HostSync("device-to-host copy", f"Tensor.{func.__name__}", _caller()))
        return func(*args, **kwargs)


class HostSyncRecorder:
    """``with HostSyncRecorder() as rec: step()`` then ``rec.events`` (``rec.blocking`` leaves out non_blocking
    copies, which on CUDA come from pinned memory and do not stop the host)."""

    def __init__(self):
        self.events: list[HostSync] = []
        self._modes = (_Function(self.events), _Dispatch(self.events))

    def __enter__(self) -> "HostSyncRecorder":
        for m in self._modes:
            m.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        for m in reversed(self._modes):
            m.__exit__(*exc)

    @property
    def blocking(self) -> list[HostSync]:
        return [e for e in self.events if e.blocking]

    def report(self) -> str:
        counts: dict[str, int] = {}
        for e in self.events:
            counts[str(e)] = counts.get(str(e), 0) + 1
        return "\n".join(f"{n} x {text}" for text, n in sorted(counts.items(), key=lambda kv: -kv[1]))
