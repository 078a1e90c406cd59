"""Peer check against DeepMed-Lab-ECNU/BCP."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats

from .common import (Item, calls, check_unet_subset, compare_pairs, cuda_on_cpu, function_source, grad_compare,
                     kwargs_of, label_maps, literal, load_file, max_diff, mix_inputs, numeric, patched, script_defaults,
                     script_functions, sets_lr)


def run(root: Path, draws: int) -> list[Item]:
    from ssbench.engine.runconfig import TrainConfig
    from ssbench.methods import bcp as ours
    from ssbench.methods.blocks.ema import ema_update
    from ssbench.methods.blocks.postprocess import largest_component_per_class
    from ssbench.methods.blocks.unet import UNet

    code = root / "code" if (root / "code").is_dir() else root
    script = code / "ACDC_BCP_train.py"
    losses = load_file(code / "utils" / "losses.py", "bcp_losses")
    from skimage.measure import label as sk_label

    ns = {"torch": torch, "np": np, "nn": torch.nn, "F": F, "label": sk_label,
          "dice_loss": losses.DiceLoss(n_classes=4)}
    fns = script_functions(script, ["generate_mask", "mix_loss", "get_ACDC_2DLargestCC", "get_ACDC_masks",
                                    "update_model_ema"], ns)
    items = check_unet_subset("BCP UNet_2d (BCP_net)",
                              lambda: load_file(code / "networks" / "unet.py", "bcp_unet").UNet_2d(1, 4))

    # generate_mask: the box side exactly, the corner's distribution, and the mask and mixing for a given box.
    size = 256
    # One draw at a time: 5,000 kept (6, 256, 256) int64 loss masks were 18 GB.
    corners_t, sides_t, exact = [], set(), 0.0
    img_a, img_b = torch.rand(2, 2, 1, size, size, generator=torch.Generator().manual_seed(2))
    np.random.seed(0)
    for k in range(draws // 4):
        with cuda_on_cpu():
            mask, loss_mask = fns["generate_mask"](torch.zeros(2, 1, size, size))
        zeros = (mask == 0).nonzero()
        r0, c0 = (int(v) for v in zeros.min(0).values)
        side = int(zeros[:, 0].max()) - r0 + 1
        sides_t.add((side, int(zeros[:, 1].max()) - c0 + 1))
        corners_t.append((r0, c0))
        if k < 200:  # the mask, loss mask and mixing of a box: exact, so a few hundred boxes suffice
            mine = ours.box_mask(size, side, torch.tensor([r0, c0]))
            exact = max(exact, max_diff(mine, mask), max_diff(mine.expand(2, -1, -1), loss_mask),
                        max_diff(ours.paste(img_a, img_b, mine), img_a * mask + img_b * (1 - mask)))
    side = ours.box_size(size, ours.BCPConfig().box_fraction)
    items.append(Item("BCP generate_mask: box side (rows, columns) at 256", str(sorted(sides_t)),
                      sides_t == {(side, side)}, f"ours {side}"))
    g = torch.Generator().manual_seed(0)
    corners_o = []
    for _ in range(draws // 4):
        m = ours.copy_paste_mask(size, ours.BCPConfig().box_fraction, "cpu", g)
        zeros = (m == 0).nonzero()
        corners_o.append(tuple(int(v) for v in zeros.min(0).values))
    ct, co = np.array(corners_t), np.array(corners_o)
    for axis, name in ((0, "first row"), (1, "first column")):
        ks = stats.ks_2samp(co[:, axis], ct[:, axis])
        items.append(Item(f"BCP generate_mask: box {name} distribution (two-sample KS)", f"D={ks.statistic:.3g}",
                          ks.pvalue > 1e-3 and min(co[:, axis].min(), ct[:, axis].min()) >= 0
                          and max(co[:, axis].max(), ct[:, axis].max()) <= size - side - 1,
                          f"p = {ks.pvalue:.3g}; range ours {co[:, axis].min()}-{co[:, axis].max()}, theirs "
                          f"{ct[:, axis].min()}-{ct[:, axis].max()}"))
    items.append(numeric("BCP mask, loss mask and copy-paste mixing for the same box", exact, 0.0))

    # mix_loss in its three uses: pre-train (both regions weight 1), self-train unlabeled-a and labeled-b images.
    logits, lab_img, lab_patch = mix_inputs(3)
    m = ours.box_mask(64, 42, torch.tensor([5, 17])).expand(6, -1, -1).long()
    for name, kw, weights in (("pre-train (1, 1)", dict(u_weight=1.0, unlab=True), (1.0, 1.0)),
                              ("self-train unlabeled-a image (0.5 own, 1 box)", dict(u_weight=0.5, unlab=True),
                               (0.5, 1.0)),
                              ("self-train labeled-b image (1 own, 0.5 box)", dict(u_weight=0.5), (1.0, 0.5))):
        items.append(grad_compare(
            f"BCP mix_loss {name}: Dice and CE, value and gradient",
            lambda x, kw=kw: fns["mix_loss"](x, lab_img, lab_patch, m, **kw),
            lambda x, w=weights: ours.mix_loss(x, lab_img, lab_patch, m.float(), *w, dice_mask="masked"), logits))

    # Largest connected component per class, on maps with many components and ties.
    worst = 0
    with cuda_on_cpu():
        for seed in range(20):
            maps = label_maps(seed)
            worst = max(worst, max_diff(fns["get_ACDC_2DLargestCC"](maps), largest_component_per_class(maps, 4)))
            logit = torch.randn(6, 4, 32, 32, generator=torch.Generator().manual_seed(seed))
            worst = max(worst, max_diff(fns["get_ACDC_masks"](logit, nms=1),
                                        largest_component_per_class(logit.softmax(1).argmax(1), 4)))
    items.append(numeric("BCP largest component per class (get_ACDC_2DLargestCC, get_ACDC_masks nms=1), 40 maps",
                         worst, 0.0))

    # EMA over the whole state_dict (BN buffers included) vs ema_update(buffers=True).
    torch.manual_seed(0)
    student, t_theirs, t_ours = UNet(1, 4), UNet(1, 4), UNet(1, 4)
    t_ours.load_state_dict(t_theirs.state_dict())
    worst = 0.0
    for _ in range(4):
        student.train()
        with torch.no_grad():
            student(torch.rand(2, 1, 32, 32))  # moves the BN running statistics
            for prm in student.parameters():
                prm.add_(torch.randn_like(prm) * 0.01)
        fns["update_model_ema"](student, t_theirs, 0.99)
        ema_update(t_ours, student, 0.99, buffers=True)
        worst = max(worst, max(max_diff(a, b) for a, b in zip(t_theirs.state_dict().values(),
                                                               t_ours.state_dict().values())
                               if a.dtype.is_floating_point))
    items.append(numeric("BCP update_model_ema(0.99) over the state_dict, 4 steps (parameters and BN buffers)", worst))

    items += check_steps(code)

    # Recipe defaults of the script.
    d = script_defaults(script)
    tree = ast.parse(script.read_text())
    cfg, t = ours.BCPConfig(), TrainConfig(**{**vars(TrainConfig()), **ours.BCP.recipe_overrides("published")})
    ema_calls = [literal(c.args[2]) for c in calls(tree, "update_model_ema")]
    sgd = [kwargs_of(c) for c in calls(tree, "SGD")]
    val = [literal(n.right) for branch in ast.walk(tree) if isinstance(branch, ast.If)
           and calls(ast.Module(body=branch.body, type_ignores=[]), "test_single_volume")
           for n in ast.walk(branch.test) if isinstance(n, ast.BinOp) and isinstance(n.op, ast.Mod)]
    teacher_train = bool([c for c in calls(tree, "train") if getattr(c.func.value, "id", "") == "ema_model"])
    items.append(compare_pairs("BCP ACDC_BCP_train.py defaults (iterations, batch, lr, seed, u_weight, EMA, SGD, "
                          "schedule, validation, teacher mode)", [
        ("pre_iterations", cfg.pretrain_iters, d["pre_iterations"]), ("max_iterations", t.iters, d["max_iterations"]),
        ("batch labeled+unlabeled", t.batch_labeled + t.batch_unlabeled, d["batch_size"]),
        ("batch labeled", t.batch_labeled, d["labeled_bs"]), ("lr", t.lr, d["base_lr"]), ("seed", t.seed, d["seed"]),
        ("u_weight", cfg.u_weight, d["u_weight"]), ("EMA decay (every update_model_ema call)", {cfg.ema_decay},
                                                    set(ema_calls)),
        ("SGD momentum / weight decay", [{"momentum": t.momentum, "weight_decay": t.weight_decay}] * len(sgd),
         [{k: v for k, v in c.items() if k != "lr"} for c in sgd]),
        ("learning rate schedule", t.lr_schedule, "poly" if sets_lr(tree) else "constant"),
        ("validation every", {t.val_every}, set(val)), ("teacher mode", cfg.teacher_mode,
                                                        "train" if teacher_train else "eval"),
        ("pseudo-labels post-processed (nms=1)", cfg.pseudo_lcc,
         all(kwargs_of(c).get("nms") == 1 for c in calls(function_source(script, "self_train"), "get_ACDC_masks"))),
    ]))
    return items



def check_steps(code: Path) -> list[Item]:
    """BCP's two stages: the statements of ``pre_train``'s and ``self_train``'s loops, from the batch to the total
    loss, executed as written beside ssbench's ``training_step`` (stage 'pretrain', then 'train' after
    ``begin_stage``) on the same weights and batch. ssbench draws the box (torch); their ``generate_mask`` runs
    with NumPy's ``randint`` returning that box's corner; each train-mode pass (teacher and student alike) starts
    from the same seed on both sides. Their loss does not depend on the iteration (the consistency weight that
    ``self_train`` computes is unused): one step per stage."""
    import argparse

    from skimage.measure import label as sk_label

    from ssbench.methods import bcp as ours
    from ssbench.methods.api import Batch, MethodContext, StepInfo, Stage

    from .common import NumpyWith, copy_weights, loop_statements, reseeded, step_item

    script = code / "ACDC_BCP_train.py"
    d = script_defaults(script)
    losses = load_file(code / "utils" / "losses.py", "bcp_losses")
    ramps = load_file(code / "utils" / "ramps.py", "bcp_ramps")
    unet = load_file(code / "networks" / "unet.py", "bcp_unet")
    n, size = 4, 64  # 2 + 2 labeled, 2 + 2 unlabeled
    g = torch.Generator().manual_seed(31)
    image = torch.rand(2 * n, 1, size, size, generator=g)
    label = torch.randint(0, 4, (2 * n, size, size), generator=g)
    args = argparse.Namespace(**{**d, "labeled_bs": n, "batch_size": 2 * n})
    items = []
    for stage, function, last in (("pretrain", "pre_train", "loss = (loss_dice + loss_ce) / 2"),
                                  ("train", "self_train", "loss = (loss_dice + loss_ce) / 2")):
        torch.manual_seed(0)
        method = ours.BCP(ours.BCPConfig(), MethodContext(1, 4, size, 30000, torch.device("cpu")))
        if stage == "train":
            method.begin_stage(Stage("train", 30000))
            with torch.no_grad():  # a sharper teacher: pseudo-labels with several components per class
                [m for m in method.teacher.modules() if isinstance(m, torch.nn.Conv2d)][-1].weight.mul_(10)
        model, ema_model = unet.UNet_2d(1, 4), unet.UNet_2d(1, 4)
        for theirs, mine in ((model, method.student), (ema_model, method.teacher)):
            copy_weights(torch.nn.Sequential(theirs.encoder, theirs.decoder), mine)
        corners = []
        real_mask = ours.copy_paste_mask

        def copy_paste_mask(*a, **k):
            m = real_mask(*a, **k)
            zeros = (m == 0).nonzero()
            corners.extend(int(v) for v in zeros.min(0).values)
            return m

        method.train()
        with patched(ours, "copy_paste_mask", copy_paste_mask), reseeded(method.student, method.teacher):
            out = method.training_step(Batch(image[:n].clone(), label[:n].clone()),
                                       None if stage == "pretrain" else Batch(image[n:].clone()),
                                       StepInfo(0, 30000, stage))
        model.train(), ema_model.train()
        ns = {"torch": torch, "np": NumpyWith(corners), "nn": torch.nn, "F": F, "label": sk_label,
              "dice_loss": losses.DiceLoss(n_classes=4), "ramps": ramps, "args": args, "iter_num": 0,
              "labeled_sub_bs": n // 2, "unlabeled_sub_bs": n // 2, "model": model, "ema_model": ema_model,
              "sampled_batch": {"image": image.clone() if stage == "train" else image[:n].clone(),
                                "label": label.clone() if stage == "train" else label[:n].clone()}}
        script_functions(script, ["generate_mask", "mix_loss", "get_ACDC_2DLargestCC", "get_ACDC_masks",
                                  "get_current_consistency_weight"], ns)
        with cuda_on_cpu(), reseeded(ema_model, model):
            exec(loop_statements(script, "volume_batch, label_batch =", last, within=function), ns)
        terms = [("Dice", ns["loss_dice"], out["loss_dice"]), ("CE", ns["loss_ce"], out["loss_ce"])]
        params = [p for m in (model.encoder, model.decoder) for p in m.parameters()]
        items.append(step_item(f"BCP {function}: step (Dice, CE, total, gradients)", terms,
                               (ns["loss"], params), (out["loss"], list(method.student.parameters()))))
    return items
