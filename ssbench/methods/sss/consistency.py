"""The unlabeled branch: weak-to-strong consistency on slices prompted by their volume's sequence.

Each unlabeled slice carries, per class, the prompt its volume's sequence gave it (``sequence.SlicePrompts``:
PCSW's slice and box carried by SAM-2's memory, refreshed every ``pcsw_refresh`` iterations) and whether the
structure is there. Classes the sequence found absent on the slice get nothing (no pseudo-label, no loss).
For the others, as UniMatch V2 (the default teacher):
  pseudo-label = the EMA teacher's decoding of the weak view under the prompt (mask > 0.5, and its object score),
  pixels / presences with confidence max(p, 1 - p) < conf_thresh ignored;
  two strong views (colour jitter, blur; optionally CutMix with the pasted pixels ignored), DFE(weak, strong) on
  the three feature levels, V2's complementary channel dropout, decoded under the same prompts;
  loss per view = BCE on the confident pixels normalised by all non-ignored pixels (V2's normalisation), + Dice
  only where the confident target has foreground (never against an empty target, as SAM-2), + BCE on the object
  score (``losses.unlabeled_mask_losses``).
Teacher ``released``: the student's own weak decoding, thresholded at 0.5, every pixel kept.

The slices are decoded one by one in image mode (SAM-2 without memory): the consistency signal reaches the
sequence predictions of evaluation only through the weights the two share (image encoder, prompt encoder, mask
decoder), never through memory attention or the memory encoder, which only the labeled clips train.

What the branch did in a step is returned beside the losses (and logged): per class c, ``u_slots_c<c>`` prompted
(slice, class) slots, ``u_valid_c<c>`` the fraction of them whose presence is confident (where the presence loss
acts), ``u_fg_c<c>`` the fraction of their pixels that are confident foreground (the foreground the mask loss
teaches); ``conf_ratio`` the fraction of the pseudo-labels' foreground pixels that are confident (0 when there is
none: it cannot read high when no foreground pixel is confident); ``u_dice_s1``/``u_dice_s2`` the fraction of the
mask-supervised objects of each strong view whose Dice term acts (0: the mask loss is BCE only, "inactive", never a
saturated Dice near 1).
"""

from __future__ import annotations

import torch

from ssbench.methods.blocks import perturb
from ssbench.methods.sss import sam2_net
from ssbench.methods.sss.hparams import SSSConfig
from ssbench.methods.sss.dfe import DFE
from ssbench.methods.sss.losses import decoded, presence_losses, unlabeled_mask_losses, weighted_mean
from ssbench.methods.sss.network import SAM2Segmenter
from ssbench.methods.sss.sam2_net import Features
from ssbench.methods.blocks.strong import cutmix_boxes, strong_view

CHANNELS = (32, 64, 256)  # SAM-2's feature levels as its decoder reads them


def decode(net: SAM2Segmenter, feats: Features, prompts: dict, k: int) -> sam2_net.Frame:
    """Image mode (no memory): every image's K prompts -> one frame of B*K objects."""
    return sam2_net.track(net.sam, feats.repeat(k), 0, sam2_net.new_memory(), 1, prompts, store=False)


def complementary_patch_masks(n: int, device) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """UniMatch V2's complementary channel dropout for the two strong views of n images (``perturb``): V2's four
    levels share one width and one mask; SAM-2's three levels differ in width, so each level draws its own mask,
    for the same undropped images. (n, c, 1, 1) masks per level."""
    first, second = perturb.complementary_masks(n, CHANNELS, device)
    return [m[:, :, None, None] for m in first], [m[:, :, None, None] for m in second]


def unlabeled_losses(student: SAM2Segmenter, teacher: SAM2Segmenter | None, dfe: DFE | None, x_w: torch.Tensor,
                     boxes: torch.Tensor, points: torch.Tensor, present: torch.Tensor,
                     cfg: SSSConfig) -> dict[str, torch.Tensor]:
    """x_w (N, 1, S, S) weak views; boxes (N, K, 4), points (N, K, 2), present (N, K) their sequence's prompts."""
    n, k = present.shape
    size = x_w.shape[-1]
    prompts = sam2_net.prompt_inputs(boxes.flatten(0, 1), points.flatten(0, 1) if cfg.point_prompt else None)
    slots = present.flatten()
    feats_w = student.encode(x_w)
    with torch.no_grad():
        if teacher is not None:
            weak = decode(teacher, teacher.encode(x_w), prompts, k)
        else:
            weak = decode(student, Features([m.detach() for m in feats_w.maps], feats_w.pos), prompts, k)
        probs, there = torch.sigmoid(weak.mask), weak.score > 0
        pseudo = probs > 0.5
        if teacher is not None:
            pixels = torch.maximum(probs, 1 - probs) >= cfg.conf_thresh
            q = torch.sigmoid(weak.score)
            presences = torch.maximum(q, 1 - q) >= cfg.conf_thresh
        else:
            pixels, presences = torch.ones_like(pseudo), torch.ones_like(there)
    drop = complementary_patch_masks(n, x_w.device) if teacher is not None and cfg.complementary_dropout else None

    out: dict[str, torch.Tensor] = {}
    b, c = cfg.jitter
    for view in range(2):
        s = strong_view(x_w, brightness=b, contrast=c)
        valid_px, valid_pr, counted = pixels, presences, torch.ones_like(pixels)
        if cfg.cutmix == "ignore-pasted":  # V2 pastes from the reversed batch; here the pasted pixels are ignored
            box = cutmix_boxes(n, size, p=cfg.cutmix_p, device=x_w.device)
            s = torch.where(box[:, None], s.flip(0), s)
            counted = ~box.repeat_interleave(k, 0)
            valid_px = valid_px & counted
            valid_pr = valid_pr & ~box.flatten(1).any(1).repeat_interleave(k)  # presence unknown once mixed
        feats_s = student.encode(s)
        if dfe is not None:
            feats_s = feats_s.with_maps(dfe(feats_w.maps, feats_s.maps))
        if drop is not None:
            feats_s = feats_s.with_maps([f * m for f, m in zip(feats_s.maps, drop[view])])
        strong = decode(student, feats_s, prompts, k)
        masks, dice_on = unlabeled_mask_losses(strong.masks, pseudo, valid_px, counted)
        taught = slots & there & decoded(strong.score)
        loss = weighted_mean(masks.min(1).values, taught)
        loss = loss + weighted_mean(presence_losses(strong.score, there), slots & valid_pr)
        out[f"loss_s{view + 1}"] = loss
        # where the mask loss acts, how many of those objects have a Dice term: 0 says "inactive", not "saturated"
        out[f"u_dice_s{view + 1}"] = weighted_mean(dice_on.float(), taught)
    out.update(activity(pseudo, pixels, there, presences, slots, n, k))
    return out


def activity(pseudo: torch.Tensor, pixels: torch.Tensor, there: torch.Tensor, presences: torch.Tensor,
             slots: torch.Tensor, n: int, k: int) -> dict[str, torch.Tensor]:
    """What the unlabeled branch taught in this step (module docstring), as device tensors. Inputs are per object
    (image i * K + class - 1): pseudo-label and confident pixels (N*K, S, S), teacher presence and confident
    presence (N*K,), prompted slots (N*K,)."""
    fg = pseudo & (slots & there)[:, None, None]  # the pseudo-labels' foreground
    confident_fg = fg & pixels
    slot_count = slots.float().view(n, k).sum(0)  # (K,)
    valid = (slots & presences).float().view(n, k).sum(0) / slot_count.clamp_min(1)
    fg_share = confident_fg.flatten(1).float().sum(1).view(n, k).sum(0) / (slot_count * pseudo[0].numel()).clamp_min(1)
    out = {"conf_ratio": confident_fg.float().sum() / fg.float().sum().clamp_min(1)}
    for c in range(k):
        out[f"u_slots_c{c + 1}"], out[f"u_valid_c{c + 1}"], out[f"u_fg_c{c + 1}"] = slot_count[c], valid[c], fg_share[c]
    return out
