"""The literature's weak augmentation (SSL4MIS RandomGenerator; the same in UniMatch's ACDC loader), on a slice at
its native size, before the resize to the training size.

With p 0.5 a random rot90 (k in 0..3) then a flip along a random axis; otherwise with p 0.5 a rotation by an
integer angle drawn by ``np.random.randint(-20, 20)`` (so -20..19 degrees: both official codes exclude +20) with
nearest-neighbour interpolation (order 0) for image and label alike; otherwise the slice as it is (UniMatch's
loader). ``train.augment=rotflip-or-rotate`` is SSL4MIS's since its commit 24db034: always one of the two.

The parameters are drawn once (``draw_weak``) and applied by either path: ``apply_weak`` on numpy arrays with
scipy (the CPU path, the official codes' own calls) or ``apply_weak_torch`` on tensors on any device, which
reproduces scipy's order-0 rotation pixel for pixel (its coordinate mapping, rounding and constant border), so
both paths see the same random stream and the same pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from scipy import ndimage, special


@dataclass(frozen=True)
class WeakParams:
    kind: str  # 'rotflip', 'rotate' or 'none'
    k: int = 0  # rot90 turns
    axis: int = 0  # flip axis
    angle: int = 0  # degrees


def draw_weak(rng: np.random.Generator, always: bool = False) -> WeakParams:
    """The random decisions of one weak augmentation, in the order the official loaders draw them. ``always``
    (``train.augment=rotflip-or-rotate``): SSL4MIS's ``RandomGenerator`` since 24db034 (06df604 included), rot90 +
    flip with p 0.5, else a rotation, never the slice as it was; otherwise UniMatch's (and ABD's, AD-MT's, and
    SSL4MIS's before 24db034), which leaves 1 slice in 4 unaugmented."""
    if always:
        if rng.random() < 0.5:
            k = int(rng.integers(0, 4))
            return WeakParams("rotflip", k=k, axis=int(rng.integers(0, 2)))
        return WeakParams("rotate", angle=int(rng.integers(-20, 20)))
    if rng.random() > 0.5:
        k = int(rng.integers(0, 4))
        return WeakParams("rotflip", k=k, axis=int(rng.integers(0, 2)))
    if rng.random() > 0.5:
        return WeakParams("rotate", angle=int(rng.integers(-20, 20)))
    return WeakParams("none")


def apply_weak(image: np.ndarray, label: np.ndarray | None, p: WeakParams):
    if p.kind == "rotflip":
        image = np.flip(np.rot90(image, p.k), axis=p.axis)
        if label is not None:
            label = np.flip(np.rot90(label, p.k), axis=p.axis)
    elif p.kind == "rotate":
        image = ndimage.rotate(image, p.angle, order=0, reshape=False)
        if label is not None:
            label = ndimage.rotate(label, p.angle, order=0, reshape=False)
    return np.ascontiguousarray(image), None if label is None else np.ascontiguousarray(label)


def weak(image: np.ndarray, label: np.ndarray | None, rng: np.random.Generator, always: bool = False):
    """Draw and apply one weak augmentation (numpy)."""
    return apply_weak(image, label, draw_weak(rng, always))


@lru_cache(maxsize=64)
def _rotation_map(h: int, w: int, angle: int, device: torch.device):
    """Source pixel of every output pixel of scipy's ``rotate(order=0, reshape=False)``, and which ones fall
    outside the input (scipy's constant border, value 0). Built on ``device`` from host scalars (float64, as scipy
    computes): a cache miss costs a few small kernels, never a host-to-device copy."""
    c, s = float(special.cosdg(angle)), float(special.sindg(angle))
    cy0, cx0 = (h - 1) / 2, (w - 1) / 2
    off_y, off_x = cy0 - (c * cy0 + s * cx0), cx0 - (-s * cy0 + c * cx0)
    oy = torch.arange(h, dtype=torch.float64, device=device).view(h, 1)
    ox = torch.arange(w, dtype=torch.float64, device=device).view(1, w)
    cy = c * oy + s * ox + off_y
    cx = -s * oy + c * ox + off_x
    inside = (cy >= 0) & (cy <= h - 1) & (cx >= 0) & (cx <= w - 1)
    iy = torch.floor(cy + 0.5).long().clamp(0, h - 1)
    ix = torch.floor(cx + 0.5).long().clamp(0, w - 1)
    return iy * w + ix, inside


def _rotate_torch(t: torch.Tensor, angle: int) -> torch.Tensor:
    h, w = t.shape
    index, inside = _rotation_map(h, w, angle, t.device)
    return torch.where(inside, t.reshape(-1)[index], t.new_zeros(()))


def apply_weak_torch(image: torch.Tensor, label: torch.Tensor | None, p: WeakParams):
    """``apply_weak`` on (H, W) tensors, on their device."""
    if p.kind == "rotflip":
        image = torch.flip(torch.rot90(image, p.k, (0, 1)), (p.axis,))
        if label is not None:
            label = torch.flip(torch.rot90(label, p.k, (0, 1)), (p.axis,))
    elif p.kind == "rotate":
        image = _rotate_torch(image, p.angle)
        if label is not None:
            label = _rotate_torch(label, p.angle)
    return image, label
