"""Checkpoint files: read with ``weights_only``, checked to belong to the run, errors that name the file.

A checkpoint is device-agnostic: it is always read to the CPU. The weights and the optimizer state are then placed
by the model and the optimizer themselves (``load_state_dict`` copies into parameters wherever they live, and casts
optimizer state to its parameter's device); sampler and RNG states stay on the CPU, where numpy and
``torch.set_rng_state`` / ``torch.cuda.set_rng_state`` need them. So a run written on one device resumes on any.
"""

from __future__ import annotations

from pathlib import Path

from ssbench.errors import UserError, first_line


def load(path: Path, config_hash: str | None = None) -> dict:
    """The state saved by the engine at ``path``, on the CPU; ``config_hash``: the run it must belong to."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: missing checkpoint")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types (unpickling, zip, EOF, runtime) for a file that is not one
        raise UserError(f"{path}: not a readable checkpoint ({weights_only_refusal(exc)})") from None
    if not isinstance(state, dict) or not isinstance(state.get("method"), dict) or "config_hash" not in state:
        raise UserError(f"{path}: not an ssbench checkpoint (no method weights and config hash)")
    if config_hash is not None and state["config_hash"] != config_hash:
        raise UserError(f"{path}: belongs to another run (its config hash is {state['config_hash']}, this run's "
                        f"is {config_hash})")
    return state


def weights_only_refusal(exc: BaseException) -> str:
    """What a failed ``torch.load(weights_only=True)`` means, in one line. torch's own message advises loading the
    file with weights_only=False (running code from it): ssbench never does, so the line says what torch found."""
    import re

    text = str(exc)
    name = type(exc).__name__
    if "Weights only load failed" not in text:
        return f"{name}: {first_line(exc)}"
    found = re.search(r"unsupported global:? (?:global )?([\w.]+)", text, re.I)
    if found:
        return (f"{name}: it holds Python objects other than tensors and plain values ({found.group(1)}), which "
                "ssbench refuses to unpickle: loading them could run code from the file")
    detail = re.search(r"WeightsUnpickler error:\s*(.+?)\s*(?:\n\n|$)", text, re.S)
    why = " ".join(detail.group(1).split())[:200] if detail else "no detail"
    return f"{name}: not a file of tensors and plain values ({why})"


def load_weights(method, state: dict, path: Path) -> None:
    """Put a checkpoint's weights into ``method``; a checkpoint of another model is an error naming the file."""
    try:
        method.load_state_dict(state["method"])
    except (RuntimeError, KeyError, ValueError, TypeError, IndexError) as exc:
        raise UserError(f"{path}: its weights do not fit method {type(method).name!r} "
                        f"({type(exc).__name__}: {first_line(exc)})") from None
