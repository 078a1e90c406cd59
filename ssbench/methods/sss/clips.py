"""Labeled training on short clips of consecutive slices with SAM-2's memory (MedSAM-2's 3-D recipe), teaching
absence as SAM-2's own training does.

A clip is ``clip_length`` consecutive slices of a labeled volume starting at the drawn slice (MedSAM-2: 2 slices,
a box on the first: cfg.py:12,23, func_3d/function.py:86), resized from the native slices to the input size and
weakly augmented with one crop/flip for the whole clip. Every foreground class is an object of the clip: a class
present on the first slice is prompted with its ground-truth box (and point); a class absent there gets a decoy box
(its box on the nearest slice of the volume that holds it, else a random box) with presence target 0. The first
slice is decoded from its prompts, the others by SAM-2's memory. Losses over all slices and classes: BCE + Dice on
the masks that are there, BCE on the object score (SAM-2's training/loss_fns.py), and the coarse head's CE + Dice.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ssbench.methods.losses import ce_dice_loss
from ssbench.methods.sss import sam2_net
from ssbench.methods.sss.geometry import Crop, interior_point, mask_box, random_box
from ssbench.methods.sss.losses import decoded_mask_loss, presence_loss
from ssbench.methods.sss.network import SAM2Segmenter
from ssbench.resize import resize_image, resize_label


@dataclass
class LabeledVolume:
    image: np.ndarray  # (D, H, W) float32, native
    label: np.ndarray  # (D, H, W) uint8, native
    holding: list[np.ndarray]  # per foreground class: the slices that hold it

    @classmethod
    def of(cls, image: np.ndarray, label: np.ndarray, num_foreground: int) -> "LabeledVolume":
        holding = [np.nonzero((label == c).any(axis=(1, 2)))[0] for c in range(1, num_foreground + 1)]
        return cls(image, label, holding)


@dataclass
class ClipBatch:
    images: torch.Tensor  # (N, L, 1, S, S)
    labels: torch.Tensor  # (N, L, S, S) int64
    boxes: torch.Tensor  # (N, K, 4): every class's prompt on the first slice
    points: torch.Tensor  # (N, K, 2)


def clip_length(volumes: list[LabeledVolume], wanted: int) -> int:
    return max(1, min([wanted] + [v.image.shape[0] for v in volumes]))


def draw_clip(volume: LabeledVolume, first: int, length: int, size: int, resize: str,
              crop_scale: tuple[float, float], decoys: bool):
    """The clip of ``length`` slices from ``first`` (moved back to fit the volume), at ``size``, cropped and flipped
    as one; with its first slice's prompts. -> images (L, 1, S, S), labels (L, S, S), boxes (K, 4), points (K, 2)."""
    d = volume.image.shape[0]
    start = max(0, min(first, d - length))
    zs = range(start, start + length)
    images = torch.from_numpy(np.stack([resize_image(volume.image[z], size, resize) for z in zs]).astype(np.float32))
    labels = torch.from_numpy(np.stack([resize_label(volume.label[z], size, resize) for z in zs]).astype(np.float32))
    crop = Crop.random(size, crop_scale)
    images = crop.image(images, size)
    labels = crop.image(labels, size, mode="nearest").round().long()
    k = len(volume.holding)
    boxes, points = torch.zeros(k, 4), torch.zeros(k, 2)
    for c in range(1, k + 1):
        mask = labels[0] == c
        if mask.any():
            boxes[c - 1], points[c - 1] = mask_box(mask), interior_point(mask)
            continue
        box = _decoy(volume, c, start, size, resize, crop) if decoys else None
        box = random_box(size) if box is None else box
        boxes[c - 1] = box
        points[c - 1] = torch.stack([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])
    return images[:, None], labels, boxes, points


def _decoy(volume: LabeledVolume, c: int, z: int, size: int, resize: str, crop: Crop) -> torch.Tensor | None:
    """The box of class c on the slice nearest to z that holds it, through the clip's crop (None if none)."""
    holding = volume.holding[c - 1]
    if len(holding) == 0:
        return None
    near = int(holding[np.argmin(np.abs(holding - z))])
    mask = torch.from_numpy(resize_label(volume.label[near], size, resize) == c)
    box = mask_box(mask)
    return None if box is None else crop.box(box, size)


def clip_losses(net: SAM2Segmenter, clips: ClipBatch, with_point: bool, train_coarse: bool) -> dict[str, torch.Tensor]:
    """Track every class of every clip through its slices; the losses above."""
    n, length = clips.images.shape[:2]
    k = clips.boxes.shape[1]
    feats = net.encode(clips.images.flatten(0, 1))  # row i * L + t
    memory = sam2_net.new_memory()
    prompts = sam2_net.prompt_inputs(clips.boxes.flatten(0, 1), clips.points.flatten(0, 1) if with_point else None)
    classes = torch.arange(1, k + 1, device=clips.labels.device)[None, :, None, None]
    logits, scores, targets = [], [], []
    for t in range(length):
        rows = feats.take(torch.arange(n, device=clips.labels.device) * length + t).repeat(k)  # object i * K + c - 1
        m, o = sam2_net.track(net.sam, rows, t, memory, length, prompts if t == 0 else None, store=t < length - 1)
        logits.append(m)
        scores.append(o)
        targets.append((clips.labels[:, t, None] == classes).flatten(0, 1))
    logits, scores, targets = torch.cat(logits), torch.cat(scores), torch.cat(targets)
    present = targets.flatten(1).any(1)
    out = {"loss_mask": decoded_mask_loss(logits, scores, targets, present), "loss_presence": presence_loss(scores, present)}
    if train_coarse:
        out["loss_coarse"] = ce_dice_loss(net.coarse(feats, net.size), clips.labels.flatten(0, 1))
    return out
