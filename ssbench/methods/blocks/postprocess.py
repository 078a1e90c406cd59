"""Pseudo-label post-processing of the copy-paste methods: the largest connected component of each class.

BCP and ABD keep, per unlabeled slice and per foreground class, only the largest 2-D connected component of the
teacher's argmax (``get_ACDC_2DLargestCC``); the rest of that class becomes background. They label with
``skimage.measure.label`` at its default, full connectivity (8-neighbourhood in 2-D). Here ``scipy.ndimage.label``
with the 3 x 3 structure gives the same components, numbered in the same raster order, so ties between equally
large components go to the same one (tests/methods/test_copy_paste.py and benchmarks/peer_check.py compare them).

Why scipy and not torch: connected components have no exact, fixed-cost tensor formulation (label propagation
needs as many passes as the longest path through a component), and scipy is already a dependency; so the labels
go to the host and back, as in the official code: the one host synchronisation of BCP's and ABD's step, made once
per step for all their pseudo-labels.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

_EIGHT = np.ones((3, 3), dtype=bool)
_FOUR = ndimage.generate_binary_structure(2, 1)


def largest_component_per_class(labels: torch.Tensor, num_classes: int, connectivity: int = 8) -> torch.Tensor:
    """(B, H, W) class indices -> the same with, per image and foreground class, only the largest connected
    component of that class kept (other pixels of the class set to 0). A class absent from an image stays absent.
    ``connectivity`` 8 (the official code's) or 4."""
    if connectivity not in (4, 8):
        raise ValueError(f"connectivity {connectivity}: expected 4 or 8")
    structure = _EIGHT if connectivity == 8 else _FOUR
    host = labels.detach().to("cpu", torch.int64).numpy()
    out = np.zeros_like(host)
    for i, image in enumerate(host):
        for c in range(1, num_classes):
            comps, n = ndimage.label(image == c, structure=structure)
            if n == 0:
                continue
            largest = int(np.argmax(np.bincount(comps.ravel())[1:])) + 1  # the first of equally large ones
            out[i][comps == largest] = c
    back = torch.from_numpy(out).to(labels.dtype)
    if labels.device.type == "cuda":  # from pinned memory, so the host does not wait for the copy back
        return back.pin_memory().to(labels.device, non_blocking=True)
    return back.to(labels.device)
