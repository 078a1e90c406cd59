"""DFE: Discriminative Feature Enhancement between a weak and a strong view (SSS, Zhu et al. 2025).

Per feature scale i, for weak features F_w and strong features F_s (B, C_i, H, W):
  P_i  1x1 conv to 256 channels (identity when C_i = 256), shared by both views
  A    3x3 conv 256 -> 256, shared by both views
  F1 = A(P_i(F_w)), F2 = A(P_i(F_s)); v1, v2 = global average pools; s = cos(v1, v2) per sample; w = sigmoid(s)
  MLP  per pixel: 256 -> 512, LN, ReLU, 512 -> 512, LN, ReLU, 512 -> 256, LN, ReLU, 256 -> 256 (shared)
  F_fused = w * MLP(F1) + (1 - w) * MLP(F2);   F_adj = F_fused + (1 - s) * (F2 - F1)
The strong branch is decoded from F_adj: added to the strong features (the paper's figure, mode 'add') or in their
place (the released code, mode 'replace'). SAM-2's decoder reads 32 and 64 channels at the two high-resolution
levels, so a 1x1 projection Q_i brings F_adj back to C_i there (identity at the 256-channel level): our addition,
needed to feed the enhanced features to the unchanged decoder.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

WIDTH = 256


def _mlp() -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(WIDTH, 512), nn.LayerNorm(512), nn.ReLU(),
        nn.Linear(512, 512), nn.LayerNorm(512), nn.ReLU(),
        nn.Linear(512, WIDTH), nn.LayerNorm(WIDTH), nn.ReLU(),
        nn.Linear(WIDTH, WIDTH),
    )


class DFEBlock(nn.Module):
    """DFE at one scale with ``channels`` input channels."""

    def __init__(self, channels: int, mode: Literal["add", "replace"] = "add"):
        super().__init__()
        self.mode = mode
        self.proj = nn.Identity() if channels == WIDTH else nn.Conv2d(channels, WIDTH, 1)
        self.align = nn.Conv2d(WIDTH, WIDTH, 3, padding=1)
        self.mlp = _mlp()
        self.back = nn.Identity() if channels == WIDTH else nn.Conv2d(WIDTH, channels, 1)

    def enhance(self, weak: torch.Tensor, strong: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (F_adj (B, 256, H, W), s (B,)), the equations above."""
        f1 = self.align(self.proj(weak))
        f2 = self.align(self.proj(strong))
        s = F.cosine_similarity(f1.mean((2, 3)), f2.mean((2, 3)), dim=1)  # (B,)
        w = torch.sigmoid(s)[:, None, None, None]
        m1 = self.mlp(f1.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        m2 = self.mlp(f2.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        fused = w * m1 + (1 - w) * m2
        return fused + (1 - s)[:, None, None, None] * (f2 - f1), s

    def forward(self, weak: torch.Tensor, strong: torch.Tensor) -> torch.Tensor:
        adj, _ = self.enhance(weak, strong)
        adj = self.back(adj)
        return strong + adj if self.mode == "add" else adj


class DFE(nn.Module):
    """One DFE block per feature scale of SAM-2's encoder (32 @ S/4, 64 @ S/8, 256 @ S/16 channels)."""

    def __init__(self, channels=(32, 64, 256), mode: Literal["add", "replace"] = "add"):
        super().__init__()
        self.blocks = nn.ModuleList(DFEBlock(c, mode) for c in channels)

    def forward(self, weak: list[torch.Tensor], strong: list[torch.Tensor]) -> list[torch.Tensor]:
        return [block(w, s) for block, w, s in zip(self.blocks, weak, strong)]
