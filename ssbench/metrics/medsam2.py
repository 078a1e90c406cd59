"""The ``medsam2`` protocol: MedSAM-2's 3-D validation (MedicineToken/Medical-SAM2 18b0f5b, func_3d/function.py
``validation_sam``, func_3d/dataset/btcv.py in Test mode, func_3d/utils.py ``eval_seg``), which the SSS README's
BHSD command runs (``train_3d.py ... -prompt bbox -prompt_freq 2``). It is a different task from ssbench's: the
model is given ground-truth prompts, and the score is a 2-D Dice. Its rows live in ``evals/medsam2/`` and carry
``eval.protocol = medsam2``: never pooled with the benchmark's numbers.

Per test volume, as the code does:
  * the slices from the first to the last that hold any foreground label (btcv.py trims the volume so), of which
    the first ``int(n / 4)`` are evaluated (btcv.py Test mode: ``video_length = int(num_frame / 4)``, from frame
    0); a volume left with no slice scores 0 in the mean over volumes (validation_sam skips it but divides by
    every volume), and is counted (``skipped``);
  * the objects: the classes present on some evaluated slice (the others are not evaluated at all);
  * prompts on slices 0, prompt_freq, 2 prompt_freq, ...: each object's ground-truth box where it is on that
    slice (generate_bbox, variation 0), an all-zero mask prompt where it is not (``train_add_new_mask``);
    SAM-2 propagates forward from slice 0 through the others with memory;
  * on every evaluated slice and object: Dice = (2 |P∩G| + 1e-4) / (|P| + |G| + 1e-4) with P = mask logit > t
    (the code compares logits: its sigmoid is commented out) for t in 0.1, 0.3, 0.5, 0.7, 0.9, averaged over t;
    an object absent from a slice where nothing is predicted scores 1; the volume's score is the mean over its
    slices and objects, the protocol's number the mean over volumes.
Images and labels are compared at the model's input size (MedSAM-2 resizes both to -image_size, the labels with
nearest neighbour).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

THRESHOLDS = (0.1, 0.3, 0.5, 0.7, 0.9)  # validation_sam: threshold = (0.1, 0.3, 0.5, 0.7, 0.9)
PROMPT_FREQ = 2  # the SSS README's -prompt_freq 2 (MedSAM-2 cfg.py's default too)
DESCRIPTION = ("MedSAM-2's 3-D validation (func_3d/function.py validation_sam), as the SSS README's BHSD command runs "
               "it: ground-truth boxes every 2 slices (zero masks where the class is absent), only classes present "
               "in the evaluated slices, the first quarter of the labeled slab, 2-D Dice averaged over logit "
               "thresholds 0.1-0.9 per slice, mean over slices and classes, then volumes; not ssbench's task")


def evaluated_slices(label: np.ndarray) -> list[int]:
    """(D, H, W) label -> the slice indices MedSAM-2 evaluates: the first int(n / 4) of the labeled slab."""
    holding = np.nonzero(label.reshape(label.shape[0], -1).any(1))[0]
    if len(holding) == 0:
        return []
    first, last = int(holding[0]), int(holding[-1])
    return list(range(first, first + (last - first + 1) // 4))


def prompts_of(label: torch.Tensor, classes: list[int], prompt_freq: int) -> dict[int, dict[int, tuple | None]]:
    """(F, S, S) labels of the evaluated slices -> {slice: {class: box (x0, y0, x1, y1) or None (zero mask)}}."""
    out = {}
    for f in range(0, label.shape[0], prompt_freq):
        out[f] = {}
        for c in classes:
            m = label[f] == c
            if bool(m.any()):
                ys, xs = torch.nonzero(m, as_tuple=True)
                out[f][c] = (float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max()))
            else:
                out[f][c] = None
    return out


def slice_dice(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(F, S, S) logits and bool target -> per-slice Dice (eps 1e-4, DiceCoeff) and IoU (SMOOTH 1e-6, iou) averaged
    over THRESHOLDS (eval_seg, single class): (F,), (F,)."""
    g = target.flatten(1).float()
    dice, iou = torch.zeros(len(g)), torch.zeros(len(g))
    for t in THRESHOLDS:
        p = (logits.flatten(1) > t).float()
        inter = (p * g).sum(1)
        dice += ((2 * inter + 1e-4) / (p.sum(1) + g.sum(1) + 1e-4)).cpu()
        union = ((p + g) > 0).float().sum(1)
        iou += ((inter + 1e-6) / (union + 1e-6)).cpu()  # func_3d/utils.py iou: SMOOTH 1e-6
    return dice / len(THRESHOLDS), iou / len(THRESHOLDS)


Predictor = Callable[[torch.Tensor, dict], torch.Tensor]  # (F, 1, S, S), prompts -> (F, K, S, S) mask logits


def evaluate_volume(predict: Predictor, image: torch.Tensor, label: torch.Tensor, num_foreground: int,
                    prompt_freq: int = PROMPT_FREQ) -> tuple[dict[int, tuple[float, float]], bool]:
    """One volume at the model's input size: image (D, 1, S, S), label (D, S, S) -> ({class: (Dice, IoU) over its
    evaluated slices}, evaluated); classes absent from the evaluated slices are left out."""
    zs = evaluated_slices(label.cpu().numpy())
    if not zs:
        return {}, False
    lab = label[zs]
    classes = [c for c in range(1, num_foreground + 1) if bool((lab == c).any())]
    logits = predict(image[zs], prompts_of(lab, classes, prompt_freq))
    out = {}
    for c in classes:
        d, j = slice_dice(logits[:, c - 1], lab == c)
        out[c] = (float(d.mean()), float(j.mean()))
    return out, True
