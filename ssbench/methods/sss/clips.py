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

Which objects are decoded is chosen on the host from the volume's slice lists (``choose_objects``): the classes on
a clip's first slice, at most ``max_objects`` (SAM-2's max_num_objects), tracked through the clip; the decoys on
the first slice only; a class cropped away from the first slice stays in the batch weighted 0. Clips start on
slices that hold a class (``clip_start``), and the prompt box frames the class's largest 3-D component crossing the
slice (``train_box``), with SAM-2's box noise. Nothing in the step waits for the device.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ssbench.methods.blocks.losses import ce_dice_loss
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
    # train_box = component: the 3-D connected components of every class (ids unique over classes, 0 background)
    # and, per class and slice, the id of the largest component that crosses the slice (0 where none), on the
    # run's device: the box PCSW gives at test time frames one component, and so does the training box
    components: torch.Tensor | None = None  # (D, H, W) int32
    main_component: torch.Tensor | None = None  # (K, D) int32

    @classmethod
    def of(cls, image: np.ndarray, label: np.ndarray, num_foreground: int, device=None,
           connectivity: int | None = None) -> "LabeledVolume":
        """``connectivity`` (6 or 26): also label the components (train_box = component); None: not."""
        holding = [np.nonzero((label == c).any(axis=(1, 2)))[0] for c in range(1, num_foreground + 1)]
        to = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(device)  # noqa: E731
        comps = main = None
        if connectivity is not None:
            comps, main = _components(label, num_foreground, connectivity)
            comps, main = to(comps), to(main)
        return cls(to(image.astype(np.float32, copy=False)), to(label.astype(np.uint8, copy=False)), holding,
                   comps, main)

    @property
    def any_class(self) -> np.ndarray:
        """The slices that hold some foreground class (sorted, host)."""
        return np.unique(np.concatenate([np.asarray(h, np.int64) for h in self.holding] + [np.zeros(0, np.int64)]))

    def on_slice(self, z: int) -> list[int]:
        """The class indices (0-based) on slice z (host)."""
        return [c for c, h in enumerate(self.holding) if z in h]

    @property
    def depth(self) -> int:
        return self.image.shape[0]


def _components(label: np.ndarray, k: int, connectivity: int) -> tuple[np.ndarray, np.ndarray]:
    """Host, once per volume: the 3-D components of each class (SciPy, PCSW's connectivity) and the largest one
    crossing each slice (see LabeledVolume)."""
    from scipy import ndimage

    structure = ndimage.generate_binary_structure(3, 1 if connectivity == 6 else 3)
    comps = np.zeros(label.shape, np.int32)
    main = np.zeros((k, label.shape[0]), np.int32)
    offset = 0
    for c in range(1, k + 1):
        ids, n = ndimage.label(label == c, structure=structure)
        if n == 0:
            continue
        sizes = np.bincount(ids.ravel())
        for z in range(label.shape[0]):
            there = np.unique(ids[z])
            there = there[there > 0]
            if len(there):
                main[c - 1, z] = offset + int(there[np.argmax(sizes[there])])
        comps[ids > 0] = ids[ids > 0] + offset
        offset += n
    return comps, main


def box_noise(boxes: torch.Tensor, size: int, noise: float, bound: float) -> torch.Tensor:
    """SAM-2's training box noise (sam2/modeling/sam2_utils.py sample_box_points): each corner coordinate moved
    uniformly by at most min(noise x the box side, bound) pixels, clamped to the image; drawn on the device."""
    if noise <= 0:
        return boxes
    wh = boxes[..., 2:] - boxes[..., :2]
    most = torch.clamp(wh * noise, max=bound).repeat(*([1] * (boxes.dim() - 1)), 2)  # (dx, dy, dx, dy)
    moved = boxes + (2 * torch.rand(boxes.shape, device=boxes.device) - 1) * most
    return moved.clamp(0, size - 1)


@dataclass
class ClipBatch:
    images: torch.Tensor  # (N, L, 1, S, S)
    labels: torch.Tensor  # (N, L, S, S) int64
    boxes: torch.Tensor  # (N, K, 4): every class's prompt on the first slice
    points: torch.Tensor  # (N, K, 2)
    present: torch.Tensor  # (N, K) bool: the class is on the first slice (tracked through the clip)
    # Chosen on the host (``choose_objects``): the (clip, class index) pairs decoded through the clip, and the decoys
    # decoded on its first slice only. None: every pair is decoded on every slice, the untracked weighted 0.
    objects: list[tuple[int, int]] | None = None
    decoys: list[tuple[int, int]] | None = None


def choose_objects(on_first: list[list[int]], k: int, max_objects: int, absent_prompts: bool
                   ) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Per clip the class indices on its first slice (host: from the volume's ``holding``) -> the objects tracked
    (at most ``max_objects`` per clip, drawn with the host RNG when more are there, as SAM-2's sampler keeps at
    most max_num_objects) and the decoys (every other class, with ``absent_prompts``). An absent class is never
    decoded past the first slice."""
    objects, decoys = [], []
    for i, there in enumerate(on_first):
        kept = list(there)
        if max_objects and len(kept) > max_objects:  # drawn only then: a dataset within the cap keeps its RNG
            kept = sorted(kept[j] for j in torch.randperm(len(kept))[:max_objects].tolist())
        objects += [(i, c) for c in kept]
        decoys += [(i, c) for c in range(k) if c not in there] if absent_prompts else []
    return objects, decoys


def clip_start(volume: "LabeledVolume", drawn: int, rule: str) -> int:
    """The first slice of a clip: the drawn slice, or (rule ``holding``) where it holds no class, a slice drawn
    uniformly among those that hold one (so starts are uniform over the holding slices; a volume whose every slice
    holds a class, ACDC's, keeps the drawn slice and its RNG). MedSAM-2 skips clips without objects."""
    holding = volume.any_class
    if rule == "any" or len(holding) == 0 or drawn in holding:
        return drawn
    return int(holding[int(torch.randint(len(holding), ()))])


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
              crop_scale: tuple[float, float], backward: bool = False, geometry=None):
    """The clip of ``length`` slices from ``first`` at ``size``, cropped and flipped as one; with its first
    slice's prompts. -> images (L, 1, S, S), labels (L, S, S), boxes (K, 4), points (K, 2), present (K,).
    ``geometry``: the SSSConfig whose crop_min, flip_p, decoy_side, box_noise, box_noise_bound apply (None: their
    defaults, no box noise); with ``volume.components`` the prompt box frames the class's largest 3-D component
    crossing the first slice, as PCSW's box at test time does (train_box = component)."""
    crop_min, flip_p, decoy_side, noise, bound = ((geometry.crop_min, geometry.flip_p, geometry.decoy_side,
                                                   geometry.box_noise, geometry.box_noise_bound)
                                                  if geometry is not None else (8, 0.5, (0.1, 0.5), 0.0, 0.0))
    zs = clip_slices(volume.depth, first, length, backward)
    k = len(volume.holding)
    # each class's decoy slice: the slice nearest to the prompted one that holds it (any slice when none does: its
    # box is then empty and a random box replaces it)
    near = [int(h[np.argmin(np.abs(h - zs[0]))]) if len(h) else zs[0] for h in volume.holding]
    images = torch.stack([resize_image_torch(volume.image[z], size, resize) for z in zs])
    labels = torch.stack([resize_label_torch(volume.label[z], size, resize) for z in zs + near])
    crop = Crop.random(size, crop_scale, flip_p, crop_min)
    images = crop.image(images, size)
    labels = crop.label(labels, size)
    classes = torch.arange(1, k + 1, device=labels.device)[:, None, None]
    on_first = labels[0][None] == classes  # (K, S, S)
    framed = on_first
    if volume.components is not None:  # the largest 3-D component crossing the slice, as PCSW frames one
        ids = crop.label(resize_label_torch(volume.components[zs[0]], size, resize)[None], size)[0]
        main = volume.main_component[:, zs[0]].long()[:, None, None]  # (K, 1, 1)
        framed = on_first & (ids[None] == main)
        framed = torch.where(framed.flatten(1).any(1)[:, None, None], framed, on_first)  # cropped away: all
    box, present = mask_boxes(framed)
    present = present & on_first.flatten(1).any(1)
    box = box_noise(box, size, noise, bound)
    decoy, found = mask_boxes(labels[length:] == classes)
    decoy = torch.where(found[:, None], decoy, random_boxes((k,), size, labels.device, decoy_side))
    boxes = torch.where(present[:, None], box, decoy)
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    points = torch.where(present[:, None], interior_points(framed), centres)
    return images[:, None], labels[:length], boxes, points, present


def clip_losses(net: SAM2Segmenter, clips: ClipBatch, with_point: bool, absent_prompts: bool) -> dict[str, torch.Tensor]:
    """Track every chosen object of every clip through its slices, decode the decoys on the first; the losses
    above."""
    n, length = clips.images.shape[:2]
    k = clips.boxes.shape[1]
    device = clips.labels.device
    feats = net.encode(clips.images.flatten(0, 1))  # row i * L + t
    if clips.objects is None:  # every pair an object, the absent ones prompted with their decoy on the first slice
        objects, decoys = [(i, c) for i in range(n) for c in range(k)], []
    else:
        objects, decoys = clips.objects, clips.decoys or []
    masks, ious, presence = [], [], []  # per frame: (loss per object, weight per object)
    if objects:
        tracked = _pick(clips.present, objects)
        prompted = torch.ones_like(tracked) if absent_prompts and clips.objects is None else tracked
        prompts = _prompts(clips, objects, with_point)
        memory = sam2_net.new_memory()
        for t in range(length):
            rows = _rows(feats, objects, length, t)
            frame = sam2_net.track(net.sam, rows, t, memory, length, prompts if t == 0 else None,
                                   store=t < length - 1)
            target = _targets(clips.labels, objects, t)
            there = target.flatten(1).any(1)
            on = tracked & there
            masks.append((best_mask_losses(frame.masks, target), on & decoded(frame.score)))
            ious.append((iou_losses(frame.masks, target, frame.ious), on))
            presence.append((presence_losses(frame.score, there), prompted if t == 0 else tracked))
    if decoys:  # "not here" under a prompt, on the first slice only (image mode: nothing enters memory)
        frame = sam2_net.track(net.sam, _rows(feats, decoys, length, 0), 0, sam2_net.new_memory(), 1,
                               _prompts(clips, decoys, with_point), store=False)
        there = _targets(clips.labels, decoys, 0).flatten(1).any(1)
        presence.append((presence_losses(frame.score, there), torch.ones_like(there)))
    zero = feats.maps[0].sum() * 0
    out = {name: _frames_mean(parts) if parts else zero for name, parts in
           (("loss_mask", masks), ("loss_iou", ious), ("loss_presence", presence))}
    out["loss_coarse"] = ce_dice_loss(net.coarse(feats, net.size), clips.labels.flatten(0, 1))
    return out


def _pick(x: torch.Tensor, pairs: list[tuple[int, int]]) -> torch.Tensor:
    """x (N, K, ...) -> the rows of the (clip, class) pairs, stacked (views: no index tensor, no host copy)."""
    return torch.stack([x[i, c] for i, c in pairs])


def _rows(feats: sam2_net.Features, pairs: list[tuple[int, int]], length: int, t: int) -> sam2_net.Features:
    """The features of slice t of each pair's clip, one row per pair (slices and cat: deterministic backward)."""
    rows = [slice(i * length + t, i * length + t + 1) for i, _ in pairs]
    return sam2_net.Features([torch.cat([m[r] for r in rows]) for m in feats.maps], torch.cat([feats.pos[r] for r in rows]))


def _targets(labels: torch.Tensor, pairs: list[tuple[int, int]], t: int) -> torch.Tensor:
    return torch.stack([labels[i, t] == c + 1 for i, c in pairs])


def _prompts(clips: ClipBatch, pairs: list[tuple[int, int]], with_point: bool) -> dict:
    return sam2_net.prompt_inputs(_pick(clips.boxes, pairs), _pick(clips.points, pairs) if with_point else None)


def _frames_mean(parts: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    return weighted_mean(torch.cat([v for v, _ in parts]), torch.cat([w for _, w in parts]))
