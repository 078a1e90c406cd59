"""The 2-D UNet of the semi-supervised literature (SSL4MIS; the same in UniMatch's medical branch).

Encoder channels 16-32-64-128-256, each block Conv3x3-BN-LeakyReLU-Dropout-Conv3x3-BN-LeakyReLU, max-pool down,
encoder dropout 0.05/0.1/0.2/0.3/0.5; decoder without dropout, ConvTranspose2d(2, 2) up-sampling, skip
concatenation, a 3x3 output conv. About 1.8 M parameters. ``encode``/``decode`` are separate so that methods can
perturb the features in between (UniMatch's feature perturbation).
"""

from __future__ import annotations

import torch
from torch import nn

CHANNELS = (16, 32, 64, 128, 256)
DROPOUT = (0.05, 0.1, 0.2, 0.3, 0.5)


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
    def __init__(self, cin: int, cskip: int, cout: int):
        super().__init__()
        self.up = nn.ConvTranspose2d(cin, cskip, kernel_size=2, stride=2)
        self.conv = ConvBlock(cskip * 2, cout, 0.0)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([skip, self.up(x)], dim=1))


class UNet(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, channels=CHANNELS, dropout=DROPOUT):
        super().__init__()
        self.down = nn.ModuleList()
        cin = in_channels
        for i, (c, p) in enumerate(zip(channels, dropout)):
            self.down.append(ConvBlock(cin, c, p))
            cin = c
        self.pool = nn.MaxPool2d(2)
        self.up = nn.ModuleList(
            UpBlock(channels[i + 1], channels[i], channels[i]) for i in reversed(range(len(channels) - 1))
        )
        self.head = nn.Conv2d(channels[0], num_classes, 3, padding=1)

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, Cin, H, W) -> features at H, H/2, H/4, H/8, H/16 (H divisible by 16)."""
        feats = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else self.pool(x))
            feats.append(x)
        return feats

    def decode(self, feats: list[torch.Tensor]) -> torch.Tensor:
        x = feats[-1]
        for up, skip in zip(self.up, reversed(feats[:-1])):
            x = up(x, skip)
        return self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))
