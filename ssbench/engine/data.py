"""2-D slice pools and a resumable sampler.

A pool is a list of views of the needed volumes' slices at their native size: arrays in memory (``--data-cache
off``) or memory-mapped from the prepared-data cache (``ssbench.datasets.cache``), whose slices are read only when
drawn. A draw augments the native slice (the literature's weak augmentation, when the engine applies it) and then
resizes it to the training size with the run's recorded ``data.train_resize`` protocol — the order SSL4MIS and
UniMatch use (augment, then zoom to 256 with order 0). The sampler draws shuffled epochs with its own numpy
generator, whose state is part of the checkpoint, so a resumed run draws exactly the batches an uninterrupted one
would.
"""

from __future__ import annotations

from collections import deque
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
        """case id -> its native (D, H, W) float32 image volume (memory-mapped from the cache: read when used)."""
        return {cid: case.image for cid, case in self.cases.items()}

    def labeled_volumes(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """case id -> its native (image (D, H, W) float32, label (D, H, W) uint8)."""
        return {cid: (case.image, case.label) for cid, case in self.cases.items()}


class DevicePool:
    """A pool's native slices on a device, within a budget: the weak augmentation and the resize then run there
    (``ssbench.augment.apply_weak_torch``, ``ssbench.resize.*_torch``), pixel for pixel as on the CPU path, and only
    the random decisions are drawn on the host.

    The first slices of the pool, up to ``budget_bytes`` (``data.device_budget_gb``; None: all), are copied to the
    device here, before training: a step that draws only them copies nothing. The others are read when drawn and
    copied from pinned memory without waiting (``non_blocking``): one host-to-device copy per such slice. Where a
    slice comes from never changes a pixel."""

    def __init__(self, pool: SlicePool, device, budget_bytes: int | None = None):
        self.pool, self.device = pool, torch.device(device)
        n, used = 0, 0
        for i in range(len(pool)):  # the views' sizes: nothing is read here
            size = pool.images[i].nbytes + (pool.labels[i].nbytes if pool.labels is not None else 0)
            if budget_bytes is not None and used + size > budget_bytes:
                break
            n, used = n + 1, used + size
        self.resident_bytes = used
        load = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(self.device)  # noqa: E731
        self.images = [load(pool.images[i]) for i in range(n)]
        self.labels = None if pool.labels is None else [load(pool.labels[i]) for i in range(n)]

    def _stream(self, array: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(array))
        if self.device.type == "cuda":
            return t.pin_memory().to(self.device, non_blocking=True)
        return t.to(self.device)

    def image(self, i: int) -> torch.Tensor:
        return self.images[i] if i < len(self.images) else self._stream(self.pool.images[i])

    def label(self, i: int) -> torch.Tensor:
        return self.labels[i] if i < len(self.labels) else self._stream(self.pool.labels[i])


class Sampler:
    """Shuffled epochs over a pool, weakly augmented at native size, then resized; ``state_dict`` captures
    everything random.

    ``drop_last``: an epoch ends when fewer than a batch of its permutation is left (PyTorch's DataLoader with
    ``drop_last=True``, as UniMatch's loaders); otherwise batches run on into the next permutation.
    With ``world`` > 1 (DDP) every rank draws the same global batch of ``batch_size`` slices and their
    augmentations and builds only its own contiguous share: the data a run sees does not depend on its world size.

    ``workers`` > 0: the host batches are read, augmented and resized by that many DataLoader worker processes
    ahead of the step (pinned memory on CUDA). Every random choice is still drawn here, in the main process, in
    the same order: the batches do not depend on the number of workers, and ``state_dict`` is the state after the
    last batch *used* (the ones prefetched are drawn again after a resume).
    """

    def __init__(self, pool: SlicePool, batch_size: int, seed: int, size: int, resize: str = "order0",
                 augment_weak: bool = True, drop_last: bool = False, device_pool: DevicePool | None = None,
                 rank: int = 0, world: int = 1, workers: int = 0, pin_memory: bool = False,
                 weak_always: bool = False):
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
        self.workers = workers if device_pool is None else 0  # the device path reads on the main thread
        self.pin_memory = pin_memory
        self._pending: deque = deque()  # the state before each batch drawn for the workers and not yet used
        self._batches = None  # the DataLoader's iterator (workers > 0)

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

    def _share(self, picks):
        share = len(picks) // self.world
        return picks[self.rank * share : (self.rank + 1) * share]

    def next(self, device) -> Batch:
        if self.workers > 0:
            picks, image_t, label_t = next(self._worker_batches())
            self._pending.popleft()
            non_blocking = self.pin_memory and torch.device(device).type == "cuda"
            image_t = image_t.to(device, non_blocking=non_blocking)
            label_t = None if label_t is None else label_t.to(device, non_blocking=non_blocking)
        else:
            picks = self._share(self.draw())
            if self.device_pool is not None:
                image_t, label_t = self._build_on_device(picks)
            else:
                image_t, label_t = (t if t is None else t.to(device) for t in
                                    build_host_batch(self.pool, picks, self.size, self.resize))
        return Batch(image_t, label_t, [self.pool.origin[i][0] for i, _ in picks],
                     [self.pool.origin[i][1] for i, _ in picks])

    def _worker_batches(self):
        if self._batches is None:
            loader = torch.utils.data.DataLoader(
                _HostBatches(self.pool, self.size, self.resize), batch_size=None, sampler=_Draws(self),
                num_workers=self.workers, pin_memory=self.pin_memory, prefetch_factor=2, collate_fn=_as_is,
                generator=torch.Generator())  # its own generator: the global torch RNG (the model's) is not drawn
            self._batches = iter(loader)
        return self._batches

    def close(self) -> None:
        """Stop the workers (a resumed or finished sampler starts them again when next used)."""
        self._batches = None  # the iterator's finaliser shuts its worker processes down
        if self._pending:  # back to the state after the last batch used
            self._restore(self._pending[0])
        self._pending.clear()

    def _build_on_device(self, picks):
        pool = self.device_pool
        images, labels = [], []
        for i, weak in picks:
            image = pool.image(i)
            label = pool.label(i) if pool.pool.labels is not None else None
            if weak is not None:
                image, label = apply_weak_torch(image, label, weak)
            images.append(resize_image_torch(image, self.size, self.resize))
            if label is not None:
                labels.append(resize_label_torch(label, self.size, self.resize))
        label_t = torch.stack(labels).long() if labels else None
        return torch.stack(images).unsqueeze(1), label_t

    def _snapshot(self) -> tuple:
        return self.rng.bit_generator.state, self.order, self.pos  # ``order`` is replaced, never changed in place

    def _restore(self, snap: tuple) -> None:
        self.rng.bit_generator.state, self.order, self.pos = snap

    def state_dict(self) -> dict:
        rng, order, pos = self._pending[0] if self._pending else self._snapshot()
        return {"rng": rng, "order": torch.from_numpy(order.copy()), "pos": pos}

    def load_state_dict(self, state: dict) -> None:
        self.close()
        self.rng.bit_generator.state = state["rng"]
        self.order = state["order"].numpy()
        self.pos = int(state["pos"])


def build_host_batch(pool: SlicePool, picks, size: int, resize: str):
    """The (image (N, 1, S, S) float32, label (N, S, S) int64 or None) CPU tensors of ``picks``: each native slice
    read (from memory or the prepared cache's mapping), weakly augmented, resized."""
    images, labels = [], []
    for i, weak in picks:
        image = pool.images[i]
        label = pool.labels[i] if pool.labels is not None else None
        if weak is not None:
            image, label = apply_weak(image, label, weak)
        images.append(resize_image(image, size, resize))
        if label is not None:
            labels.append(resize_label(label, size, resize))
    image_t = torch.from_numpy(np.stack(images).astype(np.float32, copy=False)).unsqueeze(1)
    label_t = None
    if pool.labels is not None:
        label_t = torch.from_numpy(np.stack(labels).astype(np.int64))
    return image_t, label_t


def _as_is(batch):
    return batch  # a worker returns a whole batch already


class _Draws(torch.utils.data.Sampler):
    """The sampler's batches for a DataLoader, drawn in the main process (one after another, as without workers);
    the state before each draw is kept until its batch is used (``Sampler.state_dict``)."""

    def __init__(self, sampler: Sampler):
        self.sampler = sampler

    def __iter__(self):
        s = self.sampler
        while True:
            s._pending.append(s._snapshot())
            yield s._share(s.draw())


class _HostBatches(torch.utils.data.Dataset):
    """What a worker does with a batch's picks: read, augment and resize (``build_host_batch``)."""

    def __init__(self, pool: SlicePool, size: int, resize: str):
        self.pool, self.size, self.resize = pool, size, resize

    def __getitem__(self, picks):
        return (picks, *build_host_batch(self.pool, picks, self.size, self.resize))
