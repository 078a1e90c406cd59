"""In-memory 2-D slice pools and a resumable sampler.

Every slice of the needed volumes is resized once to the training size (scipy zoom, order 0 for image and label,
as the literature does) and kept in memory; the sampler draws shuffled epochs with its own numpy generator, whose
state is part of the checkpoint, so a resumed run draws exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

from ssbench import augment
from ssbench.methods.api import Batch


def resize_slice(array: np.ndarray, size: int | tuple[int, int], order: int = 0) -> np.ndarray:
    """scipy zoom to ``size`` (square side or (H, W)), order 0 by default, as the literature resizes."""
    h, w = array.shape
    th, tw = (size, size) if isinstance(size, int) else size
    if (h, w) == (th, tw):
        return array
    return ndimage.zoom(array, (th / h, tw / w), order=order)


@dataclass
class SlicePool:
    images: np.ndarray  # (N, S, S) float32
    labels: np.ndarray | None  # (N, S, S) uint8
    origin: list[tuple[str, int]]  # (case id, slice index) of each slice

    @classmethod
    def from_cases(cls, cases, size: int, with_labels: bool) -> "SlicePool":
        images, labels, origin = [], [], []
        for case in cases:
            for z in range(case.image.shape[0]):
                images.append(resize_slice(case.image[z], size))
                if with_labels:
                    labels.append(resize_slice(case.label[z], size))
                origin.append((case.case_id, z))
        return cls(
            np.stack(images).astype(np.float32),
            np.stack(labels).astype(np.uint8) if with_labels else None,
            origin,
        )

    def __len__(self) -> int:
        return len(self.images)

    def volumes(self) -> dict[str, np.ndarray]:
        """case id -> (D, S, S) view of all its slices, in slice order."""
        index: dict[str, list[int]] = {}
        for i, (case_id, _) in enumerate(self.origin):
            index.setdefault(case_id, []).append(i)
        return {cid: self.images[idx] for cid, idx in index.items()}


class Sampler:
    """Shuffled epochs over a pool, weakly augmented batches; ``state_dict`` captures everything random."""

    def __init__(self, pool: SlicePool, batch_size: int, seed: int, augment_weak: bool = True):
        self.pool = pool
        self.batch_size = batch_size
        self.augment_weak = augment_weak
        self.rng = np.random.default_rng(seed)
        self.order = self.rng.permutation(len(pool))
        self.pos = 0

    def _next_index(self) -> int:
        if self.pos >= len(self.order):
            self.order = self.rng.permutation(len(self.pool))
            self.pos = 0
        i = int(self.order[self.pos])
        self.pos += 1
        return i

    def next(self, device) -> Batch:
        images, labels, picked = [], [], []
        for _ in range(self.batch_size):
            i = self._next_index()
            picked.append(i)
            image = self.pool.images[i]
            label = self.pool.labels[i] if self.pool.labels is not None else None
            if self.augment_weak:
                image, label = augment.weak(image, label, self.rng)
            images.append(image)
            labels.append(label)
        image_t = torch.from_numpy(np.stack(images)).unsqueeze(1).to(device)
        label_t = None
        if self.pool.labels is not None:
            label_t = torch.from_numpy(np.stack(labels).astype(np.int64)).to(device)
        return Batch(image_t, label_t, [self.pool.origin[i][0] for i in picked],
                     [self.pool.origin[i][1] for i in picked])

    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state, "order": torch.from_numpy(self.order.copy()), "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.order = state["order"].numpy()
        self.pos = int(state["pos"])
