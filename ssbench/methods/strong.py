"""Strong augmentations of the weak-to-strong methods, on (B, 1, H, W) tensors in [0, 1], per sample.

UniMatch's medical branch turns each weakly augmented slice into a grayscale PIL image and applies
ColorJitter(0.5, 0.5, 0.5, 0.25) with p 0.8 (saturation and hue leave a grayscale image unchanged), a Gaussian blur
with sigma in [0.1, 2] with p 0.5, and draws a CutMix box with p 0.5. The same operations on tensors here.
"""

from __future__ import annotations

import math

import torch
import torchvision.transforms.v2.functional as TF


def color_jitter(x: torch.Tensor, g: torch.Generator | None = None, brightness=0.5, contrast=0.5, p=0.8) -> torch.Tensor:
    """Random brightness and contrast factors in [1 - b, 1 + b] in random order, each sample independently."""
    out = x.clone()
    for i in range(x.shape[0]):
        if torch.rand((), generator=g) >= p:
            continue
        img = out[i]
        ops = [("b", brightness), ("c", contrast)]
        if torch.rand((), generator=g) < 0.5:
            ops.reverse()
        for kind, amount in ops:
            factor = float(torch.empty(()).uniform_(1 - amount, 1 + amount, generator=g))
            img = TF.adjust_brightness(img, factor) if kind == "b" else TF.adjust_contrast(img, factor)
        out[i] = img.clamp(0, 1)
    return out


def gaussian_blur(x: torch.Tensor, g: torch.Generator | None = None, sigma=(0.1, 2.0), p=0.5) -> torch.Tensor:
    out = x.clone()
    for i in range(x.shape[0]):
        if torch.rand((), generator=g) >= p:
            continue
        s = float(torch.empty(()).uniform_(*sigma, generator=g))
        k = 2 * math.ceil(3 * s) + 1
        out[i] = TF.gaussian_blur(out[i], [k, k], [s, s])
    return out


def cutmix_box(size: int, g: torch.Generator | None = None, p=0.5, area=(0.02, 0.4), ratio=(0.3, 1 / 0.3)) -> torch.Tensor:
    """(size, size) bool mask with one box of 2-40% of the image area and aspect ratio in [0.3, 1/0.3], or empty
    with probability 1 - p (UniMatch's obtain_cutmix_box)."""
    mask = torch.zeros(size, size, dtype=torch.bool)
    if torch.rand((), generator=g) >= p:
        return mask
    target = float(torch.empty(()).uniform_(*area, generator=g)) * size * size
    while True:
        r = float(torch.empty(()).uniform_(*ratio, generator=g))
        w, h = int(math.sqrt(target / r)), int(math.sqrt(target * r))
        x0 = int(torch.randint(0, size, (), generator=g))
        y0 = int(torch.randint(0, size, (), generator=g))
        if x0 + w <= size and y0 + h <= size:
            break
    mask[y0 : y0 + h, x0 : x0 + w] = True
    return mask


def strong_view(x: torch.Tensor, g: torch.Generator | None = None, brightness=0.5, contrast=0.5) -> torch.Tensor:
    """Colour jitter (p 0.8) then Gaussian blur (p 0.5); UniMatch's jitter strengths by default."""
    return gaussian_blur(color_jitter(x, g, brightness, contrast), g)
