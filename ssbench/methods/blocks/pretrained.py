"""Pretrained weights from official checkpoint files: read safely, loaded strictly, every failure one line that names
the option and the file (SSS's SAM-2 checkpoints, UniMatch V2's DINOv2 backbones)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ssbench.errors import UserError


def read_checkpoint(path: str | Path, option: str):
    """The object saved at ``path``, read to the CPU with ``weights_only=True`` (no pickled code runs);
    ``option`` names the setting that gave the path (``sss.checkpoint``) in the error."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{option} {path}: file not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file, pickled code that weights_only refuses, ...
        from ssbench.engine.checkpoint import weights_only_refusal

        raise UserError(f"{option} {path}: cannot load ({weights_only_refusal(exc)})") from None


def load_strict(module: nn.Module, state: dict, what: str) -> None:
    """Load ``state`` into ``module`` with every key matched and every shape equal; ``what`` starts the error
    (``"sss.checkpoint PATH: does not fit model sam2_hiera_s"``), followed by the first mismatch."""
    try:
        missing, unexpected = module.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches: torch lists them all, the first is named
        lines = str(exc).splitlines()
        first = next((line.strip() for line in lines if "size mismatch" in line), lines[0] if lines else "")
        raise UserError(f"{what}: {first}") from None
    if missing or unexpected:
        raise UserError(f"{what}: {len(missing)} missing keys{f' (e.g. {missing[0]})' if missing else ''}, "
                        f"{len(unexpected)} unexpected{f' (e.g. {unexpected[0]})' if unexpected else ''}")
