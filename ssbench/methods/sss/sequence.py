"""A volume as a sequence of slices (MedSAM-2's 3-D mode): per class one prompt, on the slice PCSW picks from the
model's own coarse prediction, carried through the volume by SAM-2's memory, forward then backward.

* A class PCSW finds absent (no coarse foreground in the volume) is not prompted: it gets no prediction at all.
* A slice where the object-score head says absent keeps SAM-2's NO_OBJECT mask logit: it gets nothing.
* ``memory = False`` (ablation): no memory; each slice of the 3-D component PCSW found is prompted with the box of
  that component on it, in image mode; the other slices get nothing.

Classes are tracked together as a batch of objects, each prompted on its own slice; memory is per object, as in
SAM-2's video predictor (which runs one object at a time). Forward and backward are two passes from the prompted
slice; unlike SAM-2's predictor asked for both directions in one state, the backward pass does not read the forward
pass's memories (ssbench's choice: it lets the classes run as one batch).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ssbench.methods.sss import sam2_net
from ssbench.methods.sss.geometry import interior_point, mask_box
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


def class_prompts(probs: torch.Tensor, use_pcsw: bool, threshold: float, connectivity: int,
                  with_slices: bool) -> list[ClassPrompt]:
    """(D, K+1, S, S) coarse probabilities -> one prompt per foreground class (PCSW, or its largest-slice step)."""
    out = []
    for c in range(1, probs.shape[1]):
        p_c = probs[:, c].float().cpu().numpy()
        p = pcsw(p_c, threshold, connectivity) if use_pcsw else largest_slice(p_c)
        if p.source == "empty":
            out.append(ClassPrompt(-1, p.box, p.point))
            continue
        slices = slice_boxes(component(p_c, p, connectivity)) if with_slices else {}
        out.append(ClassPrompt(p.slice_index, p.box, p.point, slices))
    return out


def _inputs(boxes: list, points: list | None, device) -> dict:
    b = torch.tensor(boxes, dtype=torch.float32, device=device)
    p = None if points is None else torch.tensor(points, dtype=torch.float32, device=device)
    return sam2_net.prompt_inputs(b, p)


def propagate(sam, feats: Features, prompts: list[ClassPrompt], with_point: bool) -> tuple[torch.Tensor, torch.Tensor]:
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
    m, o = sam2_net.track(sam, feats.take(first), 0, forward, d, inputs)
    logits[first, cls], scores[first, cls] = m, o
    # Each direction is its own pass from the prompted slice, all classes batched: class c is at slice
    # first[c] + step * j on step j. A class whose volume ends earlier sees its last slice again; those outputs are
    # dropped and, coming later in the pass than any real slice, never enter a real slice's memory.
    backward = {"cond_frame_outputs": dict(forward["cond_frame_outputs"]), "non_cond_frame_outputs": {}}
    for step, memory in ((1, forward), (-1, backward)):
        steps = int((d - 1 - first).max() if step > 0 else first.max())
        for j in range(1, steps + 1):
            z = first + step * j
            real = (z >= 0) & (z < d)
            m, o = sam2_net.track(sam, feats.take(z.clamp(0, d - 1)), j, memory, d)
            logits[z[real], cls[real]], scores[z[real], cls[real]] = m[real], o[real]
    return logits, scores


def per_slice(sam, feats: Features, prompts: list[ClassPrompt], with_point: bool) -> tuple[torch.Tensor, torch.Tensor]:
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
    m, o = sam2_net.track(sam, feats.take(zs), 0, sam2_net.new_memory(), 1, _inputs(boxes, points, device),
                          store=False)
    logits[zs, cs], scores[zs, cs] = m, o
    return logits, scores


@torch.no_grad()
def segment_volume(sam, feats: Features, prompts: list[ClassPrompt], memory: bool,
                   with_point: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Every class of one volume -> mask logits (D, K, S, S) and object-score logits (D, K)."""
    return (propagate if memory else per_slice)(sam, feats, prompts, with_point)


def class_scores(logits: torch.Tensor) -> torch.Tensor:
    """(D, K, S, S) mask logits -> (D, K+1, S, S) class scores: background 0, so that each pixel takes the class with
    the largest mask logit above 0 (sigmoid > 0.5), background elsewhere."""
    return torch.cat([torch.zeros_like(logits[:, :1]), logits], 1)


@dataclass
class SlicePrompts:
    """What one volume's sequence gives its unlabeled slices: per slice and class a box, a point and whether the
    structure is there (decoded with a positive object score and a non-empty mask)."""

    boxes: torch.Tensor  # (D, K, 4)
    points: torch.Tensor  # (D, K, 2)
    present: torch.Tensor  # (D, K) bool


def slice_prompts(logits: torch.Tensor, scores: torch.Tensor) -> SlicePrompts:
    d, k, size, _ = logits.shape
    masks = (logits > 0) & (scores > 0)[..., None, None]
    present = masks.flatten(2).any(-1)
    boxes = torch.zeros(d, k, 4)
    points = torch.zeros(d, k, 2)
    for z, c in present.nonzero().tolist():
        boxes[z, c] = mask_box(masks[z, c]).cpu()
        points[z, c] = interior_point(masks[z, c]).cpu()
    return SlicePrompts(boxes, points, present.cpu())

