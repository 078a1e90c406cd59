"""In-memory 2-D slice pools and a resumable sampler.

Every slice of the needed volumes is kept at its native size. A draw augments the native slice (the literature's
weak augmentation, when the engine applies it) and then resizes it to the training size with the run's recorded
``data.train_resize`` protocol — the order SSL4MIS and UniMatch use (augment, then zoom to 256 with order 0).
The sampler draws shuffled epochs with its own numpy generator, whose state is part of the checkpoint, so a
resumed run draws exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ssbench.augment import WeakParams, apply_weak, apply_weak_torch, draw_weak
from ssbench.methods.api import Batch
from ssbench.resize import resize_image, resize_image_torch, resize_label, resize_label_torch


@dataclass
class SlicePool:
    images: list[np.ndarray]  # native (H, W) float32 slices
    labels: list[np.ndarray] | None  # native (H, W) uint8 slices
    origin: list[tuple[str, int]]  # (case id, slice index) of each slice
    cases: dict  # case id -> Case (the volumes the slices are views of)

    @classmethod
    def from_cases(cls, cases, with_labels: bool) -> "SlicePool":
        images, labels, origin = [], [], []
        for case in cases:
            for z in range(case.image.shape[0]):
                images.append(case.image[z])
                if with_labels:
                    labels.append(case.label[z])
                origin.append((case.case_id, z))
        return cls(images, labels if with_labels else None, origin, {c.case_id: c for c in cases})

    def __len__(self) -> int:
        return len(self.images)

    def volumes(self) -> dict[str, np.ndarray]:
        """case id -> its native (D, H, W) float32 image volume."""
        return {cid: case.image for cid, case in self.cases.items()}

    def labeled_volumes(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """case id -> its native (image (D, H, W) float32, label (D, H, W) uint8)."""
        return {cid: (case.image, case.label) for cid, case in self.cases.items()}


class DevicePool:
    """A pool's native slices preloaded on a device (one tensor per slice): the weak augmentation and the resize
    then run there (``ssbench.augment.apply_weak_torch``, ``ssbench.resize.*_torch``), pixel for pixel as on the
    CPU path, and only the random decisions are drawn on the host."""

    def __init__(self, pool: SlicePool, device):
        self.images = [torch.from_numpy(np.ascontiguousarray(i)).to(device) for i in pool.images]
        self.labels = None if pool.labels is None else [torch.from_numpy(np.ascontiguousarray(l)).to(device)
                                                        for l in pool.labels]


class Sampler:
    """Shuffled epochs over a pool, weakly augmented at native size, then resized; ``state_dict`` captures
    everything random.

    ``drop_last``: an epoch ends when fewer than a batch of its permutation is left (PyTorch's DataLoader with
    ``drop_last=True``, as UniMatch's loaders); otherwise batches run on into the next permutation.
    With ``world`` > 1 (DDP) every rank draws the same global batch of ``batch_size`` slices and their
    augmentations and builds only its own contiguous share: the data a run sees does not depend on its world size.
    """

    def __init__(self, pool: SlicePool, batch_size: int, seed: int, size: int, resize: str = "order0",
                 augment_weak: bool = True, drop_last: bool = False, device_pool: DevicePool | None = None,
                 rank: int = 0, world: int = 1, weak_always: bool = False):
        self.pool = pool
        self.batch_size = batch_size
        self.size = size
        self.resize = resize
        self.augment_weak = augment_weak
        self.weak_always = weak_always  # train.augment=rotflip-or-rotate
        self.drop_last = drop_last
        self.device_pool = device_pool
        self.rank, self.world = rank, world
        self.rng = np.random.default_rng(seed)
        self.order = self.rng.permutation(len(pool))
        self.pos = 0

    def batches_per_epoch(self) -> int:
        return len(self.pool) // self.batch_size if self.drop_last else -(-len(self.pool) // self.batch_size)

    def _next_index(self) -> int:
        if self.pos >= len(self.order):
            self.order = self.rng.permutation(len(self.pool))
            self.pos = 0
        i = int(self.order[self.pos])
        self.pos += 1
        return i

    def draw(self) -> list[tuple[int, WeakParams | None]]:
        """The next global batch: (slice index, its weak augmentation) per image, the same on every rank."""
        if self.drop_last and self.pos + self.batch_size > len(self.order):
            self.pos = len(self.order)  # the rest of this permutation is dropped
        picks = []
        for _ in range(self.batch_size):
            i = self._next_index()
            picks.append((i, draw_weak(self.rng, self.weak_always) if self.augment_weak else None))
        return picks

    def next(self, device) -> Batch:
        picks = self.draw()
        share = len(picks) // self.world
        picks = picks[self.rank * share : (self.rank + 1) * share]
        if self.device_pool is not None:
            image_t, label_t = self._build_on_device(picks)
        else:
            image_t, label_t = self._build_on_host(picks, device)
        return Batch(image_t, label_t, [self.pool.origin[i][0] for i, _ in picks],
                     [self.pool.origin[i][1] for i, _ in picks])

    def _build_on_host(self, picks, device):
        images, labels = [], []
        for i, weak in picks:
            image = self.pool.images[i]
            label = self.pool.labels[i] if self.pool.labels is not None else None
            if weak is not None:
                image, label = apply_weak(image, label, weak)
            images.append(resize_image(image, self.size, self.resize))
            if label is not None:
                labels.append(resize_label(label, self.size, self.resize))
        image_t = torch.from_numpy(np.stack(images).astype(np.float32, copy=False)).unsqueeze(1).to(device)
        label_t = None
        if self.pool.labels is not None:
            label_t = torch.from_numpy(np.stack(labels).astype(np.int64)).to(device)
        return image_t, label_t

    def _build_on_device(self, picks):
        pool = self.device_pool
        images, labels = [], []
        for i, weak in picks:
            image = pool.images[i]
            label = pool.labels[i] if pool.labels is not None else None
            if weak is not None:
                image, label = apply_weak_torch(image, label, weak)
            images.append(resize_image_torch(image, self.size, self.resize))
            if label is not None:
                labels.append(resize_label_torch(label, self.size, self.resize))
        label_t = torch.stack(labels).long() if labels else None
        return torch.stack(images).unsqueeze(1), label_t

    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state, "order": torch.from_numpy(self.order.copy()), "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.order = state["order"].numpy()
        self.pos = int(state["pos"])
