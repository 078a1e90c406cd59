"""Peer check against HiLab-git/SSL4MIS."""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats

from .common import (Item, calls, check_unet, compare_pairs, copy_weights, cuda_on_cpu, load_file, loop_statements,
                     loss_inputs, max_diff, numeric, own_noise, patched, script_defaults, script_functions, seed_all,
                     step_item)


def check_mean_teacher(code: Path) -> list[Item]:
    from ssbench.methods.blocks.ema import ema_alpha, ema_update
    from ssbench.methods.mean_teacher import MeanTeacherConfig, consistency_weight
    from ssbench.methods.blocks.unet import UNet

    script = code / "train_mean_teacher_2D.py"
    defaults = script_defaults(script)
    ramps = load_file(code / "utils" / "ramps.py", "ssl4mis_ramps")
    ns = {"args": argparse.Namespace(**{k.replace("-", "_"): v for k, v in defaults.items()}), "ramps": ramps}
    fns = script_functions(script, ["get_current_consistency_weight", "update_ema_variables"], ns)
    cfg = MeanTeacherConfig()
    # Their loop: weight = get_current_consistency_weight(iter_num // 150); the loss is 0 while iter_num < 1000.
    iters = range(int(defaults.get("max_iterations", 30000)))
    # the loop's own statement for the weight, and the iteration before which its consistency loss is 0.0
    weight = loop_statements(script, "consistency_weight =", "consistency_weight =")
    start = next(ast.literal_eval(n.test.comparators[0]) for n in ast.walk(ast.parse(script.read_text()))
                 if isinstance(n, ast.If) and ast.unparse(n.test).startswith("iter_num <")
                 and ast.unparse(n.body[0]).startswith("consistency_loss = 0"))
    theirs = []
    for it in iters:
        ns["iter_num"] = it
        exec(weight, ns)
        theirs.append(ns["consistency_weight"] * (it >= start))
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


def _numpy_threshold(device):
    """``perturb.threshold_factor`` drawn as the official FeatureDropout draws it (NumPy's global generator), so
    that both sides make the same random draws in the same order."""
    return float(np.random.uniform(0.7, 0.9))


def _numpy_beta(n, alpha, device):
    """ICT's mixing coefficients drawn as the official script draws them (NumPy)."""
    return torch.tensor(np.random.beta(alpha, alpha, size=(n, 1, 1, 1)), dtype=torch.float)


def check_unet_variants(unet_module) -> list[Item]:
    """UNet_URPC and UNet_CCT against ``UNet(aux_heads=True)`` / ``UNet(aux_decoders=3)``: shapes, counts, initial
    weights under one seed, and every output in eval and (perturbed) train mode on the same random draws."""
    from ssbench.methods.blocks import perturb
    from ssbench.methods.cct import CCTConfig, perturbed_outputs
    from ssbench.methods.blocks.unet import UNet
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


def _step_batch(n_lab=4, n_unl=4, size=64, seed=11):
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(n_lab + n_unl, 1, size, size, generator=g)
    label = torch.randint(0, 4, (n_lab + n_unl, size, size), generator=g)
    return image, label, n_lab


def _their_step(code: Path, script: str, models: dict, image, label, n_lab, iteration, seed=5):
    """One step of the official script up to its total loss, executed as written, on our batch and models: the
    namespace after its statements (every intermediate of the loop under its own name)."""
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
          "sampled_batch": {"image": image.clone(), "label": label.clone()}, **models}
    if script == "train_fully_supervised_2D.py":  # its loader draws labeled slices only
        ns["sampled_batch"] = {"image": image[:n_lab].clone(), "label": label[:n_lab].clone()}
    if "get_current_consistency_weight" in path.read_text():
        script_functions(path, ["get_current_consistency_weight"], ns)
    last = {"train_cross_pseudo_supervision_2D.py": "loss = model1_loss",
            "train_fully_supervised_2D.py": "loss = 0.5"}.get(script, "loss = supervised_loss")
    seed_all(seed)
    with cuda_on_cpu(), own_noise(seed):
        exec(loop_statements(path, "volume_batch, label_batch =", last), ns)
    return ns


def _our_step(method, image, label, n_lab, iteration, total, seed=5):
    from ssbench.methods.api import Batch, StepInfo

    seed_all(seed)
    method.train()
    unlabeled = Batch(image[n_lab:].clone()) if method.uses_unlabeled else None
    with own_noise(seed):
        return method.training_step(Batch(image[:n_lab].clone(), label[:n_lab].clone()), unlabeled,
                                    StepInfo(iteration, total))


def _confident(net: torch.nn.Module, scale: float = 30.0) -> None:
    """Sharpen a random network's output (its last conv x scale) so that entropies and confidences spread."""
    with torch.no_grad():
        last = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)][-1]
        last.weight.mul_(scale), last.bias.mul_(scale)


def _perturbed(net: torch.nn.Module) -> torch.nn.Module:
    """A teacher that is not the student (as after training), so that consistency terms are not zero."""
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    return net


def _iterations(path: Path) -> tuple[int, int, int]:
    """The first iteration, the middle of the ramp-ups (of the run: UA-MT's threshold; iteration // 150 of 200:
    the weights) and the last, from the script's max_iterations."""
    n = int(script_defaults(path)["max_iterations"])
    return 0, n // 2, n - 1


def step_specs(unet):
    """Per method: (label, script, build(ctx) -> (method, the official loop's models, [(theirs, ours)] networks
    whose gradients are compared), patches, terms, the official supervised term). A term is (label, an expression
    in the official loop's namespace, a function of ssbench's step output)."""
    from ssbench.methods import ict as ict_module
    from ssbench.methods.blocks import perturb
    from ssbench.methods.cct import CCT, CCTConfig
    from ssbench.methods.cps import CPS, CPSConfig
    from ssbench.methods.ict import ICT, ICTConfig
    from ssbench.methods.mean_teacher import MeanTeacher, MeanTeacherConfig
    from ssbench.methods.supervised import Supervised, SupervisedConfig
    from ssbench.methods.uamt import UAMT, UAMTConfig
    from ssbench.methods.urpc import URPC, URPCConfig

    def teacher_student(cls, cfg, sharpen=False):
        def build(ctx):
            method = cls(cfg, ctx)
            _perturbed(method.teacher)
            if sharpen:  # a consistency term whose gradient float32 resolves (UA-MT: a mask neither empty nor full)
                _confident(method.teacher)
            student, teacher = unet.UNet(1, 4), unet.UNet(1, 4)
            copy_weights(student, method.student), copy_weights(teacher, method.teacher)
            return method, {"model": student, "ema_model": teacher}, [(student, method.student)]
        return build

    def single(cls, cfg, their_cls, attr="net"):  # their network class by name (looked up when built)
        def build(ctx):
            method = cls(cfg, ctx)
            theirs = getattr(unet, their_cls)(1, 4)
            copy_weights(theirs, getattr(method, attr))
            return method, {"model": theirs}, [(theirs, getattr(method, attr))]
        return build

    def cps(ctx):
        method = CPS(CPSConfig(), ctx)
        model1, model2 = unet.UNet(1, 4), unet.UNet(1, 4)
        copy_weights(model1, method.model1), copy_weights(model2, method.model2)
        return method, {"model1": model1, "model2": model2}, [(model1, method.model1), (model2, method.model2)]

    sup = ("supervised", "supervised_loss", lambda o: o["loss_sup"])
    cons = ("unlabeled", "consistency_loss", lambda o: o["loss_cons"])
    weight = ("weight", "consistency_weight", lambda o: o["cons_weight"])
    threshold = (perturb, "threshold_factor", _numpy_threshold)
    return [
        ("supervised", "train_fully_supervised_2D.py", single(Supervised, SupervisedConfig(), "UNet"), [],
         [("(CE + Dice)/2", "loss", lambda o: o["loss"])], None),
        ("Mean Teacher", "train_mean_teacher_2D.py", teacher_student(MeanTeacher, MeanTeacherConfig(), True), [],
         [sup, ("weight x unlabeled", "consistency_weight * consistency_loss",
                lambda o: o["cons_weight"] * o["loss_cons"])], "supervised_loss"),
        ("UA-MT", "train_uncertainty_aware_mean_teacher_2D.py", teacher_student(UAMT, UAMTConfig(), True), [],
         [sup, cons, weight, ("threshold", "threshold", None),
          ("certain fraction", "mask.mean()", lambda o: o["certain_ratio"])], "supervised_loss"),
        ("URPC", "train_uncertainty_rectified_pyramid_consistency_2D.py",
         single(URPC, URPCConfig(), "UNet_URPC"), [threshold], [sup, cons, weight], "supervised_loss"),
        ("CCT", "train_cross_consistency_training_2D.py", single(CCT, CCTConfig(), "UNet_CCT"), [threshold],
         [sup, cons, weight], "supervised_loss"),
        ("ICT", "train_interpolation_consistency_training_2D.py", teacher_student(ICT, ICTConfig(), True),
         [(ict_module, "mix_factors", _numpy_beta)], [sup, cons, weight], "supervised_loss"),
        ("CPS", "train_cross_pseudo_supervision_2D.py", cps, [],
         [("model1 loss", "model1_loss", lambda o: o["loss_model1"]),
          ("model2 loss", "model2_loss", lambda o: o["loss_model2"]),
          ("unlabeled (mean of the two)", "(pseudo_supervision1 + pseudo_supervision2) / 2",
           lambda o: o["loss_cps"]), weight], "loss1 + loss2"),
    ]


def check_ssl4mis_steps(code: Path, specs=None) -> list[Item]:
    """Supervised, Mean Teacher, UA-MT, URPC, CCT, ICT and CPS: a training step of the official script (its
    loop's statements, executed) beside ssbench's ``training_step`` on the same weights, batch and random draws,
    at the first iteration, the middle of the ramp-up and the last: each term, the total, every gradient and the
    unlabeled part of the gradient (``step_item``). Where their code draws from NumPy (FeatureDropout's
    threshold, ICT's Beta), ours draws the same numbers here (``check_threshold_draw`` and the Beta item cover
    the production draws)."""
    from contextlib import ExitStack

    from ssbench.methods.api import MethodContext
    from ssbench.methods.uamt import UAMTConfig, uncertainty_threshold

    unet = load_file(code / "networks" / "unet.py", "ssl4mis_unet")
    image, label, n_lab = _step_batch()
    items = []
    for name, script, build, patches, terms, supervised in (specs or step_specs(unet)):
        for it in _iterations(code / script):
            ctx = MethodContext(1, 4, image.shape[-1], 30000, torch.device("cpu"))
            torch.manual_seed(0)
            method, models, pairs = build(ctx)
            with ExitStack() as stack:
                for module, attr, value in patches:
                    stack.enter_context(patched(module, attr, value))
                ns = _their_step(code, script, models, image, label, n_lab, it)
                out = _our_step(method, image, label, n_lab, it, 30000)
            values = []
            for label_, expr, ours in terms:
                if ours is None:  # UA-MT's threshold: ssbench's function of the iteration
                    ours_value = uncertainty_threshold(it, 30000, UAMTConfig())
                else:
                    ours_value = ours(out)
                values.append((label_, eval(expr, ns), ours_value))
            their_params = [p for t, _ in pairs for p in t.parameters()]
            our_params = [p for _, o in pairs for p in o.parameters()]
            items.append(step_item(f"SSL4MIS {name}: step at iteration {it} (terms, total, gradients)", values,
                                   (ns["loss"], their_params), (out["loss"], our_params),
                                   eval(supervised, ns) if supervised else None))
    return items


def check_ssl4mis_schedules(code: Path, draws: int) -> list[Item]:
    """Every iteration of 30k: the unlabeled weight of each script and UA-MT's uncertainty threshold; ICT's Beta
    draws against NumPy's (two-sample KS)."""
    from ssbench.methods.cct import CCTConfig
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
            ("CCT", "train_cross_consistency_training_2D.py", CCTConfig().weight),
            ("ICT", "train_interpolation_consistency_training_2D.py", lambda i: consistency_weight(i, ICTConfig())),
            ("CPS", "train_cross_pseudo_supervision_2D.py", CPSConfig().weight)):
        path = code / script
        defaults = script_defaults(path)
        ns = {"args": argparse.Namespace(**defaults), "ramps": ramps}
        fn = script_functions(path, ["get_current_consistency_weight"], ns)["get_current_consistency_weight"]
        ns["get_current_consistency_weight"] = fn
        statement, theirs = loop_statements(path, "consistency_weight =", "consistency_weight ="), []
        for i in iters:  # the loop's own statement (its iter_num // 150)
            ns["iter_num"] = i
            exec(statement, ns)
            theirs.append(ns["consistency_weight"])
        items.append(numeric(f"SSL4MIS {name}: unlabeled weight, every iteration of 30k",
                             max_diff(theirs, [ours(i) for i in iters]), 1e-12))
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


def check_zoo_recipes(ssl4mis: Path) -> list[Item]:
    """Each SSL4MIS script's argparse defaults against the method's published config and recipe."""
    from ssbench.engine.runconfig import TrainConfig
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
                 ("seed", t["seed"], d["seed"]), ("optimizer", t["optimizer"], optimizer(ssl4mis / script)),
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



def optimizer(script: Path) -> str:
    """The optimizer a script builds: 'sgd' where it calls optim.SGD and nothing else."""
    tree = ast.parse(script.read_text())
    found = {name for name in ("SGD", "Adam", "AdamW") if calls(tree, name)}
    return "sgd" if found == {"SGD"} else "/".join(sorted(found)).lower()


def check_losses(losses) -> list[Item]:
    from ssbench.methods.blocks.losses import ce_dice_loss, dice_loss

    logits, target, _ = loss_inputs()
    probs = logits.softmax(1)
    items = [numeric("SSL4MIS Dice loss (no ignore)", max_diff(losses.DiceLoss(4)(probs, target.unsqueeze(1)),
                                                               dice_loss(probs, target)))]
    l1, l2 = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    theirs = 0.5 * (losses.DiceLoss(4)(l1.softmax(1), target.unsqueeze(1)) + F.cross_entropy(l1, target))
    ours = ce_dice_loss(l2, target)
    theirs.backward(), ours.backward()
    items.append(numeric("SSL4MIS 0.5 (Dice + CE): value and gradient", max(max_diff(theirs, ours),
                                                                         max_diff(l1.grad, l2.grad))))
    return items


def check_recipes(code: Path) -> list[Item]:
    """The Mean Teacher and fully supervised scripts' argparse defaults against the published recipes."""
    from ssbench.engine.runconfig import TrainConfig
    from ssbench.methods.mean_teacher import MeanTeacher, MeanTeacherConfig
    from ssbench.methods.supervised import Supervised

    def published(method_cls) -> dict:
        return {**vars(TrainConfig()), **method_cls.recipe_overrides("published")}

    mt = script_defaults(code / "train_mean_teacher_2D.py")
    ours, mtc = published(MeanTeacher), MeanTeacherConfig()
    name = "SSL4MIS Mean Teacher defaults (lr, batches, iterations, EMA, consistency, seed, optimizer)"
    items = [compare_pairs(name, [
        ("lr", ours["lr"], mt["base_lr"]), ("batch labeled+unlabeled", ours["batch_labeled"] + ours["batch_unlabeled"],
                                           mt["batch_size"]),
        ("batch labeled", ours["batch_labeled"], mt["labeled_bs"]), ("iterations", ours["iters"], mt["max_iterations"]),
        ("ema_decay", mtc.ema_decay, mt["ema_decay"]), ("consistency", mtc.consistency, mt["consistency"]),
        ("consistency_rampup", mtc.consistency_rampup, mt["consistency_rampup"]), ("seed", ours["seed"], mt["seed"]),
        ("optimizer", ours["optimizer"], optimizer(code / "train_mean_teacher_2D.py")),
    ])]
    fs = script_defaults(code / "train_fully_supervised_2D.py")
    ours = published(Supervised)
    items.append(compare_pairs("SSL4MIS fully supervised defaults (lr, batch, iterations, seed, optimizer)", [
        ("lr", ours["lr"], fs["base_lr"]), ("batch", ours["batch_labeled"], fs["batch_size"]),
        ("iterations", ours["iters"], fs["max_iterations"]), ("seed", ours["seed"], fs["seed"]),
        ("optimizer", ours["optimizer"], optimizer(code / "train_fully_supervised_2D.py")),
    ]))
    return items


def run(root: Path, draws: int) -> list[Item]:
    code = root / "code" if (root / "code").is_dir() else root
    unet = load_file(code / "networks" / "unet.py", "ssl4mis_unet")
    items = check_unet("SSL4MIS", unet.UNet)
    items += check_unet_variants(unet)
    items += check_losses(load_file(code / "utils" / "losses.py", "ssl4mis_losses"))
    items += check_mean_teacher(code)
    items += check_ssl4mis_steps(code)
    items.append(check_threshold_draw(unet, draws))
    items.append(check_weak_augmentation(code, draws // 4))
    items += check_ssl4mis_schedules(code, draws)
    items += check_recipes(code)
    items += check_zoo_recipes(code)
    return items


def check_threshold_draw(unet, draws: int) -> Item:
    """The draw the step items replace: FeatureDropout's threshold factor, read off each side's production code.
    Both run on a ramp 0 .. 1 of 10,001 positions whose maximum is 1, so that the kept fraction is the factor
    (to 1e-4); their ``FeatureDropout`` draws it from NumPy, ``perturb.feature_dropout`` from torch."""
    from ssbench.methods.blocks import perturb

    ramp = torch.linspace(0, 1, 10001).view(1, 1, 1, -1)
    np.random.seed(0)
    torch.manual_seed(0)
    theirs = np.array([float((unet.FeatureDropout(ramp) != 0).sum()) / ramp.numel() for _ in range(draws)])
    ours = np.array([float((perturb.feature_dropout(ramp) != 0).sum()) / ramp.numel() for _ in range(draws)])
    ks = stats.ks_2samp(ours, theirs)
    return Item("SSL4MIS FeatureDropout threshold factor (production draws, two-sample KS)", f"D={ks.statistic:.3g}",
                bool(ks.pvalue > 1e-3), f"p = {ks.pvalue:.3g}; range ours {ours.min():.4f}-{ours.max():.4f}, theirs "
                                  f"{theirs.min():.4f}-{theirs.max():.4f}; {draws} each")


def check_weak_augmentation(code: Path, draws: int) -> Item:
    """SSL4MIS's ``RandomGenerator`` at this checkout (the commit ssbench cites for its SSL4MIS methods; since
    24db034 it always augments) beside ssbench's ``train.augment=rotflip-or-rotate``. The default,
    ``rotflip-rotate``, is UniMatch's (its own item), which leaves 1 slice in 4 unaugmented."""
    import random

    from scipy import ndimage
    from scipy.ndimage import zoom

    from .common import check_weak, script_classes

    path = code / "dataloaders" / "dataset.py"  # its module imports cv2: its functions are read off its syntax tree
    ns = {"np": np, "random": random, "ndimage": ndimage, "zoom": zoom, "torch": torch}
    script_functions(path, ["random_rot_flip", "random_rotate"], ns)
    generator = script_classes(path, ["RandomGenerator"], ns)["RandomGenerator"]
    def theirs(image):
        return generator(image.shape)({"image": image, "label": np.zeros(image.shape, np.uint8)})["image"][0].numpy()

    return check_weak("SSL4MIS RandomGenerator vs train.augment=rotflip-or-rotate", theirs, draws, always=True)
