"""PCSW: Physical-Constraint Sliding-Window prompt generation (SSS, Zhu et al. 2025), on a volume's slice stack.

For one foreground class of one volume, from the current model's per-slice foreground probabilities:
  1. B = probability > 0.5, a stack of S slices;
  2. window lengths N from the middle of [max(2, S//3), max(3, S//2)] upward, each slid with stride 1;
  3. continuity C = voxels of the window's largest 3-D connected component / all its foreground voxels;
  4. the first window with C >= 0.8 wins: its slice where that component has the largest area gives the box
     [x_min, y_min, x_max, y_max] of the component there and a point;
  5. otherwise the slice with the largest raw foreground area gives the box over its foreground and a point;
     an all-empty stack gives no prompt (``source = "empty"``): the released code would prompt the whole image
     there, ssbench treats the class as absent from the volume and never prompts it (``sequence.class_prompts``).
The point is the structure's pixel nearest to the box centre (step 4; the paper: the box centre) or to the
foreground's centroid (step 5; the paper: the centroid), so that it lies on the structure also when the structure
is a ring (the myocardium around the left ventricle): ssbench's change, used with ``sss.point_prompt`` only.
Connectivity is explicit: 6 (SciPy's default, what the released code uses) or 26 (what its comment says).

``component`` gives the 3-D extent of what PCSW found (the connected components of the whole stack that hold the
prompt's region on its slice): the per-slice ablation (``sss.memory = false``) prompts only those slices.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class Prompt:
    box: tuple[float, float, float, float]  # x_min, y_min, x_max, y_max in pixels
    point: tuple[float, float]  # x, y
    source: Literal["window", "largest-slice", "empty"]
    slice_index: int  # the slice the prompt was read from (-1 when empty)
    window: tuple[int, int] | None = None  # [start, stop) of the winning window
    # (H, W) bool: what the box frames on that slice (the window's component there, or the slice's foreground)
    region: np.ndarray | None = field(default=None, compare=False, repr=False)


def window_lengths(num_slices: int) -> list[int]:
    lo, hi = max(2, num_slices // 3), max(3, num_slices // 2)
    start = (lo + hi) // 2
    return [n for n in range(start, hi + 1) if n <= num_slices]


def continuity(window: np.ndarray, structure: np.ndarray) -> tuple[float, np.ndarray | None]:
    """(largest 3-D component voxels / all foreground voxels, that component's mask); (0, None) if empty."""
    total = int(window.sum())
    if total == 0:
        return 0.0, None
    labels, n = ndimage.label(window, structure=structure)
    sizes = np.bincount(labels.ravel())[1:]
    biggest = int(np.argmax(sizes)) + 1
    return float(sizes[biggest - 1]) / total, labels == biggest


def _box(mask2d: np.ndarray) -> tuple[float, float, float, float]:
    ys, xs = np.nonzero(mask2d)
    return float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())


def pcsw(probs: np.ndarray, threshold: float = 0.8, connectivity: Literal[6, 26] = 6,
         prob_threshold: float = 0.5) -> Prompt:
    """``probs``: (S, H, W) foreground probabilities of one class over a volume's slices."""
    binary = np.asarray(probs) > prob_threshold
    s = binary.shape[0]
    structure = ndimage.generate_binary_structure(3, 1 if connectivity == 6 else 3)
    for n in window_lengths(s):
        for start in range(0, s - n + 1):
            c, largest = continuity(binary[start : start + n], structure)
            if largest is not None and c >= threshold:
                areas = largest.sum(axis=(1, 2))
                k = int(np.argmax(areas))
                box = _box(largest[k])
                point = _point_on(largest[k], (box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
                return Prompt(box, point, "window", start + k, (start, start + n), largest[k])
    return largest_slice(probs, prob_threshold)


def largest_slice(probs: np.ndarray, prob_threshold: float = 0.5) -> Prompt:
    """Step 5 alone (``sss.pcsw = false``): the slice with the largest foreground area, or the empty prompt (its
    whole-image box is the released code's; ssbench never uses it)."""
    binary = np.asarray(probs) > prob_threshold
    _, h, w = binary.shape
    areas = binary.sum(axis=(1, 2))
    if areas.max() > 0:
        k = int(np.argmax(areas))
        ys, xs = np.nonzero(binary[k])
        point = _point_on(binary[k], float(xs.mean()), float(ys.mean()))
        return Prompt(_box(binary[k]), point, "largest-slice", k, None, binary[k])
    return Prompt((0.0, 0.0, float(w - 1), float(h - 1)), ((w - 1) / 2, (h - 1) / 2), "empty", -1)


def _point_on(mask2d: np.ndarray, x: float, y: float) -> tuple[float, float]:
    """The pixel of ``mask2d`` nearest to (x, y) (the first in row-major order on ties), as (x, y)."""
    ys, xs = np.nonzero(mask2d)
    k = int(np.argmin((xs - x) ** 2 + (ys - y) ** 2))
    return float(xs[k]), float(ys[k])


def component(probs: np.ndarray, prompt: Prompt, connectivity: Literal[6, 26] = 6,
              prob_threshold: float = 0.5) -> np.ndarray:
    """(S, H, W) bool: the connected components of the whole thresholded stack that touch the prompt's region on
    its slice (empty for an empty prompt)."""
    binary = np.asarray(probs) > prob_threshold
    if prompt.region is None or prompt.slice_index < 0:
        return np.zeros_like(binary)
    structure = ndimage.generate_binary_structure(3, 1 if connectivity == 6 else 3)
    labels, _ = ndimage.label(binary, structure=structure)
    touched = np.unique(labels[prompt.slice_index][prompt.region])
    return np.isin(labels, touched[touched > 0])


def slice_boxes(mask: np.ndarray) -> dict[int, tuple[float, float, float, float]]:
    """slice index -> box [x_min, y_min, x_max, y_max] of a (S, H, W) mask on each slice it occupies."""
    return {z: _box(mask[z]) for z in range(mask.shape[0]) if mask[z].any()}
