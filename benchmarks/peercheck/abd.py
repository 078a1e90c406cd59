"""Peer check against chy-upc/ABD."""

from __future__ import annotations

import argparse
import ast
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats

from .common import (Item, box_stats, calls, check_unet_subset, compare_pairs, function_source, grad_compare, kwargs_of,
                     literal, load_file, max_diff, mix_inputs, numeric, script_defaults, script_functions, sets_lr)


def run(root: Path, draws: int) -> list[Item]:
    import random

    from ssbench.engine.runconfig import TrainConfig
    from ssbench.methods import abd as ours
    from ssbench.methods.bcp import box_mask, mix_loss
    from ssbench.methods.blocks.losses import dice_loss

    code = root / "code" if (root / "code").is_dir() else root
    script = code / "train_ACDC_BCP.py"
    losses = load_file(code / "utils" / "losses.py", "abd_losses")
    displacement = load_file(code / "utils" / "displacement.py", "abd_displacement")
    ns = {"torch": torch, "np": np, "nn": torch.nn, "F": F, "dice_loss": losses.DiceLoss(n_classes=4)}
    fns = script_functions(script, ["mix_loss"], ns)
    d = script_defaults(script)
    args = argparse.Namespace(**d)
    cfg = ours.ABDConfig()
    items = check_unet_subset("ABD UNet_2d (BCP_net)",
                              lambda: load_file(code / "networks" / "unet.py", "abd_unet").UNet_2d(1, 4))

    # ABD's mixed loss: its DiceLoss takes the background over the whole image.
    logits, lab_img, lab_patch = mix_inputs(4)
    m = box_mask(64, 42, torch.tensor([9, 3])).expand(6, -1, -1).long()
    for name, kw, weights in (("self-train unlabeled-a image", dict(u_weight=0.5, unlab=True), (0.5, 1.0)),
                              ("self-train labeled-b image", dict(u_weight=0.5), (1.0, 0.5))):
        items.append(grad_compare(
            f"ABD mix_loss {name} (its masked Dice: background unmasked): value and gradient",
            lambda x, kw=kw: fns["mix_loss"](x, lab_img, lab_patch, m, **kw),
            lambda x, w=weights: mix_loss(x, lab_img, lab_patch, m.float(), *w, dice_mask=cfg.dice_mask), logits))
    target = lab_img
    items.append(grad_compare("ABD cross pseudo-supervision Dice (DiceLoss, no mask): value and gradient",
                              lambda x: losses.DiceLoss(4)(x.softmax(1), target.unsqueeze(1)),
                              lambda x: dice_loss(x.softmax(1), target), logits))

    # ABD-R on identical confidence maps, logits and images; the same per-image choices (random.random() < 0.5).
    worst, kl_used = 0.0, 0
    size, n = 256, d["labeled_bs"]
    for seed in range(25):
        g = torch.Generator().manual_seed(100 + seed)
        out1, out2 = (torch.randn(n, 4, size, size, generator=g) * 3 for _ in range(2))
        conf1, conf2 = out1.softmax(1).max(1)[0], out2.softmax(1).max(1)[0]
        x1, x2 = torch.rand(n, 1, size, size, generator=g), torch.rand(n, 1, size, size, generator=g)
        random.seed(seed)
        theirs = displacement.ABD_R_BCP(conf1, conf2, x1.clone(), x2.clone(), out1, out2, args)
        random.seed(seed)
        use_kl = torch.tensor([random.random() < cfg.kl_p for _ in range(n)])
        kl_used += int(use_kl.sum())
        mine = ours.abd_r(conf1, conf2, x1, x2, out1, out2, use_kl, cfg.grid, cfg.top_num)
        worst = max(worst, max_diff(theirs, mine))
    items.append(numeric(f"ABD-R (ABD_R_BCP) displaced images, 25 batches of {n} at 256 "
                         f"({kl_used} KL-criterion choices)", worst, 0.0))

    # Strong view: cutout boxes (area and aspect redrawn until the box fits) and its pixels.
    from_dataset = {"np": np, "random": random}
    cut = script_functions(code / "dataloaders" / "dataset.py", ["cutout_gray"], from_dataset)["cutout_gray"]
    random.seed(0)
    np.random.seed(0)
    boxes_t, values_t = [], []
    for _ in range(draws // 4):
        img, lab = cut(np.full((size, size), 0.5), np.ones((size, size), np.uint8), p=0.5)
        boxes_t.append(lab == 0)
        values_t.append(img[lab == 0][:64])
    boxes_o = ours.cutout_boxes(draws // 4, size, cfg.cutout_p, "cpu", torch.Generator().manual_seed(0)).numpy()
    st, so = box_stats(boxes_t), box_stats(boxes_o)
    p_t, p_o = st["drawn"].mean(), so["drawn"].mean()
    se = math.sqrt(0.25 / (draws // 4) * 2)
    items.append(Item("ABD cutout: fraction of views with a box", f"{abs(p_t - p_o):.3g}", abs(p_t - p_o) < 4 * se,
                      f"{p_o:.4f} vs {p_t:.4f}"))
    for key in ("area", "aspect h/w", "x0", "y0"):
        ks = stats.ks_2samp(so[key], st[key])
        items.append(Item(f"ABD cutout: {key} distribution (two-sample KS)", f"D={ks.statistic:.3g}",
                          ks.pvalue > 1e-3, f"p = {ks.pvalue:.3g}; medians {np.median(so[key]):.4f} vs "
                          f"{np.median(st[key]):.4f}"))
    # The pixels ours writes into the box: its strong view without the jitter, on the same constant image.
    torch.manual_seed(0)
    img, lab = ours.abd_strong_view(torch.full((draws // 200, 1, size, size), 0.5), torch.ones(draws // 200, size, size,
                                                                                       dtype=torch.long),
                                replace(cfg, jitter_p=0.0))
    v_o, v_t = img[:, 0][lab == 0].numpy(), np.concatenate(values_t)
    f_o, f_t = float((v_o == 1).mean()), float((v_t == 1).mean())
    se = math.sqrt(0.25 / len(v_o) + 0.25 / len(v_t))
    set_o, set_t = sorted(set(np.unique(v_o).tolist())), sorted(set(np.unique(v_t).tolist()))
    items.append(Item("ABD cutout: pixel values in the box (values, fraction of ones)", f"{abs(f_o - f_t):.3g}",
                      set_o == set_t and abs(f_o - f_t) < 4 * se,
                      f"ours {set_o} with {f_o:.4f} ones, theirs {set_t} with {f_t:.4f} (4 s.e. = {4 * se:.2g})"))

    items.append(check_step(code))

    # Defaults: script, displacement and strong augmentation.
    tree = ast.parse(script.read_text())
    disp_tree = function_source(code / "utils" / "displacement.py", "ABD_R_BCP")
    kl_p = [literal(c.comparators[0]) for c in ast.walk(disp_tree) if isinstance(c, ast.Compare)
            and isinstance(c.left, ast.Call) and getattr(c.left.func, "attr", "") == "random"]
    jitter = calls(function_source(code / "dataloaders" / "dataset.py", "color_jitter"), "ColorJitter")[0]
    weak_strong = function_source(code / "dataloaders" / "dataset.py", "WeakStrongAugment")
    cut_p = [kwargs_of(c).get("p") for c in calls(weak_strong, "cutout_gray")]
    t = TrainConfig(**{**vars(TrainConfig()), **ours.ABD.recipe_overrides("published")})
    losses_src = (code / "utils" / "losses.py").read_text()
    items.append(compare_pairs("ABD train_ACDC_BCP.py / displacement.py / dataset.py defaults", [
        ("pre_iterations", cfg.pretrain_iters, d["pre_iterations"]), ("max_iterations", t.iters, d["max_iterations"]),
        ("batch", (t.batch_labeled, t.batch_unlabeled), (d["labeled_bs"], d["batch_size"] - d["labeled_bs"])),
        ("lr", t.lr, d["base_lr"]), ("seed", t.seed, d["seed"]), ("u_weight", cfg.u_weight, d["u_weight"]),
        ("patch grid", (cfg.grid, 256 // cfg.grid), (d["h_size"], d["patch_size"])), ("w_size", cfg.grid, d["w_size"]),
        ("top_num", cfg.top_num, d["top_num"]), ("KL-criterion probability", [cfg.kl_p], kl_p),
        ("EMA decay", {cfg.ema_decay}, {literal(c.args[2]) for c in calls(tree, "update_model_ema")}),
        ("learning rate schedule", t.lr_schedule, "poly" if sets_lr(tree) else "constant"),
        ("cutout p", [cfg.cutout_p], cut_p),
        ("colour jitter brightness, contrast", (cfg.jitter, cfg.jitter),
         tuple(float(eval(ast.unparse(a), {"s": 1.0})) for a in jitter.args[:2])),
        ("masked Dice background (losses.py)", cfg.dice_mask,
         "background-unmasked" if "_one_hot_mask_encoder(mask)" in losses_src else "masked"),
        ("weight of the cross terms (loss_1 = ... + pseudo_supervision1 + pseudo_supervision3)", cfg.cross_weight,
         1.0 if "loss_1 = (loss_dice_1 + loss_ce_1) / 2 + pseudo_supervision1 + pseudo_supervision3"
         in script.read_text() else "other"),
    ]))
    return items



def check_step(code: Path) -> Item:
    """ABD's self-training step: the statements of ``self_train``'s loop from the batch to the total loss,
    executed as written beside ssbench's ``training_step`` (stage 'train') on the same weights and batch. ssbench
    draws the strong views (recorded, given to their loop as its loader's ``image_strong``), the box (their
    ``generate_mask`` runs with NumPy's ``randint`` returning its corner) and the KL choices (their
    ``random.random()`` returns a value on the same side of 0.5); each train-mode pass of the teacher or either
    student starts from the same seed on both sides. The loss has no iteration dependence: one step."""
    import types

    from skimage.measure import label as sk_label

    from ssbench.methods import abd as ours
    from ssbench.methods import bcp as bcp_module
    from ssbench.methods.api import Batch, MethodContext, Stage, StepInfo

    from .common import NumpyWith, copy_weights, cuda_on_cpu, loop_statements, patched, reseeded, step_item

    script = code / "train_ACDC_BCP.py"
    d = script_defaults(script)
    losses = load_file(code / "utils" / "losses.py", "abd_losses")
    ramps = load_file(code / "utils" / "ramps.py", "abd_ramps")
    displacement = load_file(code / "utils" / "displacement.py", "abd_displacement")
    unet = load_file(code / "networks" / "unet.py", "abd_unet")
    n, size = 4, 64
    cfg = ours.ABDConfig()
    g = torch.Generator().manual_seed(41)
    image = torch.rand(2 * n, 1, size, size, generator=g)
    label = torch.randint(0, 4, (2 * n, size, size), generator=g)
    torch.manual_seed(0)
    method = ours.ABD(cfg, MethodContext(1, 4, size, 30000, torch.device("cpu")))
    method.begin_stage(Stage("train", 30000))
    with torch.no_grad():  # three networks that differ (as after the pre-train and some self-training)
        for net, scale in ((method.teacher, 10.0), (method.model2, 3.0)):
            for p in net.parameters():
                p.add_(torch.randn_like(p) * 0.01)
            [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)][-1].weight.mul_(scale)
    nets = {name: unet.UNet_2d(1, 4) for name in ("model_1", "model_2", "ema_model")}
    for name, mine in (("model_1", method.student), ("model_2", method.model2), ("ema_model", method.teacher)):
        copy_weights(torch.nn.Sequential(nets[name].encoder, nets[name].decoder), mine)

    views, corners, choices = [], [], []
    real_view, real_mask, real_abd_r = ours.abd_strong_view, bcp_module.copy_paste_mask, ours.abd_r

    def abd_strong_view(*a, **k):
        views.append(real_view(*a, **k))
        return views[-1]

    def copy_paste_mask(*a, **k):
        m = real_mask(*a, **k)
        corners.extend(int(v) for v in (m == 0).nonzero().min(0).values)
        return m

    def abd_r(*a, **k):
        choices.extend(bool(v) for v in a[6])
        return real_abd_r(*a, **k)

    method.train()
    torch.manual_seed(5)
    with patched(ours, "abd_strong_view", abd_strong_view), patched(bcp_module, "copy_paste_mask", copy_paste_mask), \
            patched(ours, "abd_r", abd_r), reseeded(method.teacher, method.student, method.model2):
        out = method.training_step(Batch(image[:n].clone(), label[:n].clone()), Batch(image[n:].clone()),
                                   StepInfo(0, 30000, "train"))

    (strong_l, strong_lab), (strong_u, _) = views
    args = argparse.Namespace(**{**d, "labeled_bs": n, "batch_size": 2 * n, "patch_size": size // cfg.grid,
                                 "h_size": cfg.grid, "w_size": cfg.grid})
    draws = iter([0.0 if c else 0.99 for c in choices])  # below kl_p exactly where ssbench chose the KL criterion
    ns = {"torch": torch, "np": NumpyWith(corners), "nn": torch.nn, "F": F, "label": sk_label, "args": args,
          "dice_loss": losses.DiceLoss(n_classes=4), "ramps": ramps, "iter_num": 0, "labeled_sub_bs": n // 2,
          "unlabeled_sub_bs": n // 2, "ABD_R_BCP": displacement.ABD_R_BCP, **nets,
          "sampled_batch": {"image": image.clone(), "label": label.clone(),
                            "image_strong": torch.cat([strong_l, strong_u]),
                            "label_strong": torch.cat([strong_lab, label[n:]])}}
    script_functions(script, ["generate_mask", "mix_loss", "get_ACDC_2DLargestCC", "get_ACDC_masks",
                              "get_current_consistency_weight"], ns)
    for net in nets.values():
        net.train()
    with cuda_on_cpu(), reseeded(nets["ema_model"], nets["model_1"], nets["model_2"]), \
            patched(displacement, "random", types.SimpleNamespace(random=lambda: next(draws))):
        exec(loop_statements(script, "volume_batch, label_batch =", "loss = loss_1 + loss_2", within="self_train"),
             ns)
    terms = [("model1 loss", ns["loss_1"], out["loss_model1"]), ("model2 loss", ns["loss_2"], out["loss_model2"]),
             ("cross, mixed", ns["pseudo_supervision1"] + ns["pseudo_supervision2"], out["loss_cross_mixed"]),
             ("cross, displaced", ns["pseudo_supervision3"] + ns["pseudo_supervision4"],
              out["loss_cross_displaced"])]
    params = [p for name in ("model_1", "model_2") for m in (nets[name].encoder, nets[name].decoder)
              for p in m.parameters()]
    return step_item(f"ABD self_train: step (both students' losses, cross terms, total, gradients; "
                     f"{sum(choices)} of {len(choices)} KL choices)", terms, (ns["loss"], params),
                     (out["loss"], list(method.student.parameters()) + list(method.model2.parameters())))
