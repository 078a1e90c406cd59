"""The unlabeled branch: weak-to-strong consistency on slices prompted by their volume's sequence.

Each unlabeled slice carries, per class, the prompt its volume's sequence gave it (``sequence.SlicePrompts``:
PCSW's slice and box carried by SAM-2's memory, refreshed every ``pcsw_refresh`` iterations) and whether the
structure is there. Classes the sequence found absent on the slice get nothing (no pseudo-label, no loss).
For the others, as UniMatch V2 (the default teacher):
  pseudo-label = the EMA teacher's decoding of the weak view under the prompt (mask > 0.5, and its object score),
  pixels / presences with confidence max(p, 1 - p) < conf_thresh ignored;
  two strong views (colour jitter, blur; optionally CutMix with the pasted pixels ignored), DFE(weak, strong) on
  the three feature levels, V2's complementary channel dropout, decoded under the same prompts;
  loss per view = BCE + Dice on the masks + BCE on the object score.
Teacher ``released``: the student's own weak decoding, thresholded at 0.5, every pixel kept.
"""

from __future__ import annotations

import torch

from ssbench.methods import perturb
from ssbench.methods.sss import sam2_net
from ssbench.methods.sss.config import SSSConfig
from ssbench.methods.sss.dfe import DFE
from ssbench.methods.sss.losses import decoded_mask_loss, presence_loss
from ssbench.methods.sss.network import SAM2Segmenter
from ssbench.methods.sss.sam2_net import Features
from ssbench.methods.strong import cutmix_box, strong_view

CHANNELS = (32, 64, 256)  # SAM-2's feature levels as its decoder reads them


def decode(net: SAM2Segmenter, feats: Features, prompts: dict, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Image mode (no memory): every image's K prompts -> mask logits (B*K, S, S), object scores (B*K,)."""
    return sam2_net.track(net.sam, feats.repeat(k), 0, sam2_net.new_memory(), 1, prompts, store=False)


def complementary_masks(n: int, device) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
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
            logits_t, scores_t = decode(teacher, teacher.encode(x_w), prompts, k)
        else:
            detached = Features([m.detach() for m in feats_w.maps], feats_w.pos)
            logits_t, scores_t = decode(student, detached, prompts, k)
        probs, there = torch.sigmoid(logits_t), scores_t > 0
        pseudo = probs > 0.5
        if teacher is not None:
            pixels = torch.maximum(probs, 1 - probs) >= cfg.conf_thresh
            q = torch.sigmoid(scores_t)
            presences = torch.maximum(q, 1 - q) >= cfg.conf_thresh
        else:
            pixels, presences = torch.ones_like(pseudo), torch.ones_like(there)
    drop = complementary_masks(n, x_w.device) if teacher is not None and cfg.complementary_dropout else None

    out: dict[str, torch.Tensor] = {}
    b, c = cfg.jitter
    for view in range(2):
        s = strong_view(x_w, brightness=b, contrast=c)
        valid_px, valid_pr = pixels, presences
        if cfg.cutmix == "ignore-pasted":  # V2 pastes from the reversed batch; here the pasted pixels are ignored
            box = torch.stack([cutmix_box(size, p=cfg.cutmix_p) for _ in range(n)]).to(x_w.device)
            s = torch.where(box[:, None], s.flip(0), s)
            valid_px = valid_px & ~box.repeat_interleave(k, 0)
            valid_pr = valid_pr & ~box.flatten(1).any(1).repeat_interleave(k)  # presence unknown once mixed
        feats_s = student.encode(s)
        if dfe is not None:
            feats_s = feats_s.with_maps(dfe(feats_w.maps, feats_s.maps))
        if drop is not None:
            feats_s = feats_s.with_maps([f * m for f, m in zip(feats_s.maps, drop[view])])
        logits_s, scores_s = decode(student, feats_s, prompts, k)
        loss = decoded_mask_loss(logits_s[slots], scores_s[slots], pseudo[slots], there[slots], valid_px[slots])
        loss = loss + presence_loss(scores_s[slots], there[slots], valid_pr[slots])
        out[f"loss_s{view + 1}"] = loss
    out["conf_ratio"] = pixels[slots].float().mean() if slots.any() else torch.zeros((), device=x_w.device)
    return out
