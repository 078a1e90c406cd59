"""A volume as a sequence of slices (MedSAM-2's 3-D mode): per class one prompt, on the slice PCSW picks from the
model's own coarse prediction, carried through the volume by SAM-2's memory, forward then backward.

* A class PCSW finds absent (fewer than ``presence_min_voxels`` coarse voxels above ``pcsw_prob`` in the volume) is
  not prompted: it gets no prediction at all; with ``empty_prompt = whole-image`` it is prompted with the whole
  image on the middle slice instead (the released code's choice, pcsw.py).
* A slice where the object-score head says absent keeps SAM-2's NO_OBJECT mask logit: it gets nothing.
* ``memory = False`` (ablation): no memory; each slice of the 3-D component PCSW found is prompted with the box of
  that component on it, in image mode; the other slices get nothing.

Classes are tracked together as a batch of objects, each prompted on its own slice; memory is per object, as in
SAM-2's video predictor (which runs one object at a time). Forward and backward are two passes from the prompted
slice; unlike SAM-2's predictor asked for both directions in one state, the backward pass does not read the forward
pass's memories (ssbench's choice: it lets the classes run as one batch). Each pass is tracked as SAM-2 tracks
forward, its frame index counting slices from the prompt: a labeled clip that runs down the volume trains exactly
what the backward pass reads (``clips.py``). A propagated slice keeps the candidate mask with the highest predicted
IoU (SAM-2's multimask tracking); ``sss.postprocess`` adds the video predictor's post-processing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ssbench.methods.sss import sam2_net
from ssbench.methods.sss.geometry import interior_points, mask_boxes
from ssbench.methods.sss.pcsw import component, largest_slice, pcsw, slice_boxes
from ssbench.methods.sss.sam2_net import NO_OBJECT, Features


@dataclass(frozen=True)
class ClassPrompt:
    slice_index: int  # the prompted slice; -1: the class is absent from the volume (never prompted)
    box: tuple[float, float, float, float]  # x0 y0 x1 y1 on that slice, input pixels
    point: tuple[float, float]  # x y
    # memory = False: slice -> box of PCSW's 3-D component on that slice
    slices: dict[int, tuple[float, float, float, float]] = field(default_factory=dict)

    @property
    def absent(self) -> bool:
        return self.slice_index < 0


def class_prompts(probs: torch.Tensor, cfg, with_slices: bool) -> list[ClassPrompt]:
    """(D, K+1, S, S) coarse probabilities -> one prompt per foreground class (PCSW, or its largest-slice step), under
    ``cfg`` (SSSConfig: pcsw, pcsw_threshold, pcsw_connectivity, pcsw_prob, presence_min_voxels, empty_prompt).
    A class whose coarse foreground (probability > pcsw_prob) has fewer than ``presence_min_voxels`` voxels in the
    volume is empty: absent (never prompted) or, with ``empty_prompt = whole-image``, prompted on the middle slice
    with the whole-image box (the released code's prompt there). PCSW's 3-D connected components run on the host
    (SciPy): the probabilities come to the host once."""
    out = []
    host = probs.float().cpu().numpy()
    d, size = host.shape[0], host.shape[-1]
    whole = (0.0, 0.0, float(size - 1), float(size - 1))
    for c in range(1, probs.shape[1]):
        p_c = host[:, c]
        if int((p_c > cfg.pcsw_prob).sum()) < cfg.presence_min_voxels:
            p_c = np.zeros_like(p_c)  # too little foreground to say the class is there
        p = (pcsw(p_c, cfg.pcsw_threshold, cfg.pcsw_connectivity, cfg.pcsw_prob) if cfg.pcsw
             else largest_slice(p_c, cfg.pcsw_prob))
        if p.source == "empty":
            if cfg.empty_prompt == "whole-image":
                mid = d // 2
                out.append(ClassPrompt(mid, whole, ((size - 1) / 2, (size - 1) / 2), {mid: whole}))
            else:
                out.append(ClassPrompt(-1, p.box, p.point))
            continue
        slices = slice_boxes(component(p_c, p, cfg.pcsw_connectivity, cfg.pcsw_prob)) if with_slices else {}
        out.append(ClassPrompt(p.slice_index, p.box, p.point, slices))
    return out


def _inputs(boxes: list, points: list | None, device) -> dict:
    b = torch.tensor(boxes, dtype=torch.float32, device=device)
    p = None if points is None else torch.tensor(points, dtype=torch.float32, device=device)
    return sam2_net.prompt_inputs(b, p)


def propagate(sam, feats: Features, prompts: list[ClassPrompt], with_point: bool,
              fill_hole_area: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt every present class on its slice and carry it forward, then backward, with memory.
    -> mask logits (D, K, S, S), object-score logits (D, K); NO_OBJECT where never decoded."""
    d, k, size = len(feats), len(prompts), sam.image_size
    device = feats.pos.device
    logits = torch.full((d, k, size, size), NO_OBJECT, device=device)
    scores = torch.full((d, k), NO_OBJECT, device=device)
    active = [c for c, p in enumerate(prompts) if not p.absent]
    if not active:
        return logits, scores
    cls = torch.tensor(active, device=device)
    first = torch.tensor([prompts[c].slice_index for c in active], device=device)
    inputs = _inputs([prompts[c].box for c in active], [prompts[c].point for c in active] if with_point else None,
                     device)
    forward = sam2_net.new_memory()
    frame = sam2_net.track(sam, feats.take(first), 0, forward, d, inputs, fill_hole_area=fill_hole_area)
    logits[first, cls], scores[first, cls] = frame.mask, frame.score
    # Each direction is its own pass from the prompted slice, all classes batched: class c is at slice
    # first[c] + step * j on step j. A class whose volume ends earlier sees its last slice again; those outputs are
    # dropped and, coming later in the pass than any real slice, never enter a real slice's memory.
    backward = {"cond_frame_outputs": dict(forward["cond_frame_outputs"]), "non_cond_frame_outputs": {}}
    firsts = [prompts[c].slice_index for c in active]  # on the host: the pass lengths need no device read
    for step, memory in ((1, forward), (-1, backward)):
        steps = max(d - 1 - f for f in firsts) if step > 0 else max(firsts)
        for j in range(1, steps + 1):
            z = first + step * j
            real = (z >= 0) & (z < d)
            frame = sam2_net.track(sam, feats.take(z.clamp(0, d - 1)), j, memory, d, fill_hole_area=fill_hole_area)
            logits[z[real], cls[real]], scores[z[real], cls[real]] = frame.mask[real], frame.score[real]
    return logits, scores


def per_slice(sam, feats: Features, prompts: list[ClassPrompt], with_point: bool,
              fill_hole_area: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """memory = False: each slice of each class's component decoded in image mode under its own box."""
    d, k, size = len(feats), len(prompts), sam.image_size
    device = feats.pos.device
    logits = torch.full((d, k, size, size), NO_OBJECT, device=device)
    scores = torch.full((d, k), NO_OBJECT, device=device)
    pairs = [(z, c) for c, p in enumerate(prompts) if not p.absent for z in sorted(p.slices)]
    if not pairs:
        return logits, scores
    boxes = [prompts[c].slices[z] for z, c in pairs]
    points = [((b[0] + b[2]) / 2, (b[1] + b[3]) / 2) for b in boxes] if with_point else None
    zs = torch.tensor([z for z, _ in pairs], device=device)
    cs = torch.tensor([c for _, c in pairs], device=device)
    frame = sam2_net.track(sam, feats.take(zs), 0, sam2_net.new_memory(), 1, _inputs(boxes, points, device),
                           store=False, fill_hole_area=fill_hole_area)
    logits[zs, cs], scores[zs, cs] = frame.mask, frame.score
    return logits, scores


@torch.no_grad()
def segment_volume(sam, feats: Features, prompts: list[ClassPrompt], memory: bool, with_point: bool,
                   fill_hole_area: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Every class of one volume -> mask logits (D, K, S, S) and object-score logits (D, K)."""
    return (propagate if memory else per_slice)(sam, feats, prompts, with_point, fill_hole_area)


def class_scores(logits: torch.Tensor) -> torch.Tensor:
    """(D, K, S, S) mask logits -> (D, K+1, S, S) class scores: background 0, so that each pixel takes the class with
    the largest mask logit above 0 (sigmoid > 0.5), background elsewhere."""
    return torch.cat([torch.zeros_like(logits[:, :1]), logits], 1)


@dataclass
class SlicePrompts:
    """What one volume's sequence gives its unlabeled slices: per slice and class a box, a point and whether the
    structure is there (decoded with a positive object score and a non-empty mask). Kept on the run's device."""

    boxes: torch.Tensor  # (D, K, 4)
    points: torch.Tensor  # (D, K, 2)
    present: torch.Tensor  # (D, K) bool

    def to(self, device) -> "SlicePrompts":
        return SlicePrompts(self.boxes.to(device), self.points.to(device), self.present.to(device))


def slice_prompts(logits: torch.Tensor, scores: torch.Tensor) -> SlicePrompts:
    """The boxes and points of the decoded masks, on their device (no host synchronisation); zeros where absent."""
    masks = (logits > 0) & (scores > 0)[..., None, None]
    boxes, present = mask_boxes(masks)
    points = torch.stack([interior_points(masks[:, c]) for c in range(masks.shape[1])], 1)  # a class at a time
    keep = present[..., None]
    return SlicePrompts(torch.where(keep, boxes, 0.0), torch.where(keep, points, 0.0), present)
