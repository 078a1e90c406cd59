"""Resizing slices between their native grid and a method's input size: the two recorded protocols.

``order0``    scipy ``zoom`` with order 0 for images and labels alike: what SSL4MIS and UniMatch do for training
              and what SSL4MIS does at test time (image in with order 0, label map back with order 0).
``bilinear``  images bilinearly (torch, half-pixel centres, ``align_corners=False``), labels with the matching
              nearest neighbour (``nearest-exact``); at test time the class scores are resized back bilinearly
              before the argmax. UniMatch's evaluation and SAM-2's own pre-processing resize this way.

Every run records which one it used (``data.train_resize``, ``data.inference_resize``).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

ResizeMode = Literal["order0", "bilinear"]
RESIZE_MODES = ("order0", "bilinear")


def _hw(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def zoom_order0(array: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """(H, W) -> ``size`` with scipy zoom order 0, exactly as the literature's scripts call it."""
    h, w = array.shape
    th, tw = _hw(size)
    if (h, w) == (th, tw):
        return array
    return ndimage.zoom(array, (th / h, tw / w), order=0)


@lru_cache(maxsize=256)
def _zoom_index(n_in: int, n_out: int, device: torch.device):
    """scipy ``zoom(order=0)``'s source index along one axis (coordinate o * (n_in - 1) / (n_out - 1), rounded
    half up) and which outputs fall outside the input by round-off (scipy then writes its constant 0). Built on
    ``device``: no host-to-device copy."""
    step = (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
    c = torch.arange(n_out, dtype=torch.float64, device=device) * step
    inside = (c >= 0) & (c <= n_in - 1)
    return torch.floor(c + 0.5).long().clamp(0, n_in - 1), inside


def zoom_order0_torch(t: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """``zoom_order0`` on an (H, W) tensor on its device, pixel for pixel equal to scipy's."""
    (h, w), (th, tw) = t.shape, _hw(size)
    if (h, w) == (th, tw):
        return t
    iy, oky = _zoom_index(h, th, t.device)
    ix, okx = _zoom_index(w, tw, t.device)
    out = t[iy][:, ix]
    return torch.where(oky[:, None] & okx[None, :], out, t.new_zeros(()))


def resize_image_torch(image: torch.Tensor, size: int, mode: ResizeMode) -> torch.Tensor:
    """``resize_image`` on an (H, W) float tensor on its device."""
    if mode == "order0":
        return zoom_order0_torch(image, size)
    if tuple(image.shape) == _hw(size):
        return image
    return F.interpolate(image[None, None], size=_hw(size), mode="bilinear", align_corners=False)[0, 0]


def resize_label_torch(label: torch.Tensor, size: int, mode: ResizeMode) -> torch.Tensor:
    if mode == "order0":
        return zoom_order0_torch(label, size)
    if tuple(label.shape) == _hw(size):
        return label
    return F.interpolate(label[None, None].float(), size=_hw(size), mode="nearest-exact")[0, 0].to(label.dtype)


def resize_image(image: np.ndarray, size: int | tuple[int, int], mode: ResizeMode) -> np.ndarray:
    """One (H, W) float slice to ``size``."""
    if mode == "order0":
        return zoom_order0(image, size)
    if image.shape == _hw(size):
        return image
    t = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]
    return F.interpolate(t, size=_hw(size), mode="bilinear", align_corners=False)[0, 0].numpy()


def resize_label(label: np.ndarray, size: int | tuple[int, int], mode: ResizeMode) -> np.ndarray:
    """One (H, W) label slice to ``size``: nearest neighbour on the same grid as ``resize_image`` uses."""
    if mode == "order0":
        return zoom_order0(label, size)
    if label.shape == _hw(size):
        return label
    t = torch.from_numpy(np.ascontiguousarray(label).astype(np.float32))[None, None]
    return F.interpolate(t, size=_hw(size), mode="nearest-exact")[0, 0].numpy().astype(label.dtype)


def resize_volume(volume: np.ndarray, size: int, mode: ResizeMode) -> np.ndarray:
    """(D, H, W) image volume -> (D, size, size) float32, slice by slice."""
    if mode == "bilinear":
        if volume.shape[1:] == (size, size):
            return volume.astype(np.float32, copy=False)
        t = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32))[:, None]
        return F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)[:, 0].numpy()
    return np.stack([zoom_order0(s, size) for s in volume]).astype(np.float32, copy=False)


def scores_to_labels(scores: torch.Tensor, native_hw: tuple[int, int], mode: ResizeMode) -> np.ndarray:
    """(D, K, S, S) class scores at the input size -> (D, H, W) uint8 label map on the native grid.

    ``order0``: argmax at the input size, then the label map zoomed back with order 0 (SSL4MIS).
    ``bilinear``: the scores resized bilinearly to the native grid, then the argmax (UniMatch).
    """
    if mode == "bilinear":
        if tuple(scores.shape[-2:]) != tuple(native_hw):
            scores = F.interpolate(scores.float(), size=native_hw, mode="bilinear", align_corners=False)
        return scores.argmax(1).to(torch.uint8).cpu().numpy()
    labels = scores.argmax(1).to(torch.uint8).cpu().numpy()
    return np.stack([zoom_order0(p, native_hw) for p in labels])
