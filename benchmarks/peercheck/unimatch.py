"""Peer check against LiheYoung/UniMatch (its medical branch, ``more-scenarios/medical``)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats

from .common import Item, box_stats, check_unet, compare_pairs, load_file, loss_inputs, max_diff, numeric


def check_feature_perturbation(their_cls) -> Item:
    from torch import nn

    from ssbench.methods.unet import UNet
    from ssbench.methods.unimatch import decode_with_fp

    torch.manual_seed(0)
    theirs, ours = their_cls(1, 4), UNet(1, 4)
    theirs.load_state_dict(dict(zip(theirs.state_dict(), ours.state_dict().values())))
    theirs.train(), ours.train()
    x = torch.rand(4, 1, 128, 128, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.manual_seed(4)
        a, a_fp = theirs(x, need_fp=True)
        torch.manual_seed(4)
        b, b_fp = decode_with_fp(ours, x, nn.Dropout2d(0.5))
    return numeric("UniMatch feature perturbation: clean and Dropout2d(0.5) outputs, same seed",
                   max(max_diff(a, b), max_diff(a_fp, b_fp)))


def check_cutmix(transform, draws: int, size: int = 256) -> list[Item]:
    import random

    from ssbench.methods.strong import cutmix_box

    random.seed(0)
    np.random.seed(0)
    theirs = box_stats(transform.obtain_cutmix_box(size, p=0.5).numpy() for _ in range(draws))
    g = torch.Generator().manual_seed(0)
    ours = box_stats(cutmix_box(size, g, p=0.5).numpy() for _ in range(draws))
    items = []
    p_t, p_o = theirs["drawn"].mean(), ours["drawn"].mean()
    se = math.sqrt(0.25 / draws * 2)
    items.append(Item("CutMix: fraction of draws with a box", f"{abs(p_t - p_o):.3g}", abs(p_t - p_o) < 4 * se,
                      f"{p_o:.4f} vs {p_t:.4f} (4 s.e. = {4 * se:.3g})"))
    for key in ("area", "aspect h/w", "x0", "y0"):
        ks = stats.ks_2samp(ours[key], theirs[key])
        items.append(Item(f"CutMix: {key} distribution (two-sample KS)", f"D={ks.statistic:.3g}", ks.pvalue > 1e-3,
                          f"p = {ks.pvalue:.3g}; medians {np.median(ours[key]):.4f} vs {np.median(theirs[key]):.4f}"))
    return items



def check_losses(utils) -> list[Item]:
    from ssbench.methods.losses import ce_dice_loss, dice_loss

    logits, target, ignore = loss_inputs()
    probs = logits.softmax(1)
    theirs = utils.DiceLoss(4)(probs, target.unsqueeze(1).float(), ignore=ignore.float())
    items = [numeric("UniMatch Dice loss with an ignore mask", max_diff(theirs, dice_loss(probs, target, ignore)))]
    l1, l2 = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    theirs = (F.cross_entropy(l1, target) + utils.DiceLoss(4)(l1.softmax(1), target.unsqueeze(1).float())) / 2
    ours = ce_dice_loss(l2, target)
    theirs.backward(), ours.backward()
    items.append(numeric("UniMatch (CE + Dice)/2: value and gradient", max(max_diff(theirs, ours),
                                                                        max_diff(l1.grad, l2.grad))))
    return items


def check_recipe(code: Path) -> Item:
    """configs/acdc.yaml against UniMatch's published recipe; the epoch loop and the crop read from the scripts."""
    import yaml

    from ssbench.engine.config import DataConfig, TrainConfig
    from ssbench.methods.unimatch import UniMatch, UniMatchConfig

    cfg = yaml.safe_load((code / "configs" / "acdc.yaml").read_text())
    ours, umc = {**vars(TrainConfig()), **UniMatch.recipe_overrides("published")}, UniMatchConfig()
    data = {**vars(DataConfig()), **UniMatch.data_overrides("published")}
    script = (code / "unimatch.py").read_text()
    schedule = "epochs" if "for epoch in range(epoch + 1, cfg['epochs'])" in script else "other"
    return compare_pairs("UniMatch configs/acdc.yaml and unimatch.py (schedule, epochs, batch, lr, confidence, crop)", [
        ("schedule (the loop over cfg['epochs'])", ours["schedule"], schedule), ("epochs", ours["epochs"], cfg["epochs"]),
        ("batch", ours["batch_unlabeled"], cfg["batch_size"]), ("batch labeled", ours["batch_labeled"],
                                                               cfg["batch_size"]),
        ("lr", ours["lr"], cfg["lr"]), ("conf_thresh", umc.conf_thresh, cfg["conf_thresh"]),
        ("crop / train size", data["train_size"], cfg["crop_size"]),
    ])


def medical(root: Path) -> Path:
    code = root / "more-scenarios" / "medical"
    return code if code.is_dir() else root


def run(root: Path, draws: int) -> list[Item]:
    code = medical(root)
    unet = load_file(code / "model" / "unet.py", "unimatch_unet").UNet
    items = check_unet("UniMatch", unet)
    items.append(check_feature_perturbation(unet))
    items += check_losses(load_file(code / "util" / "utils.py", "unimatch_utils"))
    items += check_cutmix(load_file(code / "dataset" / "transform.py", "unimatch_transform"), draws)
    items.append(check_recipe(code))
    return items
