"""Slice-by-slice prediction at the training size, resized back to native resolution (order 0)."""

from __future__ import annotations

import numpy as np
import torch

from ssbench.engine.data import resize_slice


@torch.no_grad()
def predict_volume(method, image: np.ndarray, size: int, device, batch: int = 16) -> np.ndarray:
    """(D, H, W) image -> (D, H, W) uint8 label map. Never sees a label."""
    method.eval()
    d, h, w = image.shape
    slices = np.stack([resize_slice(image[z], size) for z in range(d)]).astype(np.float32)
    out = np.empty((d, h, w), np.uint8)
    x = torch.from_numpy(slices).unsqueeze(1).to(device)
    pred = method.predict_volume(x, batch).argmax(1).cpu().numpy().astype(np.uint8)
    for z, p in enumerate(pred):
        out[z] = resize_slice(p, (h, w))
    return out

