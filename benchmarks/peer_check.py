"""Check ssbench against the official code yourself: on identical weights and inputs, compare ssbench's UNet,
losses, Mean Teacher schedule and EMA, CutMix boxes and published recipe defaults with the official UniMatch
(medical branch) and SSL4MIS code; UA-MT, URPC, CCT, ICT and CPS with their SSL4MIS scripts; BCP, ABD and AD-MT
with theirs; UniMatch V2's network, teacher, masks and losses with LiheYoung/UniMatch-V2 — each imported from a
checkout you fetched.

    git clone https://github.com/LiheYoung/UniMatch      # or any checkout of it
    git clone https://github.com/HiLab-git/SSL4MIS
    git clone https://github.com/DeepMed-Lab-ECNU/BCP
    git clone https://github.com/chy-upc/ABD
    git clone https://github.com/ZhenZHAO/AD-MT
    git clone https://github.com/LiheYoung/UniMatch-V2
    python benchmarks/peer_check.py --unimatch UniMatch --ssl4mis SSL4MIS --bcp BCP --abd ABD --admt AD-MT \
        --unimatch-v2 UniMatch-V2 [--draws N]

Any subset of the checkouts can be given. Their code needs what it imports (ABD: einops; BCP and ABD's
largest-component step: scikit-image; ``pip install -e '.[peer]'``); their ``.cuda()`` calls run on the CPU here.

Nothing of their code is copied into ssbench: their files are loaded from your checkout at run time (each module
by its file path, so their generic package names never shadow anything; V2's ``model`` package only while it
loads). Code that lives inside their training scripts (ramp-ups, EMA updates, a training step up to its total
loss) is taken from the script's syntax tree and executed as it is written, without running the script. Where
their code draws random numbers from NumPy (SSL4MIS's FeatureDropout, ICT's Beta), ssbench's draw is replaced by
the same NumPy draw for the comparison, so that both sides see the same numbers. Prints max |difference| per item
and a verdict; exit code 1 if any item differs.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import math
import sys
import types
import warnings
from contextlib import contextmanager
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


# --- training-loop statements of the official scripts -------------------------------------------------------------

def loop_statements(path: Path, first: str, last: str, skip: tuple[str, ...] = ()):
    """The statements of a script's training loop from the one whose source starts with ``first`` through the one
    starting with ``last``, compiled (those starting with a ``skip`` prefix left out). They run as written, on the
    namespace given to ``exec``, without running the script."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if not isinstance(node, (ast.For, ast.If, ast.FunctionDef)) or not isinstance(body, list):
            continue
        for stmts in (body, getattr(node, "orelse", [])):
            src = [ast.unparse(s) for s in stmts]
            start = next((i for i, t in enumerate(src) if t.startswith(first)), None)
            if start is None:
                continue
            end = next((i for i in range(start, len(src)) if src[i].startswith(last)), None)
            if end is None:
                break
            chosen = [s for s, t in zip(stmts[start:end + 1], src[start:end + 1]) if not t.startswith(skip)]
            return compile(ast.Module(body=chosen, type_ignores=[]), str(path), "exec")
    raise SystemExit(f"peer_check: {path}: no statement block from {first!r} to {last!r}")


@contextmanager
def patched(module, name: str, value):
    saved = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, saved)


def seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)


def copy_weights(dst: torch.nn.Module, src: torch.nn.Module) -> None:
    """Same parameters and buffers in the same order (the official modules and ours are built in one order)."""
    dst.load_state_dict(dict(zip(dst.state_dict(), src.state_dict().values())))


def grad_diff(a: torch.nn.Module, b: torch.nn.Module) -> float:
    worst = 0.0
    for p, q in zip(a.parameters(), b.parameters()):
        if (p.grad is None) != (q.grad is None):
            return math.inf
        if p.grad is not None:
            worst = max(worst, max_diff(p.grad, q.grad))
    return worst


def _numpy_threshold(device):
    """``perturb.threshold_factor`` drawn as the official FeatureDropout draws it (NumPy's global generator), so
    that both sides make the same random draws in the same order."""
    return float(np.random.uniform(0.7, 0.9))


def _numpy_beta(n, alpha, device):
    """ICT's mixing coefficients drawn as the official script draws them (NumPy)."""
    return torch.tensor(np.random.beta(alpha, alpha, size=(n, 1, 1, 1)), dtype=torch.float)


# --- SSL4MIS network variants and methods ------------------------------------------------------------------------

def check_unet_variants(unet_module) -> list[Item]:
    """UNet_URPC and UNet_CCT against ``UNet(aux_heads=True)`` / ``UNet(aux_decoders=3)``: shapes, counts, initial
    weights under one seed, and every output in eval and (perturbed) train mode on the same random draws."""
    from ssbench.methods import perturb
    from ssbench.methods.cct import CCTConfig, perturbed_outputs
    from ssbench.methods.unet import UNet
    from ssbench.methods.urpc import URPCConfig, pyramid

    x = torch.rand(4, 1, 64, 64, generator=torch.Generator().manual_seed(7))
    variants = [
        ("URPC", unet_module.UNet_URPC, dict(aux_heads=True), lambda n: pyramid(n, x, URPCConfig(), True),
         lambda n: pyramid(n, x, URPCConfig(), False)),
        ("CCT", unet_module.UNet_CCT, dict(aux_decoders=3), lambda n: perturbed_outputs(n, x, CCTConfig()),
         lambda n: [n(x)]),
    ]
    items = []
    for label, their_cls, kw, train_fwd, eval_fwd in variants:
        torch.manual_seed(0)
        theirs = their_cls(1, 4)
        torch.manual_seed(0)
        ours = UNet(1, 4, **kw)
        ts, os_ = list(theirs.state_dict().values()), list(ours.state_dict().values())
        same = len(ts) == len(os_) and all(a.shape == b.shape for a, b in zip(ts, os_))
        n_t, n_o = (sum(p.numel() for p in m.parameters()) for m in (theirs, ours))
        items.append(Item(f"SSL4MIS UNet_{label}: parameter shapes in order", "equal" if same else "differ",
                          same and n_t == n_o, f"{n_o:,} vs {n_t:,} parameters"))
        if not same:
            continue
        items.append(numeric(f"SSL4MIS UNet_{label}: initial weights, same seed",
                             max(max_diff(a, b) for a, b in zip(ts, os_)), 0.0))
        with torch.no_grad():
            theirs.eval(), ours.eval()
            out_t = theirs(x)
            items.append(numeric(f"SSL4MIS UNet_{label}: eval outputs", max_diff(out_t[0], eval_fwd(ours)[0])))
            theirs.train(), ours.train()
            with patched(perturb, "threshold_factor", _numpy_threshold):
                seed_all(3)
                out_t = theirs(x)
                seed_all(3)
                out_o = train_fwd(ours)
            items.append(numeric(f"SSL4MIS UNet_{label}: train outputs with their perturbations, same draws",
                                 max(max_diff(a, b) for a, b in zip(out_t, out_o)), detail=f"{len(out_t)} outputs"))
    return items


STEP_TOL = 1e-5  # float32 sums of the same terms in another order (e.g. URPC's 8 terms / 8 vs 4 pairs / 2 / 4)


def _step_batch(n_lab=4, n_unl=4, size=64, seed=11):
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(n_lab + n_unl, 1, size, size, generator=g)
    label = torch.randint(0, 4, (n_lab + n_unl, size, size), generator=g)
    return image, label, n_lab


def _their_step(code: Path, script: str, models: dict, image, label, n_lab, iteration, extra=None, seed=5):
    """One step of the official script up to its total loss, executed as written, on our batch and models."""
    path = code / script
    defaults = script_defaults(path)
    args = argparse.Namespace(**{k.replace("-", "_"): v for k, v in defaults.items()})
    args.labeled_bs, args.batch_size = n_lab, len(image)
    ramps = load_file(code / "utils" / "ramps.py", "ssl4mis_ramps")
    losses = load_file(code / "utils" / "losses.py", "ssl4mis_losses")
    ns = {"args": args, "ramps": ramps, "losses": losses, "np": np, "torch": torch, "F": F, "nn": torch.nn,
          "num_classes": 4, "max_iterations": args.max_iterations, "iter_num": iteration,
          "ce_loss": torch.nn.CrossEntropyLoss(), "dice_loss": losses.DiceLoss(4),
          "kl_distance": torch.nn.KLDivLoss(reduction="none"),
          "sampled_batch": {"image": image.clone(), "label": label.clone()}, **models, **(extra or {})}
    script_functions(path, ["get_current_consistency_weight"], ns)
    last = "loss = model1_loss" if "pseudo_supervision" in script else "loss = supervised_loss"
    seed_all(seed)
    with cuda_on_cpu():
        exec(loop_statements(path, "volume_batch, label_batch =", last), ns)
    ns["loss"].backward()
    return ns


def _our_step(method, image, label, n_lab, iteration, total, seed=5):
    from ssbench.methods.api import Batch, StepInfo

    seed_all(seed)
    method.train()
    out = method.training_step(Batch(image[:n_lab].clone(), label[:n_lab].clone()), Batch(image[n_lab:].clone()),
                               StepInfo(iteration, total))
    out["loss"].backward()
    return out


def _confident(net: torch.nn.Module, scale: float = 30.0) -> None:
    """Sharpen a random network's output (its last conv x scale) so that entropies and confidences spread."""
    with torch.no_grad():
        last = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)][-1]
        last.weight.mul_(scale), last.bias.mul_(scale)


def check_ssl4mis_steps(code: Path) -> list[Item]:
    """UA-MT, URPC, CCT and ICT: one training step of the official script (its loop's statements, executed) and
    of ssbench's method on the same weights, batch, iteration and random draws: total loss and every gradient."""
    from ssbench.methods import ict as ict_module
    from ssbench.methods import perturb
    from ssbench.methods.api import MethodContext
    from ssbench.methods.cct import CCT, CCTConfig
    from ssbench.methods.cps import CPS, CPSConfig
    from ssbench.methods.ict import ICT, ICTConfig
    from ssbench.methods.uamt import UAMT, UAMTConfig
    from ssbench.methods.urpc import URPC, URPCConfig

    unet = load_file(code / "networks" / "unet.py", "ssl4mis_unet")
    image, label, n_lab = _step_batch()
    ctx = MethodContext(1, 4, image.shape[-1], 30000, torch.device("cpu"))
    items = []

    def compare(name, ours_out, ns, student_pairs, detail=""):
        value = max_diff(ns["loss"], ours_out["loss"])
        grads = max(grad_diff(t, o) for t, o in student_pairs)
        items.append(numeric(f"SSL4MIS {name}: one step, total loss and gradients, same draws", max(value, grads),
                             STEP_TOL, f"loss {float(ours_out['loss']):.6g} vs {float(ns['loss']):.6g}; {detail}"))

    # UA-MT (a sharpened teacher, so that the uncertainty mask is neither empty nor full)
    torch.manual_seed(0)
    method = UAMT(UAMTConfig(), ctx)
    with torch.no_grad():
        for p in method.teacher.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    _confident(method.teacher)
    student, teacher = unet.UNet(1, 4), unet.UNet(1, 4)
    copy_weights(student, method.student), copy_weights(teacher, method.teacher)
    it = 6000
    ns = _their_step(code, "train_uncertainty_aware_mean_teacher_2D.py", {"model": student, "ema_model": teacher},
                     image, label, n_lab, it)
    out = _our_step(method, image, label, n_lab, it, 30000)
    compare("UA-MT", out, ns, [(student, method.student)],
            f"certain pixels {float(out['certain_ratio']):.4f} vs {float(ns['mask'].mean()):.4f}")
    items.append(numeric("SSL4MIS UA-MT: fraction of pixels under the uncertainty threshold",
                         abs(float(out["certain_ratio"]) - float(ns["mask"].mean())), 0.0))

    # URPC and CCT (their FeatureDropout draws from NumPy: ours draws the same numbers here)
    for name, cls, cfg, their_cls, script in (
            ("URPC", URPC, URPCConfig(), unet.UNet_URPC, "train_uncertainty_rectified_pyramid_consistency_2D.py"),
            ("CCT", CCT, CCTConfig(), unet.UNet_CCT, "train_cross_consistency_training_2D.py")):
        torch.manual_seed(0)
        method = cls(cfg, ctx)
        theirs = their_cls(1, 4)
        copy_weights(theirs, method.net)
        theirs.train()
        with patched(perturb, "threshold_factor", _numpy_threshold):
            ns = _their_step(code, script, {"model": theirs}, image, label, n_lab, it)
            out = _our_step(method, image, label, n_lab, it, 30000)
        compare(name, out, ns, [(theirs, method.net)], f"unlabeled term {float(out['loss_cons']):.4g}")

    # ICT (their mixing coefficients come from NumPy's Beta: ours draws the same numbers here)
    torch.manual_seed(0)
    method = ICT(ICTConfig(), ctx)
    with torch.no_grad():
        for p in method.teacher.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    student, teacher = unet.UNet(1, 4), unet.UNet(1, 4)
    copy_weights(student, method.student), copy_weights(teacher, method.teacher)
    with patched(ict_module, "mix_factors", _numpy_beta):
        ns = _their_step(code, "train_interpolation_consistency_training_2D.py",
                         {"model": student, "ema_model": teacher}, image, label, n_lab, it)
        out = _our_step(method, image, label, n_lab, it, 30000)
    compare("ICT", out, ns, [(student, method.student)], f"consistency {float(out['loss_cons']):.4g}")

    # CPS (two networks, each against the other's argmax)
    torch.manual_seed(0)
    method = CPS(CPSConfig(), ctx)
    model1, model2 = unet.UNet(1, 4), unet.UNet(1, 4)
    copy_weights(model1, method.model1), copy_weights(model2, method.model2)
    ns = _their_step(code, "train_cross_pseudo_supervision_2D.py", {"model1": model1, "model2": model2},
                     image, label, n_lab, it)
    out = _our_step(method, image, label, n_lab, it, 30000)
    agree = float((ns["pseudo_outputs1"] == ns["pseudo_outputs2"]).float().mean())
    compare("CPS", out, ns, [(model1, method.model1), (model2, method.model2)],
            f"both networks' gradients; the two pseudo-labels agree on {agree:.1%} of pixels")
    return items


def check_ssl4mis_schedules(code: Path, draws: int) -> list[Item]:
    """Every iteration of 30k: the unlabeled weight of each script and UA-MT's uncertainty threshold; ICT's Beta
    draws against NumPy's (two-sample KS)."""
    from ssbench.methods.cps import CPSConfig
    from ssbench.methods.ict import ICTConfig, mix_factors
    from ssbench.methods.mean_teacher import consistency_weight
    from ssbench.methods.uamt import UAMTConfig, uncertainty_threshold
    from ssbench.methods.urpc import URPCConfig

    ramps = load_file(code / "utils" / "ramps.py", "ssl4mis_ramps")
    items = []
    iters = range(30000)
    for name, script, ours in (
            ("UA-MT", "train_uncertainty_aware_mean_teacher_2D.py", lambda i: consistency_weight(i, UAMTConfig())),
            ("URPC", "train_uncertainty_rectified_pyramid_consistency_2D.py", URPCConfig().weight),
            ("CCT", "train_cross_consistency_training_2D.py", URPCConfig().weight),
            ("ICT", "train_interpolation_consistency_training_2D.py", lambda i: consistency_weight(i, ICTConfig())),
            ("CPS", "train_cross_pseudo_supervision_2D.py", CPSConfig().weight)):
        path = code / script
        defaults = script_defaults(path)
        ns = {"args": argparse.Namespace(**defaults), "ramps": ramps}
        fn = script_functions(path, ["get_current_consistency_weight"], ns)["get_current_consistency_weight"]
        items.append(numeric(f"SSL4MIS {name}: unlabeled weight, every iteration of 30k",
                             max_diff([fn(i // 150) for i in iters], [ours(i) for i in iters]), 1e-12))
    path = code / "train_uncertainty_aware_mean_teacher_2D.py"
    threshold = loop_statements(path, "threshold =", "threshold =")
    ns = {"ramps": ramps, "np": np, "max_iterations": 30000}
    theirs = []
    for i in iters:
        ns["iter_num"] = i
        exec(threshold, ns)
        theirs.append(ns["threshold"])
    items.append(numeric("SSL4MIS UA-MT: uncertainty threshold, every iteration of 30k",
                         max_diff(theirs, [uncertainty_threshold(i, 30000, UAMTConfig()) for i in iters]), 1e-12))
    np.random.seed(0)
    torch.manual_seed(0)
    alpha = script_defaults(code / "train_interpolation_consistency_training_2D.py")["ict_alpha"]
    a = np.random.beta(alpha, alpha, size=draws).astype(np.float32)
    b = mix_factors(draws, ICTConfig().alpha, "cpu").flatten().numpy()
    ks = stats.ks_2samp(a, b)
    items.append(Item("SSL4MIS ICT: mixing coefficients Beta(0.2, 0.2) (two-sample KS vs NumPy)",
                      f"D={ks.statistic:.3g}", ks.pvalue > 1e-3 and alpha == ICTConfig().alpha,
                      f"p = {ks.pvalue:.3g}; alpha {ICTConfig().alpha} vs {alpha}; means {b.mean():.4f} vs {a.mean():.4f}"))
    return items


# --- UniMatch V2 -----------------------------------------------------------------------------------------------

def load_v2(code: Path):
    """V2's ``model.semseg.dpt`` from the checkout. Its modules import one another as the package ``model``: the
    checkout is on sys.path only while they load, and the package is taken out of sys.modules again afterwards."""
    if not (code / "model" / "semseg" / "dpt.py").is_file():
        raise SystemExit(f"peer_check: {code}: no model/semseg/dpt.py (is this a checkout of UniMatch-V2?)")
    before = set(sys.modules)
    sys.path.insert(0, str(code))
    try:
        import logging

        logging.getLogger("dinov2").setLevel(logging.ERROR)  # "xFormers not available": its plain attention runs
        dpt = importlib.import_module("model.semseg.dpt")
    finally:
        sys.path.remove(str(code))
        for name in set(sys.modules) - before:
            if name == "model" or name.startswith("model."):
                sys.modules[f"unimatch_v2_{name}"] = sys.modules.pop(name)
    return dpt


V2_SMALL = {"encoder_size": "small", "features": 64, "out_channels": [48, 96, 192, 384]}  # unimatch_v2.py


def _v2_pair(dpt_module, seed: int = 0):
    """V2's DPT-S and ours with the same weights (random, then perturbed so that no weight keeps its init)."""
    from ssbench.methods.unimatch_v2.network import DPT

    torch.manual_seed(seed)
    theirs = dpt_module.DPT(nclass=4, **V2_SMALL)
    with torch.no_grad():
        for p in theirs.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    ours = DPT("small", 4)
    ours.load_state_dict({k: v for k, v in theirs.state_dict().items() if k != "backbone.mask_token"})
    return theirs.eval(), ours.eval()


class _Fixed:
    """Stands in for V2's Binomial sampler: returns a given sample (the same one both sides use)."""

    def __init__(self, sample):
        self.value = sample

    def sample(self, shape):
        assert tuple(shape) == tuple(self.value.shape), (shape, self.value.shape)
        return self.value.clone()


def check_unimatch_v2(code: Path, draws: int) -> list[Item]:
    import tempfile

    import yaml

    from ssbench.engine.config import TrainConfig
    from ssbench.methods import perturb
    from ssbench.methods.ema import ema_alpha, ema_update
    from ssbench.methods.unimatch_v2 import network
    from ssbench.methods.unimatch_v2.method import (UniMatchV2, UniMatchV2Config, mix_targets, mix_view, v2_loss)

    dpt = load_v2(code)
    items = []
    theirs, ours = _v2_pair(dpt)
    ts = {k: v for k, v in theirs.state_dict().items() if k != "backbone.mask_token"}
    same = [tuple(v.shape) for v in ts.values()] == [tuple(v.shape) for v in ours.state_dict().values()] and \
        list(ts) == list(ours.state_dict())
    n_t, n_o = sum(p.numel() for p in theirs.parameters()), sum(p.numel() for p in ours.parameters())
    items.append(Item("UniMatch V2 DPT (DINOv2-S + head): parameter names and shapes in order",
                      "equal" if same else "differ", same and n_t - n_o == 384,
                      f"{n_o:,} vs {n_t:,} parameters: theirs holds DINOv2's mask_token (384), unused by V2"))

    # the forward pass on identical weights, at the sizes a port meets (252, 126) and DINOv2's own (518)
    g = torch.Generator().manual_seed(1)
    worst = {}
    with torch.no_grad():
        for size in (252, 126, 518):
            x = torch.randn(2, 3, size, size, generator=g)
            worst[size] = max_diff(theirs(x), ours(x))
    items.append(numeric("UniMatch V2 DINOv2 + DPT forward, same weights, 252/126/518 px", max(worst.values()),
                         1e-5, ", ".join(f"{s}: {d:.2g}" for s, d in worst.items())))

    # an official-format DINOv2 file (their backbone's state dict: mask_token included) through our loader
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "dinov2_vits14_pretrain.pth"
        torch.save(theirs.backbone.state_dict(), path)
        _, fresh = _v2_pair(dpt, seed=1)
        network.load_official(fresh.backbone, path, "small")
        fresh.head.load_state_dict(ours.head.state_dict())
    with torch.no_grad():
        x = torch.randn(2, 3, 252, 252, generator=g)
        items.append(numeric("UniMatch V2 official-format DINOv2 .pth loaded by ssbench: same forward",
                             max_diff(theirs(x), fresh(x)), 1e-5))

    # the one-channel slice at 256 px: ours (three channels, normalised, resized to 252 and back) vs V2's
    # evaluate ('original' mode, multiplier 14), its statements executed on the same normalised image
    seg = network.Segmenter("small", 4, "resize")
    seg.dpt = ours
    slices = torch.rand(2, 1, 256, 256, generator=g)
    img = (slices.expand(-1, 3, -1, -1) - seg.mean) / seg.std
    ns = {"img": img, "multiplier": 14, "model": theirs, "F": F, "mode": "original"}
    with torch.no_grad():
        exec(_v2_evaluate_statements(code), ns)
        items.append(numeric("UniMatch V2 slice fit 256 -> 252 -> 256 (V2's evaluate resize), same weights",
                             max_diff(ns["pred"], seg(slices)), 1e-5))

    # complementary dropout: V2's own masking code on a fixed Bernoulli sample and permutation vs ours
    b, dim = 4, ours.backbone.embed_dim
    sample = torch.bernoulli(torch.full((b, dim), 0.5), generator=g)
    perm = torch.randperm(b, generator=g)
    x = torch.randn(2 * b, 3, 126, 126, generator=g)
    theirs.binomial = _Fixed(sample)
    with torch.no_grad(), cuda_on_cpu(), patched(torch, "randperm", lambda n, *a, **k: perm.clone()):
        out_t = theirs(x, comp_drop=True)
    m1 = sample * 2.0
    m2 = 2.0 - m1
    kept = perm[: int(b * 0.5)]
    m1[kept], m2[kept] = 1.0, 1.0
    with torch.no_grad():
        out_o = ours(x, torch.cat([m1, m2]))
    items.append(numeric("UniMatch V2 complementary dropout forward, same Bernoulli sample and kept images",
                         max_diff(out_t, out_o), 1e-5))
    items.append(_complementary_statistics(code, draws))

    # the EMA teacher: their ratio and update statements, executed, vs ema_alpha and ema_update
    update = loop_statements(code / "unimatch_v2.py", "ema_ratio =", "for buffer, buffer_ema")
    student = network.DPT("small", 4)
    t_theirs, t_ours = network.DPT("small", 4), network.DPT("small", 4)
    t_ours.load_state_dict(t_theirs.state_dict())
    worst, ratios = 0.0, []
    for it in (0, 1, 2, 10, 300, 5000):
        with torch.no_grad():
            for p in student.parameters():
                p.add_(torch.randn_like(p) * 0.01)
            ns = {"iters": it, "model": student, "model_ema": t_theirs}
            exec(update, ns)
            ema_update(t_ours, student, ema_alpha(it, UniMatchV2Config().ema_decay))
        ratios.append(abs(ns["ema_ratio"] - ema_alpha(it, UniMatchV2Config().ema_decay)))
        worst = max(worst, max(max_diff(a, b) for a, b in zip(t_theirs.state_dict().values(),
                                                               t_ours.state_dict().values())))
    items.append(numeric("UniMatch V2 EMA teacher: ratio min(1 - 1/(it + 1), 0.996) and update, 6 iterations",
                         max(worst, max(ratios)), 1e-6))

    # CutMix and the losses: their statements from the first CutMix paste to the total loss, executed with the
    # network's outputs given, vs ours (mix_view, mix_targets, v2_loss)
    n, k, s = 4, 4, 28
    img_s1, img_s2 = torch.rand(n, 3, s, s, generator=g), torch.rand(n, 3, s, s, generator=g)
    box1, box2 = (torch.rand(n, s, s, generator=g) < 0.3).long(), (torch.rand(n, s, s, generator=g) < 0.3).long()
    pred_x, pred_s = torch.randn(n, k, s, s, generator=g), torch.randn(2 * n, k, s, s, generator=g) * 4
    pred_w = torch.randn(n, k, s, s, generator=g) * 4
    mask_x = torch.randint(0, k, (n, s, s), generator=g)
    conf_u_w, mask_u_w = pred_w.softmax(1).max(1)
    seen = {}

    def model(x, comp_drop=False):
        seen["comp_drop" if comp_drop else "x"] = x.clone()
        return pred_s.clone() if comp_drop else pred_x.clone()

    cfg = yaml.safe_load((code / "configs" / "pascal.yaml").read_text())
    ns = {"img_u_s1": img_s1.clone(), "img_u_s2": img_s2.clone(), "cutmix_box1": box1, "cutmix_box2": box2,
          "img_x": torch.zeros(1), "model": model, "mask_u_w": mask_u_w, "conf_u_w": conf_u_w,
          "ignore_mask": torch.zeros(n, s, s), "mask_x": mask_x, "cfg": cfg, "torch": torch,
          "criterion_l": torch.nn.CrossEntropyLoss(ignore_index=255), "criterion_u": torch.nn.CrossEntropyLoss(
              reduction="none")}
    exec(loop_statements(code / "unimatch_v2.py", "img_u_s1[cutmix_box1", "loss = (loss_x + loss_u_s)"), ns)
    views = torch.cat([mix_view(img_s1, box1.bool()), mix_view(img_s2, box2.bool())])
    items.append(numeric("UniMatch V2 CutMix of the strong views (pasted from the reversed batch)",
                         max_diff(seen["comp_drop"], views), 0.0))
    targets = [mix_targets(mask_u_w, conf_u_w, box1.bool()), mix_targets(mask_u_w, conf_u_w, box2.bool())]
    ours_loss = v2_loss(pred_x, mask_x, list(pred_s.chunk(2)), targets, UniMatchV2Config().conf_thresh)
    items.append(numeric("UniMatch V2 loss: (x + (s1 + s2)/2)/2, unlabeled CE / all non-ignored pixels",
                         max(max_diff(ns["loss"], ours_loss["loss"]), max_diff(ns["loss_u_s1"], ours_loss["loss_s1"]),
                             max_diff(ns["loss_u_s2"], ours_loss["loss_s2"])), 1e-6,
                         f"loss {float(ours_loss['loss']):.5g} vs {float(ns['loss']):.5g}"))

    # recipe defaults: configs/pascal.yaml, the optimizer and EMA of unimatch_v2.py, DPT-S's configuration
    ours_cfg, ours_train = UniMatchV2Config(), {**vars(TrainConfig()), **UniMatchV2.recipe_overrides("published")}
    adamw = _call_keywords(code / "unimatch_v2.py", "AdamW")
    ema = _v2_ema_decay(code / "unimatch_v2.py")
    pairs = [("lr", ours_train["lr"], cfg["lr"]), ("lr_multi", ours_cfg.lr_multiplier, cfg["lr_multi"]),
             ("conf_thresh", ours_cfg.conf_thresh, cfg["conf_thresh"]),
             ("backbone", f"dinov2_{ours_cfg.backbone}", cfg["backbone"]),
             ("lock_backbone", ours_cfg.lock_backbone, cfg["lock_backbone"]),
             ("optimizer", ours_train["optimizer"], "adamw"),
             ("weight_decay", ours_train["weight_decay"], adamw.get("weight_decay")),
             ("betas", (0.9, 0.999), adamw.get("betas")), ("EMA decay", ours_cfg.ema_decay, ema),
             ("DPT-S features / out_channels", (network.BACKBONES["small"][2], list(network.BACKBONES["small"][3])),
              (V2_SMALL["features"], V2_SMALL["out_channels"])),
             ("blocks read (small)", list(network.BACKBONES["small"][1]),
              list(dpt.DPT(nclass=4, **V2_SMALL).intermediate_layer_idx["small"]))]
    bad = [f"{name}: ours {a!r}, theirs {b!r}" for name, a, b in pairs if a != b]
    items.append(Item("UniMatch V2 configs/pascal.yaml, optimizer, EMA and DPT-S defaults",
                      "equal" if not bad else f"{len(bad)} differ", not bad, "; ".join(bad)))
    return items


def _v2_evaluate_statements(code: Path):
    """V2's ``evaluate`` in mode 'original': resize to a multiple of 14, predict, resize back (supervised.py)."""
    tree = ast.parse((code / "supervised.py").read_text())
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "evaluate")
    branch = next(n for n in ast.walk(fn) if isinstance(n, ast.If) and "sliding_window" in ast.unparse(n.test)
                  and n.orelse)
    body = [s for s in branch.orelse if not ast.unparse(s).startswith("assert")]
    return compile(ast.Module(body=body, type_ignores=[]), "supervised.py", "exec")


def _call_keywords(path: Path, func: str) -> dict:
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) == func:
            out = {}
            for kw in node.keywords:
                try:
                    out[kw.arg] = ast.literal_eval(kw.value)
                except ValueError:
                    pass
            return out
    raise SystemExit(f"peer_check: {path}: no call to {func}")


def _v2_ema_decay(path: Path) -> float:
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Assign) and ast.unparse(node.targets[0]) == "ema_ratio":
            return ast.literal_eval(node.value.args[1])
    raise SystemExit(f"peer_check: {path}: no ema_ratio")


def _complementary_statistics(code: Path, draws: int) -> Item:
    """V2's mask statements (dpt.py, executed) and ``perturb.complementary_masks``, ``draws`` times each: the two
    views' masks sum to 2, int(B/2) images are undropped, a dropped image keeps a channel with probability 0.5."""
    from ssbench.methods import perturb

    tree = ast.parse((code / "model" / "semseg" / "dpt.py").read_text())
    branch = next(n for n in ast.walk(tree) if isinstance(n, ast.If) and ast.unparse(n.test) == "comp_drop")
    src = [ast.unparse(s) for s in branch.body]
    end = next(i for i, t in enumerate(src) if t.startswith("dropout_mask ="))
    statements = compile(ast.Module(body=branch.body[:end + 1], type_ignores=[]), "dpt.py", "exec")
    b, dim = 5, 16

    def summary(masks):
        ok = all(torch.equal(m[:b] + m[b:], torch.full_like(m[:b], 2.0)) for m in masks)
        undropped = [int((m[:b] == 1).all(1).sum()) for m in masks]
        rows = torch.cat([m[:b][~(m[:b] == 1).all(1)] for m in masks])
        return ok, set(undropped), float((rows == 2).float().mean()), rows.numel()

    self = types.SimpleNamespace(binomial=torch.distributions.binomial.Binomial(probs=0.5))
    theirs = []
    torch.manual_seed(0)
    with cuda_on_cpu():
        for _ in range(draws // 10):
            ns = {"features": [torch.zeros(2 * b, 3, dim)], "self": self, "torch": torch}
            exec(statements, ns)
            theirs.append(ns["dropout_mask"])
    ours = []
    for _ in range(draws // 10):
        m1, m2 = perturb.complementary_masks(b, (dim,), "cpu")
        ours.append(torch.cat([m1[0], m2[0]]))
    (ok_t, und_t, p_t, n_t), (ok_o, und_o, p_o, n_o) = summary(theirs), summary(ours)
    se = math.sqrt(0.25 / n_o + 0.25 / n_t)
    good = ok_t and ok_o and und_t == und_o == {int(b * 0.5)} and abs(p_t - p_o) < 4 * se
    return Item("UniMatch V2 complementary dropout masks: complementary, int(B/2) undropped, p 0.5 (B = 5)",
                f"{abs(p_t - p_o):.3g}", good,
                f"undropped per draw {sorted(und_o)} vs {sorted(und_t)}; kept fraction {p_o:.4f} vs {p_t:.4f}")


def check_zoo_recipes(ssl4mis: Path) -> list[Item]:
    """Each SSL4MIS script's argparse defaults against the method's published config and recipe."""
    from ssbench.engine.config import TrainConfig
    from ssbench.methods.cct import CCT, CCTConfig
    from ssbench.methods.cps import CPS, CPSConfig
    from ssbench.methods.ict import ICT, ICTConfig
    from ssbench.methods.uamt import UAMT, UAMTConfig
    from ssbench.methods.urpc import URPC, URPCConfig

    from ssbench.methods.api import MethodContext

    def network(method_cls, cfg) -> str:  # SSL4MIS's net_factory name of the network the method builds
        net = method_cls(cfg, MethodContext(1, 4, 64, 100, torch.device("cpu")))
        net = getattr(net, "net", None) or getattr(net, "student", None) or net.model1
        return "unet_urpc" if net.aux_heads is not None else "unet_cct" if net.aux_decoders is not None else "unet"

    items = []
    for name, script, cls, cfg in (
            ("UA-MT", "train_uncertainty_aware_mean_teacher_2D.py", UAMT, UAMTConfig()),
            ("URPC", "train_uncertainty_rectified_pyramid_consistency_2D.py", URPC, URPCConfig()),
            ("CCT", "train_cross_consistency_training_2D.py", CCT, CCTConfig()),
            ("ICT", "train_interpolation_consistency_training_2D.py", ICT, ICTConfig()),
            ("CPS", "train_cross_pseudo_supervision_2D.py", CPS, CPSConfig())):
        d = script_defaults(ssl4mis / script)
        t = {**vars(TrainConfig()), **cls.recipe_overrides("published")}
        pairs = [("lr", t["lr"], d["base_lr"]), ("batch", t["batch_labeled"] + t["batch_unlabeled"], d["batch_size"]),
                 ("batch labeled", t["batch_labeled"], d["labeled_bs"]), ("iterations", t["iters"], d["max_iterations"]),
                 ("seed", t["seed"], d["seed"]), ("optimizer", t["optimizer"], "sgd"),
                 ("consistency", cfg.consistency, d["consistency"]),
                 ("consistency_rampup", cfg.consistency_rampup, d["consistency_rampup"]),
                 ("network", network(cls, cfg), d["model"])]
        if "ema_decay" in d and hasattr(cfg, "ema_decay"):  # the CPS script declares one and never uses it
            pairs.append(("ema_decay", cfg.ema_decay, d["ema_decay"]))
        if "ict_alpha" in d:
            pairs.append(("ict_alpha", cfg.alpha, d["ict_alpha"]))
        bad = [f"{k}: ours {a!r}, theirs {b!r}" for k, a, b in pairs if a != b]
        items.append(Item(f"SSL4MIS {name} defaults ({', '.join(k for k, _, _ in pairs)})",
                          "equal" if not bad else f"{len(bad)} differ", not bad, "; ".join(bad)))
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


# --- helpers for the copy-paste and multi-teacher codes ---------------------------------------------------------

@contextmanager
def cuda_on_cpu():
    """Their code calls ``.cuda()`` on tensors and modules; here that is a no-op (everything stays on the CPU)."""
    saved = torch.Tensor.cuda, torch.nn.Module.cuda
    torch.Tensor.cuda = lambda self, *a, **k: self
    torch.nn.Module.cuda = lambda self, *a, **k: self
    try:
        yield
    finally:
        torch.Tensor.cuda, torch.nn.Module.cuda = saved


def script_classes(path: Path, names: list[str], namespace: dict) -> dict:
    """Like ``script_functions``, for top-level classes."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name in names]
    if {n.name for n in found} != set(names):
        raise SystemExit(f"peer_check: {path}: no class {sorted(set(names) - {n.name for n in found})[0]}")
    exec(compile(ast.Module(body=found, type_ignores=[]), str(path), "exec"), namespace)
    return {n: namespace[n] for n in names}


def function_source(path: Path, name: str) -> ast.FunctionDef:
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name == name:
            return node
    raise SystemExit(f"peer_check: {path}: no {name}")


def calls(tree: ast.AST, name: str) -> list[ast.Call]:
    """Every call of ``name`` (a function or a method/attribute of that name) under ``tree``."""
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call)
            and (getattr(n.func, "id", None) == name or getattr(n.func, "attr", None) == name)]


def literal(node):
    try:
        return ast.literal_eval(node)
    except ValueError:
        return ast.unparse(node)


def kwargs_of(call: ast.Call) -> dict:
    return {k.arg: literal(k.value) for k in call.keywords}


def sets_lr(tree: ast.AST) -> bool:
    """Whether the code assigns a param group's 'lr' anywhere (a schedule)."""
    for n in ast.walk(tree):
        if isinstance(n, ast.Subscript) and isinstance(n.ctx, ast.Store) and literal(n.slice) == "lr":
            return True
    return False


def grad_compare(name: str, theirs_fn, ours_fn, x: torch.Tensor, tol: float = 1e-5) -> Item:
    """Value(s) and gradient with respect to ``x`` of two loss functions returning a tensor or a tuple."""
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    ta, tb = theirs_fn(a), ours_fn(b)
    ta = ta if isinstance(ta, tuple) else (ta,)
    tb = tb if isinstance(tb, tuple) else (tb,)
    sum(ta).backward()
    sum(tb).backward()
    diff = max(max(max_diff(u, v) for u, v in zip(ta, tb)), max_diff(a.grad, b.grad))
    return numeric(name, diff, tol, "values " + ", ".join(f"{float(v):.6f}" for v in tb))


def check_unet_subset(label: str, theirs) -> list[Item]:
    """A network that wraps the literature's UNet in ``encoder``/``decoder`` beside unused heads (BCP's
    ``UNet_2d``): those weights in order and shape, the same initial weights under one seed (the heads are built
    after them), and the same output."""
    from ssbench.methods.unet import UNet

    torch.manual_seed(0)
    net = theirs()
    torch.manual_seed(0)
    ours = UNet(1, 4)
    ts = {k: v for k, v in net.state_dict().items() if k.startswith(("encoder.", "decoder."))}
    os_ = list(ours.state_dict().values())
    same = len(ts) == len(os_) and all(a.shape == b.shape for a, b in zip(ts.values(), os_))
    items = [Item(f"{label}: encoder/decoder parameter shapes in order", "equal" if same else "differ", same,
                  f"{len(ts)} vs {len(os_)} tensors; heads beside them: "
                  f"{sorted({k.split('.')[0] for k in net.state_dict()} - {'encoder', 'decoder'})}")]
    if not same:
        return items
    items.append(numeric(f"{label}: initial encoder/decoder weights, same seed",
                         max(max_diff(a, b) for a, b in zip(ts.values(), os_)), 0.0))
    net.load_state_dict({**net.state_dict(), **dict(zip(ts, os_))})
    x = torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        net.eval(), ours.eval()
        items.append(numeric(f"{label}: eval output, same weights", max_diff(net(x), ours(x))))
    return items


def _label_maps(seed: int, n: int = 6, size: int = 64) -> torch.Tensor:
    """Label maps with many components per class (sparse blobs and noise), for the largest-component check."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randint(0, 4, (n, 1, size // 8, size // 8), generator=g).float()
    blobs = F.interpolate(coarse, size=(size, size), mode="nearest")[:, 0].long()
    noise = torch.randint(0, 4, (n, size, size), generator=g) * (torch.rand(n, size, size, generator=g) < 0.05)
    return torch.where(torch.rand(n, size, size, generator=g) < 0.5, blobs, noise)


def _mix_inputs(seed: int, size: int = 64):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(6, 4, size, size, generator=g, dtype=torch.float64)
    lab_img = torch.randint(0, 4, (6, size, size), generator=g)
    lab_patch = torch.randint(0, 4, (6, size, size), generator=g)
    return logits, lab_img, lab_patch


# --- BCP ----------------------------------------------------------------------------------------------------------

def check_bcp(root: Path, draws: int) -> list[Item]:
    from ssbench.engine.config import TrainConfig
    from ssbench.methods import bcp as ours
    from ssbench.methods.ema import ema_update
    from ssbench.methods.postprocess import largest_component_per_class
    from ssbench.methods.unet import UNet

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
    with cuda_on_cpu():
        np.random.seed(0)
        theirs = [fns["generate_mask"](torch.zeros(6, 1, size, size)) for _ in range(draws // 4)]
    corners_t, sides_t, exact = [], set(), 0.0
    img_a, img_b = torch.rand(2, 6, 1, size, size, generator=torch.Generator().manual_seed(2))
    for mask, loss_mask in theirs:
        zeros = (mask == 0).nonzero()
        r0, c0 = (int(v) for v in zeros.min(0).values)
        side = int(zeros[:, 0].max()) - r0 + 1
        sides_t.add((side, int(zeros[:, 1].max()) - c0 + 1))
        corners_t.append((r0, c0))
        mine = ours.box_mask(size, side, torch.tensor([r0, c0]))
        exact = max(exact, max_diff(mine, mask), max_diff(mine.expand(6, -1, -1), loss_mask),
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
    logits, lab_img, lab_patch = _mix_inputs(3)
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
            maps = _label_maps(seed)
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
    items.append(_compare("BCP ACDC_BCP_train.py defaults (iterations, batch, lr, seed, u_weight, EMA, SGD, "
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


def _compare(name, pairs) -> Item:
    bad = [f"{k}: ours {a!r}, theirs {b!r}" for k, a, b in pairs if a != b]
    return Item(name, "equal" if not bad else f"{len(bad)} differ", not bad, "; ".join(bad))


# --- ABD ----------------------------------------------------------------------------------------------------------

def check_abd(root: Path, draws: int) -> list[Item]:
    import random

    from ssbench.engine.config import TrainConfig
    from ssbench.methods import abd as ours
    from ssbench.methods.bcp import box_mask, mix_loss
    from ssbench.methods.losses import dice_loss

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
    logits, lab_img, lab_patch = _mix_inputs(4)
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
    boxes_t, values = [], set()
    for _ in range(draws // 4):
        img, lab = cut(np.full((size, size), 0.5), np.ones((size, size), np.uint8), p=0.5)
        boxes_t.append(lab == 0)
        values |= set(np.unique(img[lab == 0]).tolist())
    boxes_o = ours.cutout_boxes(draws // 4, size, cfg.cutout_p, "cpu", torch.Generator().manual_seed(0)).numpy()
    st, so = _box_stats(boxes_t), _box_stats(boxes_o)
    p_t, p_o = st["drawn"].mean(), so["drawn"].mean()
    se = math.sqrt(0.25 / (draws // 4) * 2)
    items.append(Item("ABD cutout: fraction of views with a box", f"{abs(p_t - p_o):.3g}", abs(p_t - p_o) < 4 * se,
                      f"{p_o:.4f} vs {p_t:.4f}"))
    for key in ("area", "aspect h/w", "x0", "y0"):
        ks = stats.ks_2samp(so[key], st[key])
        items.append(Item(f"ABD cutout: {key} distribution (two-sample KS)", f"D={ks.statistic:.3g}",
                          ks.pvalue > 1e-3, f"p = {ks.pvalue:.3g}; medians {np.median(so[key]):.4f} vs "
                          f"{np.median(st[key]):.4f}"))
    items.append(Item("ABD cutout: pixel values in the box", str(sorted(values)), values <= {0, 1}, "ours: 0 or 1"))

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
    items.append(_compare("ABD train_ACDC_BCP.py / displacement.py / dataset.py defaults", [
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


# --- AD-MT --------------------------------------------------------------------------------------------------------

def _statements_between(fn: ast.FunctionDef, first: str, last: str) -> ast.Module:
    """The statements of ``fn`` (anywhere in it) from the first assigning ``first`` to the first assigning ``last``."""
    assigns = sorted((n for n in ast.walk(fn) if isinstance(n, ast.Assign)), key=lambda n: n.lineno)

    def names(n):
        return {t.id for tgt in n.targets for t in ast.walk(tgt) if isinstance(t, ast.Name)}

    start = next(n.lineno for n in assigns if first in names(n))
    end = next(n.lineno for n in assigns if last in names(n) and n.lineno >= start)
    return ast.Module(body=[n for n in assigns if start <= n.lineno <= end], type_ignores=[])


def check_admt(root: Path, draws: int) -> list[Item]:
    import yaml

    from ssbench.engine.config import TrainConfig
    from ssbench.methods import admt as ours
    from ssbench.methods.ema import ema_update
    from ssbench.methods.losses import dice_loss
    from ssbench.methods.strong import draw_blur, draw_jitter
    from ssbench.methods.unet import UNet

    code = root / "code" if (root / "code").is_dir() else root
    script = code / "train_post_2d_aut.py"
    yml = yaml.safe_load((root / "cfgs" / "config_2d_aut.yml").read_text())
    cfg = ours.ADMTConfig()
    items = check_unet("AD-MT", load_file(code / "networks" / "unet.py", "admt_unet").UNet)

    # The alternate-update schedule: the same flags for 30,000 steps when both draw the same periods.
    util_ns = {"np": np, "torch": torch, "F": F}
    classes = script_classes(code / "train_utils.py", ["AlternateUpdate"], util_ns)
    fns = script_functions(code / "train_utils.py", ["get_compromise_pseudo_btw_tea_stu"], util_ns)
    np.random.seed(0)
    theirs = classes["AlternateUpdate"](yml["alt_param_updating_period_iters"], initial_flag=True,
                                        flag_random=yml["alt_flag_updating_period_random"])
    flags_t = []
    for _ in range(30000):
        flags_t.append(theirs.get_alternate_state())
        theirs.update()
    np.random.seed(0)
    mine = ours.AlternateSchedule(cfg.period_max, cfg.period_random, 0,
                                  draw=lambda k: int(np.random.randint(1, cfg.period_max + 1)))
    flags_o = []
    for _ in range(30000):
        flags_o.append(mine.flag)
        mine.update()
    swaps = int(np.sum(np.diff(np.array(flags_o, int)) != 0))
    items.append(numeric("AD-MT alternate-update schedule (AlternateUpdate), 30,000 steps, same period draws",
                         max_diff(np.array(flags_t, float), np.array(flags_o, float)), 0.0, f"{swaps} swaps"))
    seeded = ours.AlternateSchedule(cfg.period_max, True, 1337)
    periods = [seeded._seeded(k) for k in range(20000)]
    ks = stats.chisquare(np.bincount(periods, minlength=cfg.period_max + 1)[1:])
    items.append(Item("AD-MT periods as ssbench draws them: uniform on 1..50 (chi-square)", f"p={ks.pvalue:.3g}",
                      min(periods) == 1 and max(periods) == cfg.period_max and ks.pvalue > 1e-3))

    # Teacher decay schedule and EMA (parameters and buffers), from their update_ema_variables.
    upd = script_functions(script, ["update_ema_variables"], {"torch": torch})["update_ema_variables"]
    args = {"consistency_rampup": yml["consistency_rampup"]}
    worst = 0.0
    for it in range(30000):
        s_, e_ = torch.nn.Linear(1, 1, bias=False), torch.nn.Linear(1, 1, bias=False)
        with torch.no_grad():
            s_.weight.fill_(1.0), e_.weight.fill_(0.0)
        upd(s_, e_, yml["ema_decay"], it // 2, args)
        worst = max(worst, abs((1 - float(e_.weight)) - ours.teacher_decay(it, cfg)))
    items.append(numeric("AD-MT teacher decay (update_ema_variables at iter_num // 2), every step of 30,000", worst,
                         1e-7))
    torch.manual_seed(0)
    student, t_theirs, t_ours = UNet(1, 4), UNet(1, 4), UNet(1, 4)
    t_ours.load_state_dict(t_theirs.state_dict())
    worst = 0.0
    for it in (0, 150, 151, 400):
        with torch.no_grad():
            student.train()
            student(torch.rand(2, 1, 32, 32))
            for prm in student.parameters():
                prm.add_(torch.randn_like(prm) * 0.01)
        upd(student, t_theirs, yml["ema_decay"], it // 2, args)
        ema_update(t_ours, student, ours.teacher_decay(it, cfg), cfg.ema_buffers)
        # num_batches_tracked is averaged into a float there and copied here: BatchNorm reads it only without a
        # momentum, and the UNet's BatchNorm has one (0.1).
        worst = max(worst, max(max_diff(a, b) for (k, a), b in zip(t_theirs.state_dict().items(),
                                                                   t_ours.state_dict().values())
                               if not k.endswith("num_batches_tracked")))
    items.append(numeric("AD-MT EMA update of a teacher (parameters, BN running statistics), 4 steps", worst))

    # Entropy fusion: the statements of their loop, executed on identical softmaxes.
    train_fn = function_source(script, "train")
    fusion = _statements_between(train_fn, "entropy_1", "pseudo_logits")
    worst, disagree = 0.0, 0
    for seed in range(10):
        g = torch.Generator().manual_seed(seed)
        p1 = (torch.randn(12, 4, 64, 64, generator=g) * 2).softmax(1)
        p2 = (torch.randn(12, 4, 64, 64, generator=g) * 2).softmax(1)
        local = {"torch": torch, "ema_outputs_soft_1": p1, "ema_outputs_soft_2": p2,
                 "alt_param_ensemble_temp": yml["alt_param_ensemble_temp"]}
        exec(compile(fusion, str(script), "exec"), local)
        conf, label = ours.entropy_fusion(p1, p2, cfg.temperature)
        worst = max(worst, max_diff(local["pseudo_logits"], conf), max_diff(local["pseudo_outputs"], label))
        disagree += int((p1.argmax(1) != p2.argmax(1)).sum())
    items.append(numeric(f"AD-MT entropy fusion of the two teachers ({len(fusion.body)} statements of their loop), "
                         "confidence and label", worst, 1e-6, f"{disagree} pixels where the teachers disagree"))

    # Teacher/student conflicts.
    worst = 0.0
    for seed in range(10):
        g = torch.Generator().manual_seed(seed)
        lt, ls = torch.randint(0, 4, (12, 64, 64), generator=g), torch.randint(0, 4, (12, 64, 64), generator=g)
        ct, cs = torch.rand(12, 64, 64, generator=g), torch.rand(12, 64, 64, generator=g)
        disagree = torch.rand(12, 64, 64, generator=g) < 0.5
        for mode in ("pixel_confidence", "always_tea", "always_stu"):
            tt, tc, _ = fns["get_compromise_pseudo_btw_tea_stu"](lt, ct, ls, cs, mode, disagree)
            ot, oc = ours.resolve_conflicts(lt, ct, ls, cs, disagree, mode)
            worst = max(worst, max_diff(tt, ot), max_diff(tc, oc))
    items.append(numeric("AD-MT conflicts with the student (get_compromise_pseudo_btw_tea_stu: pixel_confidence, "
                         "always_tea, always_stu)", worst, 0.0))

    # CutMix: the same pastes for the same draws; the box-size distribution of the draws.
    mix = load_file(code / "dataloaders" / "mixaugs.py", "admt_mixaugs")
    worst = 0.0
    for seed in range(20):
        g = torch.Generator().manual_seed(seed)
        img, conf = torch.rand(12, 1, 256, 256, generator=g), torch.rand(12, 256, 256, generator=g)
        lab, conflict = torch.randint(0, 4, (12, 256, 256), generator=g), torch.rand(12, 256, 256, generator=g) < .3
        torch.manual_seed(seed), np.random.seed(seed)
        theirs = mix.cut_mix(img, lab, conf, conflict)
        torch.manual_seed(seed), np.random.seed(seed)
        q = ours.CutMixParams(torch.randperm(12), torch.tensor(np.random.beta(4, 4)),
                              torch.from_numpy(np.random.randint(size=[12], low=int(256 / 8), high=256)),
                              torch.from_numpy(np.random.randint(size=[12], low=int(256 / 8), high=256)))
        mine = ours.apply_cutmix(q, img, lab, conf, conflict)
        worst = max(worst, *(max_diff(a.float(), b.float()) for a, b in zip(theirs, mine)))
    items.append(numeric("AD-MT cut_mix for the same draws (image, pseudo-label, confidence, conflicts), 20 batches",
                         worst, 0.0))
    np.random.seed(0)
    side_t = [int(256 * np.sqrt(1 - np.random.beta(4, 4))) for _ in range(draws)]
    torch.manual_seed(0)
    side_o = [int(torch.floor(256 * torch.sqrt(1 - ours.draw_cutmix(1, 256, 256, "cpu").lam.double())))
              for _ in range(draws)]
    ks = stats.ks_2samp(side_o, side_t)
    items.append(Item("AD-MT CutMix box side int(256 sqrt(1 - Beta(4, 4))) distribution (two-sample KS)",
                      f"D={ks.statistic:.3g}", ks.pvalue > 1e-3, f"p = {ks.pvalue:.3g}"))

    # The unlabeled Dice loss with the confidence mask.
    admt_losses = load_file(code / "utils" / "losses.py", "admt_losses")
    logits, target, _ = _mix_inputs(5)
    ignore = torch.rand(6, 64, 64, generator=torch.Generator().manual_seed(6)) < 0.4
    items.append(grad_compare("AD-MT unlabeled Dice with ignore (DiceLoss): value and gradient",
                              lambda x: admt_losses.DiceLoss(4)(x.softmax(1), target.unsqueeze(1).float(),
                                                                ignore=ignore.float()),
                              lambda x: dice_loss(x.softmax(1), target, ignore=ignore), logits))

    # Defaults of the config and the loop.
    t = TrainConfig(**{**vars(TrainConfig()), **ours.ADMT.recipe_overrides("published")})
    rampup = [literal(n.right) for n in ast.walk(train_fn)
              if isinstance(n, ast.BinOp) and isinstance(n.op, ast.FloorDiv) and getattr(n.left, "id", "") == "iter_num"]
    strong = kwargs_of(calls(function_source(code / "dataloaders" / "dataset_2d.py", "WeakStrongAugment"),
                             "func_strong_augs")[0])
    jitter = calls(function_source(code / "dataloaders" / "dataset_2d.py", "color_jitter"), "ColorJitter")[0]
    j = draw_jitter.__defaults__  # (g, brightness, contrast, p)
    items.append(_compare("AD-MT config_2d_aut.yml / train_post_2d_aut.py / dataset_2d.py defaults", [
        ("max_iterations", t.iters, yml["max_iterations"]), ("base_lr", t.lr, yml["base_lr"]),
        ("batch", (t.batch_labeled, t.batch_unlabeled), (yml["labeled_bs"], yml["batch_size"] - yml["labeled_bs"])),
        ("poly", t.lr_schedule == "poly", yml["poly"]), ("seed", t.seed, yml["seed"]),
        ("validation", (t.val_every, t.val_epochs), ("epoch", yml["test_interval_ep"])),
        ("ema_decay", cfg.ema_decay, yml["ema_decay"]), ("cutmix_prob", cfg.cutmix_p, yml["cutmix_prob"]),
        ("conf_threshold", cfg.conf_thresh, yml["conf_threshold"]), ("consistency", cfg.consistency,
                                                                     yml["consistency"]),
        ("consistency_rampup", cfg.consistency_rampup, yml["consistency_rampup"]),
        ("teacher warm-up (consistency_rampup)", cfg.teacher_warmup, yml["consistency_rampup"]),
        ("ramp-up step and global step divisors (iter_num // ...)", sorted({cfg.rampup_step, 2}), sorted(set(rampup))),
        ("unlabeled loss", "dice", yml["flag_ulb_loss_type"]), ("conflict mode", cfg.conflict,
                                                                 yml["alt_flag_conflict_mode"]),
        ("period", (cfg.period_max, cfg.period_random), (yml["alt_param_updating_period_iters"],
                                                         yml["alt_flag_updating_period_random"])),
        ("conflict weight (only 1.0 is implemented)", 1.0, yml["alt_param_conflict_weight"]),
        ("ensemble temperature", cfg.temperature, yml["alt_param_ensemble_temp"]),
        ("teachers shuffled per epoch / student uses more / pseudo-labels from the student", (False, False, False),
         (yml["alt_flag_epoch_shuffle_teachers"], yml["alt_flag_conflict_stu_use_more"],
          bool(yml.get("flag_pseudo_from_student", False)))),
        ("strong view p_color, p_blur", (cfg.jitter_p, cfg.blur_p), (strong["p_color"], strong["p_blur"])),
        ("jitter brightness, contrast", (j[1], j[2]), tuple(literal(a) for a in jitter.args[:2])),
        ("blur sigma range", draw_blur.__defaults__[1],
         tuple(literal(a) for a in calls(function_source(code / "dataloaders" / "dataset_2d.py", "blur"),
                                         "uniform")[0].args)),
    ]))
    return items


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--unimatch", type=Path, help="a checkout of LiheYoung/UniMatch")
    p.add_argument("--ssl4mis", type=Path, help="a checkout of HiLab-git/SSL4MIS")
    p.add_argument("--bcp", type=Path, help="a checkout of DeepMed-Lab-ECNU/BCP")
    p.add_argument("--abd", type=Path, help="a checkout of chy-upc/ABD")
    p.add_argument("--admt", type=Path, help="a checkout of ZhenZHAO/AD-MT")
    p.add_argument("--unimatch-v2", type=Path, help="a checkout of LiheYoung/UniMatch-V2")
    p.add_argument("--draws", type=int, default=20000, help="random boxes (and other samples) drawn by each side")
    args = p.parse_args(argv)
    if not any((args.unimatch, args.ssl4mis, args.bcp, args.abd, args.admt, args.unimatch_v2)):
        p.error("give at least one checkout (--unimatch, --ssl4mis, --bcp, --abd, --admt, --unimatch-v2)")
    torch.set_num_threads(min(2, torch.get_num_threads()))
    warnings.filterwarnings("ignore", category=UserWarning)  # their code uses since-deprecated torch signatures
    warnings.filterwarnings("ignore", category=FutureWarning)

    items: list[Item] = []
    um = sm = None
    if args.unimatch is not None:
        um = args.unimatch / "more-scenarios" / "medical"
        um = um if um.is_dir() else args.unimatch
        um_unet = load_file(um / "model" / "unet.py", "unimatch_unet").UNet
        items += check_unet("UniMatch", um_unet)
        items.append(check_feature_perturbation(um_unet))
    if args.ssl4mis is not None:
        sm = args.ssl4mis / "code" if (args.ssl4mis / "code").is_dir() else args.ssl4mis
        ssl_unet = load_file(sm / "networks" / "unet.py", "ssl4mis_unet")
        items += check_unet("SSL4MIS", ssl_unet.UNet)
        items += check_unet_variants(ssl_unet)
    if um is not None or sm is not None:
        items += check_losses(load_file(um / "util" / "utils.py", "unimatch_utils") if um else None,
                              load_file(sm / "utils" / "losses.py", "ssl4mis_losses") if sm else None)
    if sm is not None:
        items += check_mean_teacher(sm)
        items += check_ssl4mis_steps(sm)
        items += check_ssl4mis_schedules(sm, args.draws)
    if um is not None:
        items += check_cutmix(load_file(um / "dataset" / "transform.py", "unimatch_transform"), args.draws)
    if um is not None or sm is not None:
        items += check_recipes(um, sm)
    if sm is not None:
        items += check_zoo_recipes(sm)
    if args.bcp is not None:
        items += check_bcp(args.bcp, args.draws)
    if args.abd is not None:
        items += check_abd(args.abd, args.draws)
    if args.admt is not None:
        items += check_admt(args.admt, args.draws)
    if args.unimatch_v2 is not None:
        items += check_unimatch_v2(args.unimatch_v2, args.draws)

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
