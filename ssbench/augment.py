"""The literature's weak augmentation (SSL4MIS RandomGenerator; the same in UniMatch's ACDC loader), on numpy
slices at their native size, before the resize to the training size.

With p 0.5 a random rot90 (k in 0..3) then a flip along a random axis; otherwise with p 0.5 a rotation by an
integer angle drawn by ``np.random.randint(-20, 20)`` (so -20..19 degrees: both official codes exclude +20) with
nearest-neighbour interpolation (order 0) for image and label alike.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def weak(image: np.ndarray, label: np.ndarray | None, rng: np.random.Generator):
    if rng.random() > 0.5:
        k = int(rng.integers(0, 4))
        axis = int(rng.integers(0, 2))
        image = np.flip(np.rot90(image, k), axis=axis)
        if label is not None:
            label = np.flip(np.rot90(label, k), axis=axis)
    elif rng.random() > 0.5:
        angle = int(rng.integers(-20, 20))
        image = ndimage.rotate(image, angle, order=0, reshape=False)
        if label is not None:
            label = ndimage.rotate(label, angle, order=0, reshape=False)
    return np.ascontiguousarray(image), None if label is None else np.ascontiguousarray(label)
