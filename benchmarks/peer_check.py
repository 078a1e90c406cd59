"""Check ssbench against the official code yourself: on identical weights and inputs, compare ssbench's UNet,
losses, Mean Teacher schedule and EMA, CutMix boxes and published recipe defaults with the official UniMatch
(medical branch) and SSL4MIS code; UA-MT, URPC, CCT, ICT and CPS with their SSL4MIS scripts; UniMatch V2's
network, teacher, masks and losses with LiheYoung/UniMatch-V2 — each imported from a checkout you fetched.

    git clone https://github.com/LiheYoung/UniMatch      # or any checkout of it
    git clone https://github.com/HiLab-git/SSL4MIS
    git clone https://github.com/LiheYoung/UniMatch-V2
    python benchmarks/peer_check.py [--unimatch UniMatch] [--ssl4mis SSL4MIS] [--unimatch-v2 UniMatch-V2] [--draws N]

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
def cuda_calls_on_cpu():
    """Their ``.cuda()`` calls as no-ops while their statements run here."""
    saved = torch.Tensor.cuda
    torch.Tensor.cuda = lambda self, *a, **k: self
    try:
        yield
    finally:
        torch.Tensor.cuda = saved


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
    with cuda_calls_on_cpu():
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
    with torch.no_grad(), cuda_calls_on_cpu(), patched(torch, "randperm", lambda n, *a, **k: perm.clone()):
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
    with cuda_calls_on_cpu():
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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--unimatch", type=Path, help="a checkout of LiheYoung/UniMatch")
    p.add_argument("--ssl4mis", type=Path, help="a checkout of HiLab-git/SSL4MIS")
    p.add_argument("--unimatch-v2", type=Path, help="a checkout of LiheYoung/UniMatch-V2")
    p.add_argument("--draws", type=int, default=20000, help="CutMix boxes (and other samples) drawn by each side")
    args = p.parse_args(argv)
    if not (args.unimatch or args.ssl4mis or args.unimatch_v2):
        p.error("give at least one checkout: --unimatch, --ssl4mis or --unimatch-v2")
    torch.set_num_threads(min(2, torch.get_num_threads()))
    warnings.filterwarnings("ignore", category=UserWarning)  # their code uses since-deprecated torch signatures
    warnings.filterwarnings("ignore", category=FutureWarning)

    um = None
    if args.unimatch is not None:
        um = args.unimatch / "more-scenarios" / "medical"
        um = um if um.is_dir() else args.unimatch
    sm = None
    if args.ssl4mis is not None:
        sm = args.ssl4mis / "code" if (args.ssl4mis / "code").is_dir() else args.ssl4mis

    items: list[Item] = []
    um_utils = ssl_losses = None
    if um is not None:
        um_unet = load_file(um / "model" / "unet.py", "unimatch_unet").UNet
        items += check_unet("UniMatch", um_unet)
        items.append(check_feature_perturbation(um_unet))
        um_utils = load_file(um / "util" / "utils.py", "unimatch_utils")
    if sm is not None:
        ssl_unet = load_file(sm / "networks" / "unet.py", "ssl4mis_unet")
        items += check_unet("SSL4MIS", ssl_unet.UNet)
        items += check_unet_variants(ssl_unet)
        ssl_losses = load_file(sm / "utils" / "losses.py", "ssl4mis_losses")
    items += check_losses(um_utils, ssl_losses)
    if sm is not None:
        items += check_mean_teacher(sm)
        items += check_ssl4mis_steps(sm)
        items += check_ssl4mis_schedules(sm, args.draws)
    if um is not None:
        items += check_cutmix(load_file(um / "dataset" / "transform.py", "unimatch_transform"), args.draws)
    items += check_recipes(um, sm)
    if sm is not None:
        items += check_zoo_recipes(sm)
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
