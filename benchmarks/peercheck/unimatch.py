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

    from ssbench.methods.blocks.unet import UNet
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

    from ssbench.methods.blocks.strong import cutmix_box

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
    from ssbench.methods.blocks.losses import ce_dice_loss, dice_loss

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

    from ssbench.engine.runconfig import DataConfig, TrainConfig
    from ssbench.methods.unimatch import UniMatch, UniMatchConfig

    cfg = yaml.safe_load((code / "configs" / "acdc.yaml").read_text())
    ours, umc = {**vars(TrainConfig()), **UniMatch.recipe_overrides("published")}, UniMatchConfig()
    data = {**vars(DataConfig()), **UniMatch.data_overrides("published")}
    script = (code / "unimatch.py").read_text()
    schedule = "epochs" if "for epoch in range(epoch + 1, cfg['epochs'])" in script else "other"
    return compare_pairs("UniMatch configs/acdc.yaml and unimatch.py (schedule, epochs, batch, lr, confidence, crop)", [
        ("schedule (the loop over cfg['epochs'])", ours["schedule"], schedule),
        ("epochs", ours["epochs"], cfg["epochs"]),
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
    items.append(check_step(code, unet))
    items.append(check_step(code, unet, bf16=True))
    items.append(check_weak_augmentation(code, draws // 4))
    items.append(check_strong_pixels(code))
    items.append(check_recipe(code))
    return items


class _Reseeded(torch.nn.Module):
    """Their network, the global seed set before each train-mode pass (the k-th pass of a step gets seed 100 + k),
    so that its dropout draws the numbers that ssbench's k-th pass draws whatever the augmentations drew before."""

    def __init__(self, net):
        super().__init__()
        self.net, self.calls = net, 0

    def forward(self, x, *args):
        if self.training:
            self.calls += 1
            torch.manual_seed(100 + self.calls)
        return self.net(x, *args)


def check_step(code: Path, unet_cls, bf16: bool = False) -> Item:
    """UniMatch's training step: the statements of unimatch.py's loop from the batch's ``.cuda()`` to the total
    loss, executed as written, beside ssbench's ``training_step`` on the same weights and batch. ssbench draws the
    strong views and CutMix boxes (recorded, then given to their loop as its loader's); each train-mode pass of
    either side starts from the same seed (dropout and the feature perturbation's Dropout2d). The loss does not
    depend on the iteration, so one step; the network is sharpened so that the 0.95 confidence splits pixels.
    ``bf16``: ssbench's step under bf16 autocast (its default on a GPU, here on the CPU) against their fp32 loop,
    each term within ``BF16_SCALE`` x 1e-4, the gradients' differences reported."""
    import yaml

    from ssbench.methods import unimatch as um
    from ssbench.methods.api import Batch, MethodContext, StepInfo

    from .common import copy_weights, cuda_on_cpu, loop_statements, patched, step_item

    g = torch.Generator().manual_seed(21)
    n, size = 2, 64
    img_x, img_u_w, img_u_w_mix = (torch.rand(n, 1, size, size, generator=g) for _ in range(3))
    mask_x = torch.randint(0, 4, (n, size, size), generator=g)
    torch.manual_seed(0)
    method = um.UniMatch(um.UniMatchConfig(), MethodContext(1, 4, size, 30000, torch.device("cpu")))
    with torch.no_grad():  # the output conv x 20
        [m for m in method.net.modules() if isinstance(m, torch.nn.Conv2d)][-1].weight.mul_(20)
    theirs = _Reseeded(unet_cls(1, 4))
    copy_weights(theirs.net, method.net)

    views, boxes = [], []

    def strong_view(x, *a, **k):
        views.append(real_view(x, *a, **k))
        return views[-1]

    def cutmix_boxes(*a, **k):
        boxes.append(real_boxes(*a, **k))
        return boxes[-1]

    def decode_with_fp(net, x, drop):
        torch.manual_seed(101)
        return real_fp(net, x, drop)

    def strong_pass(x):
        torch.manual_seed(102)
        return forward(x)

    real_view, real_boxes, real_fp, forward = um.strong_view, um.cutmix_boxes, um.decode_with_fp, method.net.forward
    method.train()
    method.net.forward = strong_pass  # the eval pass of the CutMix sources draws nothing
    torch.manual_seed(5)
    with patched(um, "strong_view", strong_view), patched(um, "cutmix_boxes", cutmix_boxes), \
            patched(um, "decode_with_fp", decode_with_fp):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = method.training_step(Batch(img_x.clone(), mask_x.clone()),
                                       Batch(torch.cat([img_u_w, img_u_w_mix])), StepInfo(0, 30000))
    del method.net.forward

    cfg = yaml.safe_load((code / "configs" / "acdc.yaml").read_text())
    utils = load_file(code / "util" / "utils.py", "unimatch_utils")
    ns = {"torch": torch, "cfg": cfg, "model": theirs, "criterion_ce": torch.nn.CrossEntropyLoss(),
          "criterion_dice": utils.DiceLoss(n_classes=cfg["nclass"]), "img_x": img_x.clone(), "mask_x": mask_x.clone(),
          "img_u_w": img_u_w.clone(), "img_u_w_mix": img_u_w_mix.clone(),
          "img_u_s1": views[0].clone(), "img_u_s1_mix": views[1].clone(), "img_u_s2": views[2].clone(),
          "img_u_s2_mix": views[3].clone(), "cutmix_box1": boxes[0].long(), "cutmix_box2": boxes[1].long()}
    with cuda_on_cpu():
        exec(loop_statements(code / "unimatch.py", "img_x, mask_x =", "loss = (loss_x"), ns)
    terms = [("loss_x", ns["loss_x"], out["loss_x"]), ("loss_s1", ns["loss_u_s1"], out["loss_s1"]),
             ("loss_s2", ns["loss_u_s2"], out["loss_s2"]), ("loss_fp", ns["loss_u_w_fp"], out["loss_fp"]),
             ("confident fraction", (ns["conf_u_w"] >= cfg["conf_thresh"]).float().mean(), out["conf_ratio"])]
    name = "UniMatch: step (loss_x, s1, s2, fp, confident fraction, total, gradients)"
    if bf16:
        name = f"UniMatch: step, ssbench in bf16 autocast vs their fp32 (terms within {BF16_SCALE * 1e-4:g})"
    return step_item(name, terms, (ns["loss"], list(theirs.parameters())), (out["loss"], list(method.net.parameters())),
                     ns["loss_x"] / 2.0, BF16_SCALE if bf16 else 1.0, judge_gradients=not bf16)


BF16_SCALE = 200.0  # terms within 2e-2 relative: bf16 keeps 8 bits of mantissa (4e-3 per operation)


def check_weak_augmentation(code: Path, draws: int) -> Item:
    """ssbench's weak augmentation beside the medical UniMatch's: the ``if random.random() > 0.5`` statement of
    ``ACDCDataset.__getitem__``, executed as written with its transform.py functions."""
    import random

    from .common import check_weak, loop_statements

    transform = load_file(code / "dataset" / "transform.py", "unimatch_transform")
    decision = loop_statements(code / "dataset" / "acdc.py", "if random.random() > 0.5", "if random.random() > 0.5",
                               within="__getitem__")

    def theirs(image):
        ns = {"random": random, "random_rot_flip": transform.random_rot_flip,
              "random_rotate": transform.random_rotate, "img": image, "mask": np.zeros(image.shape, np.uint8)}
        exec(decision, ns)
        return ns["img"]

    return check_weak("UniMatch ACDCDataset vs train.augment=rotflip-rotate (default)", theirs, draws)


STRONG_BOUNDS = (0.0075, 0.025)  # documented (README): mean and 99th percentile |difference| per pixel, intensity 0..1


def check_strong_pixels(code: Path, n: int = 64, size: int = 128) -> Item:
    """The measured per-pixel difference of the strong view: UniMatch's (the slice quantised to uint8 as its
    loader does, torchvision's brightness and contrast on the PIL image, its ``blur``: PIL's GaussianBlur) and
    ssbench's (float, an exact Gaussian), with the same factors, order and sigma (their ``blur`` draws ours).
    Equal within ``STRONG_BOUNDS`` (mean and 99th percentile of |difference|); not pixel for pixel."""
    import random
    import types

    from PIL import Image
    from torchvision.transforms import functional as TF

    from ssbench.methods.blocks.strong import apply_blur, apply_jitter, draw_blur, draw_jitter

    from .common import patched

    transform = load_file(code / "dataset" / "transform.py", "unimatch_transform")
    g = torch.Generator().manual_seed(71)
    coarse = torch.rand(n, 1, size // 16, size // 16, generator=g)
    x = (F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
         + 0.05 * torch.randn(n, 1, size, size, generator=g)).clamp(0, 1)
    q = draw_jitter(n, "cpu", g, p=1.0)
    sigma = draw_blur(n, "cpu", g, p=1.0)
    ours = apply_blur(apply_jitter(x, q), sigma)
    diffs = []
    for i in range(n):
        img = Image.fromarray((x[i, 0].numpy() * 255).astype(np.uint8))  # their loader's statement
        ops = [lambda im: TF.adjust_brightness(im, float(q.brightness[i])),
               lambda im: TF.adjust_contrast(im, float(q.contrast[i]))]
        for op in (reversed(ops) if bool(q.contrast_first[i]) else ops):
            img = op(img)
        fixed = types.SimpleNamespace(random=types.SimpleNamespace(uniform=lambda *a, s=float(sigma[i]): s))
        with patched(transform, "np", fixed), patched(transform, "random", types.SimpleNamespace(random=lambda: 0.0)):
            img = transform.blur(img, p=0.5)
        theirs = torch.from_numpy(np.array(img)).float() / 255.0
        diffs.append((theirs - ours[i, 0]).abs().flatten())
    d = torch.cat(diffs)
    mean, p99, worst = float(d.mean()), float(torch.quantile(d[::7], 0.99)), float(d.max())
    return Item("UniMatch strong view, same draws: PIL uint8 pipeline vs ssbench float (|diff| per pixel)",
                f"{mean:.3g}", mean <= STRONG_BOUNDS[0] and p99 <= STRONG_BOUNDS[1],
                f"mean {mean:.4f}, 99th percentile {p99:.4f}, max {worst:.3f} over {n} slices of {size}^2; bounds "
                f"{STRONG_BOUNDS}")
