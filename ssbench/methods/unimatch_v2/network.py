"""UniMatch V2's segmentation network: a DINOv2 ViT with a DPT head (LiheYoung/UniMatch-V2 ``model/semseg/dpt.py``,
``model/backbone/dinov2.py``, ``model/util/blocks.py`` at f6afb4d), for one-channel slices.

The ViT is timm's ``VisionTransformer`` built as timm's ``vit_*_patch14_dinov2`` (the same layers and parameter
names as the official DINOv2 release, whose ``.pth`` files load into it once the unused ``mask_token`` is dropped:
``load_official``). Two things are ours, as V2 runs them: the positional embedding is interpolated to the input's
patch grid the way V2's DINOv2 does it (bicubic with a scale factor of (n + 0.1) / 37, no antialiasing; timm's own
resampling antialiases), and the patch tokens of blocks 2, 5, 8, 11 (small, base) are taken after the final norm,
as ``get_intermediate_layers(..., norm=True)``. The DPT head is written from V2's definitions with the same module
names, so a V2 state dict (minus ``mask_token``) loads into ``DPT``. ``benchmarks/peer_check.py --unimatch-v2``
proves the forward pass equal to the official module on identical weights.

The input: a (B, 1, S, S) slice in [0, 1] is repeated to three channels, normalised with ImageNet's statistics (as
V2's ``normalize``) and fitted to the patch size 14 (``fit``): ``resize`` = bilinear (aligned corners) to
round(S / 14) * 14 and the logits back to S the same way (V2's ``evaluate``, mode 'original', multiplier 14:
256 -> 252, 128 -> 126); ``pad`` = zero padding (black, as V2's crop pads) at the bottom and right to the next
multiple (256 -> 266, 128 -> 140), the logits cropped back.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ssbench.errors import UserError
from ssbench.methods.blocks.pretrained import load_strict, read_checkpoint

PATCH = 14
# backbone -> (timm's DINOv2 arguments, blocks read by the head, DPT features, DPT out_channels): unimatch_v2.py
# model_configs and dpt.py intermediate_layer_idx
BACKBONES = {
    "small": (dict(embed_dim=384, depth=12, num_heads=6), (2, 5, 8, 11), 64, (48, 96, 192, 384)),
    "base": (dict(embed_dim=768, depth=12, num_heads=12), (2, 5, 8, 11), 128, (96, 192, 384, 768)),
    "large": (dict(embed_dim=1024, depth=24, num_heads=16), (4, 11, 17, 23), 256, (256, 512, 1024, 1024)),
}
# the official DINOv2 release files (dl.fbaipublicfiles.com/dinov2/dinov2_vit{s,b,l}14/...)
OFFICIAL_FILES = {"small": "dinov2_vits14_pretrain.pth", "base": "dinov2_vitb14_pretrain.pth",
                  "large": "dinov2_vitl14_pretrain.pth"}
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def build_vit(backbone: str) -> nn.Module:
    """timm's DINOv2 ViT (vit_*_patch14_dinov2: patch 14, 518 px, LayerScale, no registers), any input size.
    LayerScale starts at 1.0 as V2 builds it (``DINOv2(...)``: init_values=1.0); pretrained weights replace it."""
    from timm.models.vision_transformer import VisionTransformer

    args = BACKBONES[backbone][0]
    return VisionTransformer(img_size=518, patch_size=PATCH, mlp_ratio=4, init_values=1.0, num_classes=0,
                             dynamic_img_size=True, **args)


def pos_embed_for(pos_embed: torch.Tensor, rows: int, cols: int, offset: float = 0.1) -> torch.Tensor:
    """V2's DINOv2 ``interpolate_pos_encoding``: the (1, 1 + N, D) embedding of a sqrt(N) x sqrt(N) grid for a
    rows x cols patch grid, bicubic with scale factors (rows + 0.1) / sqrt(N), (cols + 0.1) / sqrt(N)."""
    n = pos_embed.shape[1] - 1
    if rows * cols == n and rows == cols:
        return pos_embed
    side = math.sqrt(n)
    grid = pos_embed[:, 1:].float().reshape(1, int(side), int(side), -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, scale_factor=((rows + offset) / side, (cols + offset) / side), mode="bicubic",
                         antialias=False)
    if grid.shape[-2:] != (rows, cols):
        raise RuntimeError(f"positional embedding resampled to {tuple(grid.shape[-2:])}, expected {(rows, cols)}")
    grid = grid.permute(0, 2, 3, 1).reshape(1, rows * cols, -1)
    return torch.cat([pos_embed[:, :1].float(), grid], dim=1).to(pos_embed.dtype)


def intermediate_tokens(vit: nn.Module, x: torch.Tensor, blocks) -> list[torch.Tensor]:
    """Patch tokens (B, rows * cols, D) after the final norm at each of ``blocks`` (V2: get_intermediate_layers)."""
    rows, cols = x.shape[-2] // PATCH, x.shape[-1] // PATCH
    tokens = vit.patch_embed(x).flatten(1, 2)  # (B, rows, cols, D) with dynamic_img_size
    tokens = torch.cat([vit.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
    tokens = tokens + pos_embed_for(vit.pos_embed, rows, cols).to(tokens.dtype)
    out = []
    for i, block in enumerate(vit.blocks):
        tokens = block(tokens)
        if i in blocks:
            out.append(vit.norm(tokens)[:, 1:])
        if i >= max(blocks):
            break
    return out


# --- the DPT head (V2 model/semseg/dpt.py DPTHead, model/util/blocks.py) --------------------------------------

class ResidualConvUnit(nn.Module):
    def __init__(self, features: int):
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, padding=1)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1)

    def forward(self, x):
        return self.conv2(F.relu(self.conv1(F.relu(x)))) + x


class FeatureFusionBlock(nn.Module):
    """(path, skip) -> resConfUnit2(path + resConfUnit1(skip)), up-sampled (bilinear, aligned corners) to ``size``
    or x2, then a 1x1 conv. ``resConfUnit1`` of the deepest block exists but is never used (as in V2)."""

    def __init__(self, features: int):
        super().__init__()
        self.out_conv = nn.Conv2d(features, features, 1)
        self.resConfUnit1 = ResidualConvUnit(features)
        self.resConfUnit2 = ResidualConvUnit(features)

    def forward(self, x, skip=None, size=None):
        if skip is not None:
            x = x + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        x = F.interpolate(x, **({"size": size} if size is not None else {"scale_factor": 2}), mode="bilinear",
                          align_corners=True)
        return self.out_conv(x)


class DPTHead(nn.Module):
    def __init__(self, num_classes: int, in_channels: int, features: int, out_channels):
        super().__init__()
        self.projects = nn.ModuleList(nn.Conv2d(in_channels, c, 1) for c in out_channels)
        self.resize_layers = nn.ModuleList([
            nn.ConvTranspose2d(out_channels[0], out_channels[0], 4, stride=4),
            nn.ConvTranspose2d(out_channels[1], out_channels[1], 2, stride=2),
            nn.Identity(),
            nn.Conv2d(out_channels[3], out_channels[3], 3, stride=2, padding=1),
        ])
        self.scratch = nn.Module()
        for i, c in enumerate(out_channels, start=1):
            setattr(self.scratch, f"layer{i}_rn", nn.Conv2d(c, features, 3, padding=1, bias=False))
        for i in range(1, 5):
            setattr(self.scratch, f"refinenet{i}", FeatureFusionBlock(features))
        self.scratch.output_conv = nn.Sequential(
            nn.Conv2d(features, features, 3, padding=1), nn.ReLU(True), nn.Conv2d(features, num_classes, 1))

    def forward(self, tokens: list[torch.Tensor], rows: int, cols: int) -> torch.Tensor:
        s = self.scratch
        layers = []
        for i, t in enumerate(tokens):
            x = t.permute(0, 2, 1).reshape(t.shape[0], t.shape[-1], rows, cols)
            layers.append(getattr(s, f"layer{i + 1}_rn")(self.resize_layers[i](self.projects[i](x))))
        path = s.refinenet4(layers[3], size=layers[2].shape[2:])
        path = s.refinenet3(path, layers[2], size=layers[1].shape[2:])
        path = s.refinenet2(path, layers[1], size=layers[0].shape[2:])
        path = s.refinenet1(path, layers[0])
        return s.output_conv(path)


class DPT(nn.Module):
    """DINOv2 + DPT on a (B, 3, H, W) normalised batch whose H and W are multiples of 14 (V2's ``DPT``)."""

    def __init__(self, backbone: str, num_classes: int):
        super().__init__()
        _, self.blocks, features, out_channels = BACKBONES[backbone]
        self.backbone = build_vit(backbone)
        self.head = DPTHead(num_classes, self.backbone.embed_dim, features, out_channels)

    def forward(self, x: torch.Tensor, drop: torch.Tensor | None = None) -> torch.Tensor:
        """``drop``: (B, D) channel masks multiplied into every level's tokens (complementary dropout)."""
        rows, cols = x.shape[-2] // PATCH, x.shape[-1] // PATCH
        tokens = intermediate_tokens(self.backbone, x, self.blocks)
        if drop is not None:
            tokens = [t * drop.unsqueeze(1).to(t.dtype) for t in tokens]
        out = self.head(tokens, rows, cols)
        return F.interpolate(out, (rows * PATCH, cols * PATCH), mode="bilinear", align_corners=True)


def fitted_size(size: int, fit: str) -> int:
    if fit == "resize":
        return int(size / PATCH + 0.5) * PATCH  # V2's evaluate: the nearest multiple
    return math.ceil(size / PATCH) * PATCH


class Segmenter(nn.Module):
    """(B, 1, S, S) slices in [0, 1] -> (B, K, S, S) logits: three channels, ImageNet normalisation, the fit to the
    patch grid and back (see the module docstring)."""

    def __init__(self, backbone: str, num_classes: int, fit: str = "resize"):
        super().__init__()
        self.fit = fit
        self.dpt = DPT(backbone, num_classes)
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor, drop: torch.Tensor | None = None) -> torch.Tensor:
        h, w = x.shape[-2:]
        fh, fw = fitted_size(h, self.fit), fitted_size(w, self.fit)
        if self.fit == "pad":
            x = F.pad(x, (0, fw - w, 0, fh - h))
        x = (x.expand(-1, 3, -1, -1) - self.mean) / self.std
        if self.fit == "resize" and (fh, fw) != (h, w):
            x = F.interpolate(x, (fh, fw), mode="bilinear", align_corners=True)
        out = self.dpt(x, drop)
        if self.fit == "pad":
            return out[..., :h, :w]
        if (fh, fw) != (h, w):
            out = F.interpolate(out, (h, w), mode="bilinear", align_corners=True)
        return out


def load_official(vit: nn.Module, path: str | Path, backbone: str) -> None:
    """An official DINOv2 ``.pth`` (e.g. dinov2_vits14_pretrain.pth: a flat state dict, as V2's ``./pretrained``)
    into timm's ViT, strictly, with ``weights_only=True``; only the unused ``mask_token`` is dropped."""
    state = read_checkpoint(path, "unimatch-v2.checkpoint")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"unimatch-v2.checkpoint {path}: not an official DINOv2 checkpoint (expected a flat state "
                        "dict of tensors, as dinov2_vits14_pretrain.pth)")
    state = {k: v for k, v in state.items() if k != "mask_token"}
    load_strict(vit, state, f"unimatch-v2.checkpoint {path}: does not fit the DINOv2 {backbone} backbone")
