"""Check ssbench against the official code yourself: on identical weights and inputs, compare ssbench's UNet,
losses, Mean Teacher schedule and EMA, CutMix boxes and published recipe defaults with the official UniMatch
(medical branch) and SSL4MIS code, imported from checkouts you fetched.

    git clone https://github.com/LiheYoung/UniMatch      # or any checkout of it
    git clone https://github.com/HiLab-git/SSL4MIS
    python benchmarks/peer_check.py --unimatch UniMatch [--ssl4mis SSL4MIS] [--draws 20000]

Nothing of their code is copied into ssbench: their files are loaded from your checkout at run time (each module
by its file path, so their generic package names never shadow anything). Functions that live inside their
training scripts (Mean Teacher's ramp-up and EMA update) are taken from the script's syntax tree and executed as
they are written, without running the script. Prints max |difference| per item and a verdict; exit code 1 if any
item differs.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import math
import sys
import types
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats

TOL = 1e-6  # float32 round-off on identical computations in a different order


@dataclass
class Item:
    name: str
    value: str  # max |difference| or the statistic
    ok: bool
    detail: str = ""


def load_file(path: Path, name: str) -> types.ModuleType:
    if not path.is_file():
        raise SystemExit(f"peer_check: {path}: not found (is this a checkout of the official code?)")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def script_functions(path: Path, names: list[str], namespace: dict) -> dict:
    """The named top-level functions of a training script, compiled from its syntax tree (the script's other
    statements, e.g. argument parsing and training, are not run)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in names]
    missing = set(names) - {n.name for n in found}
    if missing:
        raise SystemExit(f"peer_check: {path}: no function {sorted(missing)[0]}")
    exec(compile(ast.Module(body=found, type_ignores=[]), str(path), "exec"), namespace)
    return {n: namespace[n] for n in names}


def script_defaults(path: Path) -> dict:
    """``--name: default`` of every ``parser.add_argument`` call in a script."""
    out = {}
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument" and node.args:
            key = ast.literal_eval(node.args[0]).lstrip("-")
            for kw in node.keywords:
                if kw.arg == "default":
                    try:
                        out[key] = ast.literal_eval(kw.value)
                    except ValueError:
                        pass
    return out


def max_diff(a, b) -> float:
    a, b = (x.detach() if isinstance(x, torch.Tensor) else x for x in (a, b))
    return float((torch.as_tensor(a, dtype=torch.float64) - torch.as_tensor(b, dtype=torch.float64)).abs().max())


def numeric(name: str, diff: float, tol: float = TOL, detail: str = "") -> Item:
    return Item(name, f"{diff:.3g}", diff <= tol, detail)


# --- the UNet -------------------------------------------------------------------------------------------------

def check_unet(label: str, their_cls) -> list[Item]:
    from ssbench.methods.unet import UNet

    items = []
    torch.manual_seed(0)
    theirs = their_cls(1, 4)
    torch.manual_seed(0)
    ours = UNet(1, 4)
    ts, os_ = list(theirs.state_dict().values()), list(ours.state_dict().values())
    same_shapes = len(ts) == len(os_) and all(a.shape == b.shape for a, b in zip(ts, os_))
    n_t, n_o = sum(p.numel() for p in theirs.parameters()), sum(p.numel() for p in ours.parameters())
    items.append(Item(f"{label} UNet: parameter shapes in order", "equal" if same_shapes else "differ",
                      same_shapes and n_t == n_o, f"{n_o:,} vs {n_t:,} parameters"))
    if not same_shapes:
        return items
    items.append(numeric(f"{label} UNet: initial weights, same seed", max(max_diff(a, b) for a, b in zip(ts, os_)), 0.0))
    theirs.load_state_dict(dict(zip(theirs.state_dict(), os_)))
    x = torch.rand(4, 1, 256, 256, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        theirs.eval(), ours.eval()
        items.append(numeric(f"{label} UNet: eval output, same weights", max_diff(theirs(x), ours(x))))
        theirs.train(), ours.train()
        torch.manual_seed(2)
        a = theirs(x)
        torch.manual_seed(2)
        b = ours(x)
        items.append(numeric(f"{label} UNet: train output (dropout), same seed", max_diff(a, b)))
    return items


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


# --- losses ---------------------------------------------------------------------------------------------------

def _loss_inputs(seed: int = 5):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(6, 4, 64, 64, generator=g, dtype=torch.float64)
    target = torch.randint(0, 4, (6, 64, 64), generator=g)
    ignore = torch.rand(6, 64, 64, generator=g) < 0.3
    return logits, target, ignore


def check_losses(unimatch_utils, ssl4mis_losses) -> list[Item]:
    from ssbench.methods.losses import ce_dice_loss, dice_loss

    logits, target, ignore = _loss_inputs()
    probs = logits.softmax(1)
    items = []
    if unimatch_utils is not None:
        theirs = unimatch_utils.DiceLoss(4)(probs, target.unsqueeze(1).float(), ignore=ignore.float())
        items.append(numeric("UniMatch Dice loss with an ignore mask", max_diff(theirs, dice_loss(probs, target, ignore))))
        l1, l2 = logits.clone().requires_grad_(), logits.clone().requires_grad_()
        theirs = (F.cross_entropy(l1, target) + unimatch_utils.DiceLoss(4)(l1.softmax(1), target.unsqueeze(1).float())) / 2
        ours = ce_dice_loss(l2, target)
        theirs.backward(), ours.backward()
        items.append(numeric("UniMatch (CE + Dice)/2: value and gradient", max(max_diff(theirs, ours),
                                                                            max_diff(l1.grad, l2.grad))))
    if ssl4mis_losses is not None:
        theirs = ssl4mis_losses.DiceLoss(4)(probs, target.unsqueeze(1))
        items.append(numeric("SSL4MIS Dice loss (no ignore)", max_diff(theirs, dice_loss(probs, target))))
        l1, l2 = logits.clone().requires_grad_(), logits.clone().requires_grad_()
        theirs = 0.5 * (ssl4mis_losses.DiceLoss(4)(l1.softmax(1), target.unsqueeze(1)) + F.cross_entropy(l1, target))
        ours = ce_dice_loss(l2, target)
        theirs.backward(), ours.backward()
        items.append(numeric("SSL4MIS 0.5 (Dice + CE): value and gradient", max(max_diff(theirs, ours),
                                                                             max_diff(l1.grad, l2.grad))))
    return items


# --- Mean Teacher -----------------------------------------------------------------------------------------------

def check_mean_teacher(code: Path) -> list[Item]:
    from ssbench.methods.ema import ema_alpha, ema_update
    from ssbench.methods.mean_teacher import MeanTeacherConfig, consistency_weight
    from ssbench.methods.unet import UNet

    script = code / "train_mean_teacher_2D.py"
    defaults = script_defaults(script)
    ramps = load_file(code / "utils" / "ramps.py", "ssl4mis_ramps")
    ns = {"args": argparse.Namespace(**{k.replace("-", "_"): v for k, v in defaults.items()}), "ramps": ramps}
    fns = script_functions(script, ["get_current_consistency_weight", "update_ema_variables"], ns)
    cfg = MeanTeacherConfig()
    # Their loop: weight = get_current_consistency_weight(iter_num // 150); the loss is 0 while iter_num < 1000.
    iters = range(int(defaults.get("max_iterations", 30000)))
    theirs = [fns["get_current_consistency_weight"](it // 150) * (it >= 1000) for it in iters]
    ours = [consistency_weight(it, cfg) for it in iters]
    items = [numeric("Mean Teacher consistency weight, every iteration of 30k", max_diff(theirs, ours), 1e-12)]

    torch.manual_seed(0)
    student = UNet(1, 4)
    t_theirs, t_ours = UNet(1, 4), UNet(1, 4)
    t_theirs.load_state_dict(student.state_dict()), t_ours.load_state_dict(student.state_dict())
    worst = 0.0
    for step in range(6):
        with torch.no_grad():
            for p in student.parameters():
                p.add_(torch.randn_like(p) * 0.01)
        fns["update_ema_variables"](student, t_theirs, defaults["ema_decay"], step)
        ema_update(t_ours, student, ema_alpha(step, cfg.ema_decay), buffers=False)
        worst = max(worst, max(max_diff(a, b) for a, b in zip(t_theirs.parameters(), t_ours.parameters())))
    items.append(numeric("Mean Teacher EMA update, 6 steps (parameters; buffers not averaged, as theirs)", worst))
    return items


# --- CutMix boxes -----------------------------------------------------------------------------------------------

def _box_stats(masks) -> dict[str, np.ndarray]:
    """Per draw: whether a box was drawn; per box: area fraction, aspect h/w, and its top-left corner / size."""
    drawn, boxes = [], []
    for m in masks:
        m = np.asarray(m, bool)
        drawn.append(float(m.any()))
        if m.any():
            ys, xs = np.nonzero(m)
            h, w = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
            boxes.append((h * w / m.size, h / w, xs.min() / m.shape[1], ys.min() / m.shape[0]))
    b = np.array(boxes)
    return {"drawn": np.array(drawn), "area": b[:, 0], "aspect h/w": b[:, 1], "x0": b[:, 2], "y0": b[:, 3]}


def check_cutmix(transform, draws: int, size: int = 256) -> list[Item]:
    import random

    from ssbench.methods.strong import cutmix_box

    random.seed(0)
    np.random.seed(0)
    theirs = _box_stats(transform.obtain_cutmix_box(size, p=0.5).numpy() for _ in range(draws))
    g = torch.Generator().manual_seed(0)
    ours = _box_stats(cutmix_box(size, g, p=0.5).numpy() for _ in range(draws))
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


# --- published recipe defaults ------------------------------------------------------------------------------------

def check_recipes(unimatch: Path | None, ssl4mis: Path | None) -> list[Item]:
    import yaml

    from ssbench.engine.config import TrainConfig
    from ssbench.methods.mean_teacher import MeanTeacher, MeanTeacherConfig
    from ssbench.methods.supervised import Supervised
    from ssbench.methods.unimatch import UniMatch, UniMatchConfig

    def published(method_cls) -> dict:
        return {**vars(TrainConfig()), **method_cls.recipe_overrides("published")}

    items = []

    def compare(name, pairs):
        bad = [f"{k}: ours {a!r}, theirs {b!r}" for k, a, b in pairs if a != b]
        items.append(Item(name, "equal" if not bad else f"{len(bad)} differ", not bad, "; ".join(bad)))

    if ssl4mis is not None:
        mt = script_defaults(ssl4mis / "train_mean_teacher_2D.py")
        ours, mtc = published(MeanTeacher), MeanTeacherConfig()
        compare("SSL4MIS Mean Teacher defaults (lr, batches, iterations, EMA, consistency, seed)", [
            ("lr", ours["lr"], mt["base_lr"]), ("batch labeled+unlabeled", ours["batch_labeled"] + ours["batch_unlabeled"],
                                               mt["batch_size"]),
            ("batch labeled", ours["batch_labeled"], mt["labeled_bs"]), ("iterations", ours["iters"], mt["max_iterations"]),
            ("ema_decay", mtc.ema_decay, mt["ema_decay"]), ("consistency", mtc.consistency, mt["consistency"]),
            ("consistency_rampup", mtc.consistency_rampup, mt["consistency_rampup"]), ("seed", ours["seed"], mt["seed"]),
        ])
        fs = script_defaults(ssl4mis / "train_fully_supervised_2D.py")
        ours = published(Supervised)
        compare("SSL4MIS fully supervised defaults (lr, batch, iterations, seed)", [
            ("lr", ours["lr"], fs["base_lr"]), ("batch", ours["batch_labeled"], fs["batch_size"]),
            ("iterations", ours["iters"], fs["max_iterations"]), ("seed", ours["seed"], fs["seed"]),
        ])
    if unimatch is not None:
        cfg = yaml.safe_load((unimatch / "configs" / "acdc.yaml").read_text())
        ours, umc = published(UniMatch), UniMatchConfig()
        compare("UniMatch configs/acdc.yaml (epochs, batch, lr, confidence, crop)", [
            ("schedule", ours["schedule"], "epochs"), ("epochs", ours["epochs"], cfg["epochs"]),
            ("batch", ours["batch_unlabeled"], cfg["batch_size"]), ("batch labeled", ours["batch_labeled"],
                                                                   cfg["batch_size"]),
            ("lr", ours["lr"], cfg["lr"]), ("conf_thresh", umc.conf_thresh, cfg["conf_thresh"]),
            ("crop / train size", 256, cfg["crop_size"]),
        ])
    return items


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--unimatch", type=Path, required=True, help="a checkout of LiheYoung/UniMatch")
    p.add_argument("--ssl4mis", type=Path, help="a checkout of HiLab-git/SSL4MIS")
    p.add_argument("--draws", type=int, default=20000, help="CutMix boxes drawn by each implementation")
    args = p.parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    warnings.filterwarnings("ignore", category=UserWarning)  # their code uses since-deprecated torch signatures

    um = args.unimatch / "more-scenarios" / "medical"
    um = um if um.is_dir() else args.unimatch
    sm = None
    if args.ssl4mis is not None:
        sm = args.ssl4mis / "code" if (args.ssl4mis / "code").is_dir() else args.ssl4mis

    items: list[Item] = []
    um_unet = load_file(um / "model" / "unet.py", "unimatch_unet").UNet
    items += check_unet("UniMatch", um_unet)
    items.append(check_feature_perturbation(um_unet))
    um_utils = load_file(um / "util" / "utils.py", "unimatch_utils")
    ssl_losses = None
    if sm is not None:
        items += check_unet("SSL4MIS", load_file(sm / "networks" / "unet.py", "ssl4mis_unet").UNet)
        ssl_losses = load_file(sm / "utils" / "losses.py", "ssl4mis_losses")
    items += check_losses(um_utils, ssl_losses)
    if sm is not None:
        items += check_mean_teacher(sm)
    items += check_cutmix(load_file(um / "dataset" / "transform.py", "unimatch_transform"), args.draws)
    items += check_recipes(um, sm)

    width = max(len(i.name) for i in items)
    print(f"{'item':{width}}  {'max |diff| / stat':>18}  verdict")
    for i in items:
        print(f"{i.name:{width}}  {i.value:>18}  {'EQUAL' if i.ok else 'DIFFERENT'}" + (f"  ({i.detail})" if i.detail else ""))
    bad = [i for i in items if not i.ok]
    print(f"\n{len(items) - len(bad)} of {len(items)} items equal" + (f"; different: {', '.join(i.name for i in bad)}"
                                                                    if bad else ""))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
