"""Labeled training on clips of consecutive slices with SAM-2's memory, trained as evaluation reads it, and absence
taught as SAM-2's own training does.

A clip is ``clip_length`` consecutive slices of a labeled volume from the drawn slice, in increasing or (with
``clip_directions = both``, p 0.5) decreasing slice order — evaluation propagates from the prompted slice both ways,
so both orders are trained (the mechanism is SAM-2's sampler option ``reverse_time_prob``; the probability is
ssbench's). Its default length, 8, is SAM-2's training clip (``num_frames: 8`` in the SAM 2.1 training config) and
the shortest clip whose last frame reads every memory slot evaluation reads: the prompted frame and the 6 frames
before it (``num_maskmem = 7``). The clip's slices are resized from the native slices and weakly augmented with one
crop/flip for the whole clip, on the run's device.

Every foreground class is an object of the clip. A class present on the first slice is prompted there with its
ground-truth box (and point) and tracked through the clip by SAM-2's memory: on each slice its mask (the candidate
with the lowest loss when SAM-2 decodes several: mask choice as SAM-2 trains it), the IoU head's prediction of every
candidate and its object score are supervised. A class absent from the first slice is, as in MedSAM-2 (which tracks
only the objects of the prompted frame, func_3d/function.py), never tracked: with ``absent_prompts`` it gets a decoy
box there (its box on the nearest slice of the volume that holds it, else a random box) and only that slice's
object score is supervised (target absent); without, it is not prompted at all. The coarse head learns every slice
(CE + Dice).

The batch keeps a fixed shape (all clips x all classes decoded, the untracked ones weighted 0), so that nothing in
the step waits for the device.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ssbench.methods.losses import ce_dice_loss
from ssbench.methods.sss import sam2_net
from ssbench.methods.sss.geometry import Crop, interior_points, mask_boxes, random_boxes
from ssbench.methods.sss.losses import best_mask_losses, decoded, iou_losses, presence_losses, weighted_mean
from ssbench.methods.sss.network import SAM2Segmenter
from ssbench.resize import resize_image_torch, resize_label_torch


@dataclass
class LabeledVolume:
    image: torch.Tensor  # (D, H, W) float32, native, on the run's device
    label: torch.Tensor  # (D, H, W) uint8, native, on the run's device
    holding: list[np.ndarray]  # per foreground class: the slices that hold it (host)

    @classmethod
    def of(cls, image: np.ndarray, label: np.ndarray, num_foreground: int, device=None) -> "LabeledVolume":
        holding = [np.nonzero((label == c).any(axis=(1, 2)))[0] for c in range(1, num_foreground + 1)]
        to = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(device)  # noqa: E731
        return cls(to(image.astype(np.float32, copy=False)), to(label.astype(np.uint8, copy=False)), holding)

    @property
    def depth(self) -> int:
        return self.image.shape[0]


@dataclass
class ClipBatch:
    images: torch.Tensor  # (N, L, 1, S, S)
    labels: torch.Tensor  # (N, L, S, S) int64
    boxes: torch.Tensor  # (N, K, 4): every class's prompt on the first slice
    points: torch.Tensor  # (N, K, 2)
    present: torch.Tensor  # (N, K) bool: the class is on the first slice (tracked through the clip)


def clip_length(volumes: list[LabeledVolume], wanted: int) -> int:
    return max(1, min([wanted] + [v.depth for v in volumes]))


def clip_slices(depth: int, first: int, length: int, backward: bool) -> list[int]:
    """The clip's slices in tracking order: from ``first`` up (or down), moved back to fit the volume."""
    if backward:
        top = max(length - 1, min(first, depth - 1))
        return list(range(top, top - length, -1))
    start = max(0, min(first, depth - length))
    return list(range(start, start + length))


def draw_clip(volume: LabeledVolume, first: int, length: int, size: int, resize: str,
              crop_scale: tuple[float, float], backward: bool = False):
    """The clip of ``length`` slices from ``first`` at ``size``, cropped and flipped as one; with its first
    slice's prompts. -> images (L, 1, S, S), labels (L, S, S), boxes (K, 4), points (K, 2), present (K,)."""
    zs = clip_slices(volume.depth, first, length, backward)
    k = len(volume.holding)
    # each class's decoy slice: the slice nearest to the prompted one that holds it (any slice when none does: its
    # box is then empty and a random box replaces it)
    near = [int(h[np.argmin(np.abs(h - zs[0]))]) if len(h) else zs[0] for h in volume.holding]
    images = torch.stack([resize_image_torch(volume.image[z], size, resize) for z in zs])
    labels = torch.stack([resize_label_torch(volume.label[z], size, resize) for z in zs + near])
    crop = Crop.random(size, crop_scale)
    images = crop.image(images, size)
    labels = crop.image(labels.float(), size, mode="nearest").round().long()
    classes = torch.arange(1, k + 1, device=labels.device)[:, None, None]
    on_first = labels[0][None] == classes  # (K, S, S)
    box, present = mask_boxes(on_first)
    decoy, found = mask_boxes(labels[length:] == classes)
    decoy = torch.where(found[:, None], decoy, random_boxes((k,), size, labels.device))
    boxes = torch.where(present[:, None], box, decoy)
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    points = torch.where(present[:, None], interior_points(on_first), centres)
    return images[:, None], labels[:length], boxes, points, present


def clip_losses(net: SAM2Segmenter, clips: ClipBatch, with_point: bool, absent_prompts: bool) -> dict[str, torch.Tensor]:
    """Track every class of every clip through its slices; the losses above."""
    n, length = clips.images.shape[:2]
    k = clips.boxes.shape[1]
    device = clips.labels.device
    feats = net.encode(clips.images.flatten(0, 1))  # row i * L + t
    memory = sam2_net.new_memory()
    prompts = sam2_net.prompt_inputs(clips.boxes.flatten(0, 1), clips.points.flatten(0, 1) if with_point else None)
    classes = torch.arange(1, k + 1, device=device)[None, :, None, None]
    tracked = clips.present.flatten()  # object i * K + c - 1
    prompted = torch.ones_like(tracked) if absent_prompts else tracked
    masks, ious, presence = [], [], []  # per frame: (loss per object, weight per object)
    for t in range(length):
        rows = feats.take(torch.arange(n, device=device) * length + t).repeat(k)
        frame = sam2_net.track(net.sam, rows, t, memory, length, prompts if t == 0 else None, store=t < length - 1)
        target = (clips.labels[:, t, None] == classes).flatten(0, 1)
        there = target.flatten(1).any(1)
        on = tracked & there
        masks.append((best_mask_losses(frame.masks, target), on & decoded(frame.score)))
        ious.append((iou_losses(frame.masks, target, frame.ious), on))
        presence.append((presence_losses(frame.score, there), prompted if t == 0 else tracked))
    out = {name: _frames_mean(parts) for name, parts in
           (("loss_mask", masks), ("loss_iou", ious), ("loss_presence", presence))}
    out["loss_coarse"] = ce_dice_loss(net.coarse(feats, net.size), clips.labels.flatten(0, 1))
    return out


def _frames_mean(parts: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    return weighted_mean(torch.cat([v for v, _ in parts]), torch.cat([w for _, w in parts]))
