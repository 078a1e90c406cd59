"""Strong augmentations of the weak-to-strong methods, on (B, 1, H, W) tensors in [0, 1], on their device.

UniMatch's medical branch turns each weakly augmented slice into a grayscale PIL image and applies
ColorJitter(0.5, 0.5, 0.5, 0.25) with p 0.8 (saturation and hue leave a grayscale image unchanged), a Gaussian blur
with sigma in [0.1, 2] with p 0.5, and draws a CutMix box with p 0.5. The same operations on tensors here, each
sample with its own random draw, as in a per-sample loop. The random numbers of a whole batch are drawn at once on
the batch's device (``g``: a generator on that device, or its default one): nothing is built on the host and
copied, and nothing waits for the device, so a GPU step never stalls here (tests/engine/test_gpu_paths.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

MAX_SIGMA = 2.0
# CutMix boxes are drawn by rejection (UniMatch redraws ratio and position until the box fits). The draws are made
# in parallel: this many candidates per box, the first that fits is taken. At the largest area (40%) a candidate
# fits with probability 0.063, so all of them miss with probability < 1e-14; then the box is clipped to the image.
BOX_CANDIDATES = 512


def _uniform(u: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    return lo + (hi - lo) * u


@dataclass
class JitterParams:
    applied: torch.Tensor  # (B,) bool
    contrast_first: torch.Tensor  # (B,) bool: contrast then brightness, else brightness then contrast
    brightness: torch.Tensor  # (B,) factors
    contrast: torch.Tensor  # (B,) factors


def draw_jitter(b: int, device, g: torch.Generator | None = None, brightness=0.5, contrast=0.5,
                p=0.8) -> JitterParams:
    """Each sample: applied with probability p; brightness and contrast factors uniform in [1 - b, 1 + b] in a
    random order (torchvision's ColorJitter draws the factors and the order independently, as here)."""
    u = torch.rand(b, 4, device=device, generator=g)
    return JitterParams(u[:, 0] < p, u[:, 1] < 0.5, _uniform(u[:, 2], 1 - brightness, 1 + brightness),
                        _uniform(u[:, 3], 1 - contrast, 1 + contrast))


def apply_jitter(x: torch.Tensor, q: JitterParams) -> torch.Tensor:
    """torchvision's adjust_brightness / adjust_contrast on one-channel images, per-sample factors, clamped."""
    shape = (x.shape[0], 1, 1, 1)
    fb, fc = q.brightness.to(x.dtype).view(shape), q.contrast.to(x.dtype).view(shape)

    def bright(t):
        return (t * fb).clamp(0, 1)

    def contr(t):
        return (fc * t + (1 - fc) * t.mean(dim=(-3, -2, -1), keepdim=True)).clamp(0, 1)

    out = torch.where(q.contrast_first.view(shape), bright(contr(x)), contr(bright(x)))
    return torch.where(q.applied.view(shape), out, x)


def color_jitter(x: torch.Tensor, g: torch.Generator | None = None, brightness=0.5, contrast=0.5, p=0.8) -> torch.Tensor:
    """Random brightness and contrast, each sample independently (see ``draw_jitter``)."""
    return apply_jitter(x, draw_jitter(x.shape[0], x.device, g, brightness, contrast, p))


def draw_blur(b: int, device, g: torch.Generator | None = None, sigma=(0.1, 2.0), p=0.5) -> torch.Tensor:
    """(B,) sigma per sample, 0 where the sample is not blurred (probability 1 - p)."""
    u = torch.rand(b, 2, device=device, generator=g)
    return torch.where(u[:, 0] < p, _uniform(u[:, 1], *sigma), torch.zeros((), device=device))


def apply_blur(x: torch.Tensor, sigmas: torch.Tensor, max_sigma: float = MAX_SIGMA) -> torch.Tensor:
    """torchvision's gaussian_blur (kernel 2 ceil(3 sigma) + 1, reflect padding) with a per-sample sigma (0: left
    as it is), as one grouped convolution: each kernel is zero-padded to the largest size, which leaves the result
    unchanged."""
    b, c = x.shape[0], x.shape[1]
    radius = math.ceil(3 * max_sigma)
    taps = torch.arange(-radius, radius + 1, device=x.device, dtype=torch.float32)
    s = sigmas.to(torch.float32).view(b, 1)
    on = s > 0
    safe = torch.where(on, s, torch.ones((), device=x.device))
    pdf = torch.exp(-0.5 * (taps / safe) ** 2) * (taps.abs() <= torch.ceil(3 * safe))
    kernels = torch.where(on, pdf / pdf.sum(1, keepdim=True), (taps == 0).to(torch.float32)).to(x.dtype)
    flat = x.reshape(1, b * c, *x.shape[-2:])
    padded = F.pad(flat, (radius, radius, radius, radius), mode="reflect")
    k = kernels.repeat_interleave(c, 0, output_size=b * c)
    out = F.conv2d(F.conv2d(padded, k.view(b * c, 1, 1, -1), groups=b * c), k.view(b * c, 1, -1, 1), groups=b * c)
    return torch.where(on.view(b, 1, 1, 1), out.view_as(x), x)


def gaussian_blur(x: torch.Tensor, g: torch.Generator | None = None, sigma=(0.1, 2.0), p=0.5) -> torch.Tensor:
    """A Gaussian blur with probability p, sigma uniform in ``sigma``, each sample independently."""
    return apply_blur(x, draw_blur(x.shape[0], x.device, g, sigma, p), max(sigma[1], MAX_SIGMA))


def cutmix_box(size: int, g: torch.Generator | None = None, p=0.5, area=(0.02, 0.4), ratio=(0.3, 1 / 0.3)) -> torch.Tensor:
    """(size, size) bool mask with one box of 2-40% of the image area and aspect ratio in [0.3, 1/0.3], or empty
    with probability 1 - p (UniMatch's obtain_cutmix_box)."""
    return cutmix_boxes(1, size, g, p, area, ratio)[0]


def cutmix_boxes(n: int, size: int, g: torch.Generator | None = None, p=0.5, area=(0.02, 0.4),
                 ratio=(0.3, 1 / 0.3), device=None) -> torch.Tensor:
    """(n, size, size) bool masks, one ``cutmix_box`` draw each, drawn and built on ``device``.

    UniMatch draws the area once, then ratio and position until the box fits; the first fitting candidate of
    ``BOX_CANDIDATES`` parallel draws is that box (a rejection sampler's first acceptance)."""
    device = torch.device("cpu") if device is None else torch.device(device)
    u = torch.rand(n, 2, device=device, generator=g)
    cand = torch.rand(n, BOX_CANDIDATES, 3, device=device, generator=g)
    target = _uniform(u[:, 1:], *area) * size * size  # (n, 1)
    r = _uniform(cand[..., 0], *ratio)
    w = torch.sqrt(target / r).floor()  # int() of a positive number
    h = torch.sqrt(target * r).floor()
    x0 = (cand[..., 1] * size).floor().clamp(max=size - 1)  # randint(0, size)
    y0 = (cand[..., 2] * size).floor().clamp(max=size - 1)
    return first_fitting_box(w, h, x0, y0, size) & (u[:, 0] < p).view(n, 1, 1)


def first_fitting_box(w: torch.Tensor, h: torch.Tensor, x0: torch.Tensor, y0: torch.Tensor, size: int) -> torch.Tensor:
    """(n, size, size) bool: for each row of (n, K) candidate boxes (widths, heights, corners; broadcastable), the
    first candidate that fits in the image — a rejection sampler's first acceptance; clipped to the image in the
    (negligible) case that none fits."""
    w, h, x0, y0 = torch.broadcast_tensors(w, h, x0, y0)
    n = w.shape[0]
    first = ((x0 + w <= size) & (y0 + h <= size)).to(torch.uint8).argmax(1, keepdim=True)  # 0 if none fits

    def pick(t):
        return t.gather(1, first).view(n, 1, 1)

    w, h = pick(w).clamp(max=size), pick(h).clamp(max=size)
    x0, y0 = torch.minimum(pick(x0), size - w), torch.minimum(pick(y0), size - h)
    ys = torch.arange(size, device=w.device).view(1, size, 1)
    xs = torch.arange(size, device=w.device).view(1, 1, size)
    return (ys >= y0) & (ys < y0 + h) & (xs >= x0) & (xs < x0 + w)


def strong_view(x: torch.Tensor, g: torch.Generator | None = None, brightness=0.5, contrast=0.5) -> torch.Tensor:
    """Colour jitter (p 0.8) then Gaussian blur (p 0.5); UniMatch's jitter strengths by default."""
    return gaussian_blur(color_jitter(x, g, brightness, contrast), g)
