"""Feature perturbations of the consistency methods, on feature maps (B, C, H, W), drawn on their device.

SSL4MIS ``networks/unet.py`` (URPC's decoder and CCT's auxiliary decoders):
* ``feature_noise``: multiplicative uniform noise, x + x * n with n ~ U(-0.3, 0.3) of shape (C, H, W), one draw
  shared by the batch (``FeatureNoise``: ``Uniform.sample(x.shape[1:])``);
* ``feature_dropout``: zero the positions whose channel-mean activation reaches a fraction U(0.7, 0.9) of its
  image's maximum, one fraction per call (``FeatureDropout``; the original draws it from NumPy, here from torch);
* ``dropout``: element-wise dropout, always on (``Dropout``: ``F.dropout`` with its default ``training=True``).

UniMatch V2 ``model/semseg/dpt.py`` (and SSS's strong views):
* ``complementary_masks``: complementary channel dropout for two strong views of the same images.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F


def feature_noise(x: torch.Tensor, uniform_range: float = 0.3) -> torch.Tensor:
    """x + x * n, n ~ U(-r, r) of shape x.shape[1:] (one draw for the whole batch, as the original)."""
    noise = torch.rand(x.shape[1:], device=x.device) * (2 * uniform_range) - uniform_range
    return x * noise.unsqueeze(0) + x


def threshold_factor(device) -> torch.Tensor:
    """The fraction of the maximum below which ``feature_dropout`` drops: U(0.7, 0.9), one draw per call."""
    return torch.empty((), device=device).uniform_(0.7, 0.9)


def feature_dropout(x: torch.Tensor) -> torch.Tensor:
    """Zero every position whose mean over channels reaches ``threshold_factor`` times its image's maximum: the most
    active regions are dropped, the rest kept (the original's mask ``attention < threshold``)."""
    attention = x.mean(dim=1, keepdim=True)
    peak = attention.flatten(1).max(dim=1).values.view(-1, 1, 1, 1)
    return x * (attention < peak * threshold_factor(x.device)).to(x.dtype)


def dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """Element-wise dropout in train and eval mode alike (the original's ``F.dropout(x, p)``)."""
    return F.dropout(x, p, training=True)


def complementary_masks(n: int, widths: Sequence[int], device, keep_fraction: float = 0.5
                        ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """UniMatch V2's complementary channel dropout for two strong views of ``n`` images (dpt.py:148-161).

    For each width c: view 1's (n, c) mask keeps each channel with probability 0.5 and scales it by 2; view 2's
    mask is 2 - view 1's (exactly the other channels, x2); for ``int(n * keep_fraction)`` images drawn at random
    both views keep every channel (mask 1). Returns (view-1 masks, view-2 masks), one (n, c) tensor per width;
    the same undropped images for every width. V2's four ViT levels share one width and one mask (pass one width
    and apply it to every level); SSS's SAM-2 levels differ in width and draw one mask each."""
    kept = torch.randperm(n, device=device)[: int(n * keep_fraction)]
    first, second = [], []
    for c in widths:
        m = torch.bernoulli(torch.full((n, c), 0.5, device=device)) * 2.0
        other = 2.0 - m
        m[kept], other[kept] = 1.0, 1.0
        first.append(m)
        second.append(other)
    return first, second
