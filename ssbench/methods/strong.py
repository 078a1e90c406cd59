"""Strong augmentations of the weak-to-strong methods, on (B, 1, H, W) tensors in [0, 1], on their device.

UniMatch's medical branch turns each weakly augmented slice into a grayscale PIL image and applies
ColorJitter(0.5, 0.5, 0.5, 0.25) with p 0.8 (saturation and hue leave a grayscale image unchanged), a Gaussian blur
with sigma in [0.1, 2] with p 0.5, and draws a CutMix box with p 0.5. The same operations on tensors here: the
random decisions are drawn per sample on the host (``g``, a CPU generator), in the same order as a per-sample loop
would, and applied to the whole batch at once.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

MAX_SIGMA = 2.0


def _u(lo: float, hi: float, g) -> float:
    return float(torch.empty(()).uniform_(lo, hi, generator=g))


def color_jitter(x: torch.Tensor, g: torch.Generator | None = None, brightness=0.5, contrast=0.5, p=0.8) -> torch.Tensor:
    """Random brightness and contrast factors in [1 - b, 1 + b] in random order, each sample independently
    (torchvision's adjust_brightness / adjust_contrast on a one-channel image, clamped to [0, 1])."""
    b = x.shape[0]
    applied, contrast_first = torch.zeros(b, dtype=torch.bool), torch.zeros(b, dtype=torch.bool)
    fb, fc = torch.ones(b), torch.ones(b)
    for i in range(b):
        if torch.rand((), generator=g) >= p:
            continue
        applied[i] = True
        contrast_first[i] = bool(torch.rand((), generator=g) < 0.5)
        first = _u(1 - contrast, 1 + contrast, g) if contrast_first[i] else _u(1 - brightness, 1 + brightness, g)
        second = _u(1 - brightness, 1 + brightness, g) if contrast_first[i] else _u(1 - contrast, 1 + contrast, g)
        fc[i], fb[i] = (first, second) if contrast_first[i] else (second, first)
    dev = x.device
    shape = (b, 1, 1, 1)
    fb, fc = fb.to(dev, x.dtype).view(shape), fc.to(dev, x.dtype).view(shape)

    def bright(t):
        return (t * fb).clamp(0, 1)

    def contr(t):
        return (fc * t + (1 - fc) * t.mean(dim=(-3, -2, -1), keepdim=True)).clamp(0, 1)

    out = torch.where(contrast_first.to(dev).view(shape), bright(contr(x)), contr(bright(x)))
    return torch.where(applied.to(dev).view(shape), out.clamp(0, 1), x)


def gaussian_blur(x: torch.Tensor, g: torch.Generator | None = None, sigma=(0.1, 2.0), p=0.5) -> torch.Tensor:
    """torchvision's gaussian_blur (kernel 2 ceil(3 sigma) + 1, reflect padding) with a per-sample sigma, as one
    grouped convolution: each kernel is zero-padded to the largest size, which leaves the result unchanged."""
    b = x.shape[0]
    sigmas = torch.zeros(b, dtype=torch.float64)
    for i in range(b):
        if torch.rand((), generator=g) < p:
            sigmas[i] = _u(*sigma, g)
    if not (sigmas > 0).any():
        return x.clone()
    radius = math.ceil(3 * max(sigma[1], MAX_SIGMA))
    kernels = torch.zeros(b, 2 * radius + 1, dtype=torch.float64)
    for i, s in enumerate(sigmas.tolist()):
        if s > 0:
            r = math.ceil(3 * s)
            xs = torch.linspace(-r, r, 2 * r + 1, dtype=torch.float64)
            pdf = torch.exp(-0.5 * (xs / s) ** 2)
            kernels[i, radius - r : radius + r + 1] = pdf / pdf.sum()
        else:
            kernels[i, radius] = 1.0
    k = kernels.to(x.device, x.dtype)
    c = x.shape[1]
    flat = x.reshape(1, b * c, *x.shape[-2:])
    padded = F.pad(flat, (radius, radius, radius, radius), mode="reflect")
    kh = k.repeat_interleave(c, 0).view(b * c, 1, -1, 1)
    kw = k.repeat_interleave(c, 0).view(b * c, 1, 1, -1)
    out = F.conv2d(F.conv2d(padded, kw, groups=b * c), kh, groups=b * c).view_as(x)
    return torch.where((sigmas > 0).to(x.device).view(b, 1, 1, 1), out, x)


def _box_params(size: int, g, p: float, area, ratio) -> tuple[int, int, int, int] | None:
    if torch.rand((), generator=g) >= p:
        return None
    target = _u(*area, g) * size * size
    while True:
        r = _u(*ratio, g)
        w, h = int(math.sqrt(target / r)), int(math.sqrt(target * r))
        x0 = int(torch.randint(0, size, (), generator=g))
        y0 = int(torch.randint(0, size, (), generator=g))
        if x0 + w <= size and y0 + h <= size:
            return x0, y0, w, h


def cutmix_box(size: int, g: torch.Generator | None = None, p=0.5, area=(0.02, 0.4), ratio=(0.3, 1 / 0.3)) -> torch.Tensor:
    """(size, size) bool mask with one box of 2-40% of the image area and aspect ratio in [0.3, 1/0.3], or empty
    with probability 1 - p (UniMatch's obtain_cutmix_box)."""
    return cutmix_boxes(1, size, g, p, area, ratio)[0]


def cutmix_boxes(n: int, size: int, g: torch.Generator | None = None, p=0.5, area=(0.02, 0.4),
                 ratio=(0.3, 1 / 0.3), device=None) -> torch.Tensor:
    """(n, size, size) bool masks, one ``cutmix_box`` draw each, built on ``device``."""
    boxes = [_box_params(size, g, p, area, ratio) for _ in range(n)]
    x0, y0, w, h = (torch.tensor([b[j] if b else 0 for b in boxes], device=device) for j in range(4))
    ys = torch.arange(size, device=device).view(1, size, 1)
    xs = torch.arange(size, device=device).view(1, 1, size)
    v = lambda t: t.view(n, 1, 1)  # noqa: E731
    return (ys >= v(y0)) & (ys < v(y0 + h)) & (xs >= v(x0)) & (xs < v(x0 + w))


def strong_view(x: torch.Tensor, g: torch.Generator | None = None, brightness=0.5, contrast=0.5) -> torch.Tensor:
    """Colour jitter (p 0.8) then Gaussian blur (p 0.5); UniMatch's jitter strengths by default."""
    return gaussian_blur(color_jitter(x, g, brightness, contrast), g)
