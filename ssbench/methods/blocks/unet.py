"""The 2-D UNet of the semi-supervised literature, as the official codes run it (SSL4MIS ``networks/unet.py``;
the same module in UniMatch's medical branch, ``model/unet.py``).

Encoder channels 16-32-64-128-256, each block Conv3x3-BN-LeakyReLU-Dropout-Conv3x3-BN-LeakyReLU, max-pool down,
encoder dropout 0.05/0.1/0.2/0.3/0.5. Each up block: Conv1x1 to the skip's channels, bilinear x2 up-sampling
(``align_corners=True``), skip concatenation, a conv block without dropout; a 3x3 output conv. Both codes carry a
``bilinear`` flag that their Decoder never passes on, so this bilinear block is what runs: 1,813,764 parameters
for 1 input channel and 4 classes, in the official order and shapes, built in the official order (so the same
seed gives the same initial weights). ``upsampling='transpose'`` (ConvTranspose2d 2x2, 1,944,324 parameters) is
kept only as a named, recorded option.

``encode``/``decode`` are separate so that methods can perturb the features in between (UniMatch's feature
perturbation). Two variants of SSL4MIS ``networks/unet.py`` are options of the same class, built in the official
order (same seed, same initial weights) with the official parameter counts for 1 input channel and 4 classes:

* ``aux_heads=True`` = ``UNet_URPC`` (``Decoder_URPC``, 1,831,060 parameters): a 3x3 output conv on each decoder
  level; ``decode_levels`` gives the decoder's features at H/8, H/4, H/2 and H for them. The official decoder also
  builds a head on the 256-channel bottleneck that its forward never uses: built here too (``aux_heads[0]``), so
  that parameter counts and initial weights match.
* ``aux_decoders=n`` = ``UNet_CCT`` with n = 3 (3,713,664 parameters): n more decoders (up blocks and output conv)
  reading the same encoder features, ``decode(features, decoder=i)`` for i = 1..n.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

CHANNELS = (16, 32, 64, 128, 256)
DROPOUT = (0.05, 0.1, 0.2, 0.3, 0.5)
Upsampling = Literal["bilinear", "transpose"]


@dataclass(frozen=True)
class UNetConfig:
    """The network fields every UNet method's Config starts with (recorded in the method's config section)."""

    upsampling: Upsampling = "bilinear"  # the official codes' Conv1x1 + bilinear x2; 'transpose': ConvTranspose2d

    def build_unet(self, in_channels: int, num_classes: int, aux_heads: bool = False,
                   aux_decoders: int = 0) -> "UNet":
        """The UNet with this config's up-sampling; ``aux_heads``/``aux_decoders`` as in :class:`UNet`."""
        return UNet(in_channels, num_classes, upsampling=self.upsampling, aux_heads=aux_heads,
                    aux_decoders=aux_decoders)


class ConvBlock(nn.Sequential):
    def __init__(self, cin: int, cout: int, dropout: float):
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=1),
            nn.BatchNorm2d(cout),
            nn.LeakyReLU(),
            nn.Dropout(dropout),
            nn.Conv2d(cout, cout, 3, padding=1),
            nn.BatchNorm2d(cout),
            nn.LeakyReLU(),
        )


class UpBlock(nn.Module):
    def __init__(self, cin: int, cskip: int, cout: int, upsampling: Upsampling = "bilinear"):
        super().__init__()
        if upsampling == "bilinear":  # registered first, as the official module does: same order, same init
            self.reduce = nn.Conv2d(cin, cskip, kernel_size=1)
            self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
        elif upsampling == "transpose":
            self.reduce = nn.Identity()
            self.up = nn.ConvTranspose2d(cin, cskip, kernel_size=2, stride=2)
        else:
            raise ValueError(f"upsampling {upsampling!r}: expected 'bilinear' or 'transpose'")
        self.conv = ConvBlock(cskip * 2, cout, 0.0)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([skip, self.up(self.reduce(x))], dim=1))


class Decoder(nn.Module):
    """Up blocks from the bottleneck to full resolution, then the 3x3 output conv (one of CCT's auxiliary decoders;
    the main decoder's modules sit on the UNet itself, under their original names)."""

    def __init__(self, channels, num_classes: int, upsampling: Upsampling):
        super().__init__()
        self.up = nn.ModuleList(
            UpBlock(channels[i + 1], channels[i], channels[i], upsampling) for i in reversed(range(len(channels) - 1))
        )
        self.head = nn.Conv2d(channels[0], num_classes, 3, padding=1)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        return self.head(_run_up(self.up, feats)[-1])


def _run_up(ups, feats: list[torch.Tensor]) -> list[torch.Tensor]:
    """The output of each up block, deepest first (H/8, H/4, H/2, H for five encoder levels)."""
    x, out = feats[-1], []
    for up, skip in zip(ups, reversed(feats[:-1])):
        x = up(x, skip)
        out.append(x)
    return out


class UNet(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, channels=CHANNELS, dropout=DROPOUT,
                 upsampling: Upsampling = "bilinear", aux_heads: bool = False, aux_decoders: int = 0):
        super().__init__()
        if aux_decoders < 0:
            raise ValueError(f"aux_decoders {aux_decoders}: must be >= 0")
        self.down = nn.ModuleList()
        cin = in_channels
        for c, p in zip(channels, dropout):
            self.down.append(ConvBlock(cin, c, p))
            cin = c
        self.pool = nn.MaxPool2d(2)
        self.up = nn.ModuleList(
            UpBlock(channels[i + 1], channels[i], channels[i], upsampling) for i in reversed(range(len(channels) - 1))
        )
        self.head = nn.Conv2d(channels[0], num_classes, 3, padding=1)
        # URPC: one head per level, deepest first (SSL4MIS out_conv_dp4, dp3, dp2, dp1; dp4 is never used)
        self.aux_heads = nn.ModuleList(
            nn.Conv2d(c, num_classes, 3, padding=1) for c in reversed(channels[1:])) if aux_heads else None
        self.aux_decoders = nn.ModuleList(
            Decoder(channels, num_classes, upsampling) for _ in range(aux_decoders)) if aux_decoders else None

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, Cin, H, W) -> features at H, H/2, H/4, H/8, H/16 (H divisible by 16)."""
        feats = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else self.pool(x))
            feats.append(x)
        return feats

    def decode_levels(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        """The main decoder's features after each up block, deepest first: H/8, H/4, H/2, H (``head`` of the last
        gives the logits; URPC's ``aux_heads[1:]`` read the others)."""
        return _run_up(self.up, feats)

    def decode(self, feats: list[torch.Tensor], decoder: int = 0) -> torch.Tensor:
        """Logits of the main decoder (0) or of auxiliary decoder ``decoder`` (1..aux_decoders)."""
        if decoder:
            return self.aux_decoders[decoder - 1](feats)
        return self.head(self.decode_levels(feats)[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))
