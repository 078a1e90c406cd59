"""Slice-by-slice prediction at the method's input size, mapped back to the native grid with the run's recorded
``data.inference_resize`` protocol (see ``ssbench.resize``)."""

from __future__ import annotations

import numpy as np
import torch

from ssbench.resize import resize_volume, scores_to_labels


@torch.no_grad()
def predict_volume(method, image: np.ndarray, size: int, device, batch: int = 16, resize: str = "order0") -> np.ndarray:
    """(D, H, W) image -> (D, H, W) uint8 label map. Never sees a label."""
    method.eval()
    d, h, w = image.shape
    x = torch.from_numpy(resize_volume(image, size, resize)).unsqueeze(1).to(device)
    scores = method.predict_volume(x, batch)
    out = np.empty((d, h, w), np.uint8)
    for z in range(0, d, batch):  # back to the native grid a few slices at a time (bounded memory)
        out[z : z + batch] = scores_to_labels(scores[z : z + batch], (h, w), resize)
    return out
