"""Peer check against ZhenZHAO/AD-MT."""

from __future__ import annotations

import ast
import inspect
import math
import types
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats

from .common import (Item, calls, check_unet, compare_pairs, function_source, grad_compare, kwargs_of, literal,
                     load_file, max_diff, mix_inputs, numeric, script_classes, script_defaults, script_functions,
                     statements_between)


def run(root: Path, draws: int) -> list[Item]:
    import yaml

    from ssbench.engine.runconfig import TrainConfig
    from ssbench.methods import admt as ours
    from ssbench.methods.blocks.ema import ema_update
    from ssbench.methods.blocks.losses import dice_loss
    from ssbench.methods.blocks.strong import color_jitter, gaussian_blur
    from ssbench.methods.blocks.unet import UNet

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
    # The production draws of the periods: run lengths of each side's flags (their AlternateUpdate on NumPy,
    # ssbench's schedule on its seeded generator), the last, unfinished run left out.
    def runs(flags):
        edges = np.flatnonzero(np.diff(np.array(flags, int))) + 1
        return np.diff(np.concatenate([[0], edges]))

    np.random.seed(1)
    theirs = classes["AlternateUpdate"](yml["alt_param_updating_period_iters"], initial_flag=True,
                                        flag_random=yml["alt_flag_updating_period_random"])
    production = ours.AlternateSchedule(cfg.period_max, cfg.period_random, 1337)
    flags_t, flags_o = [], []
    for _ in range(draws * 10):
        flags_t.append(theirs.get_alternate_state()), flags_o.append(production.flag)
        theirs.update(), production.update()
    r_t, r_o = runs(flags_t), runs(flags_o)
    top = int(max(r_t.max(), r_o.max()))
    chi = stats.chi2_contingency(np.array([np.bincount(r, minlength=top + 1)[1:] for r in (r_o, r_t)]))
    items.append(Item("AD-MT periods (production draws): run lengths of the teacher flag (chi-square, two samples)",
                      f"p={chi.pvalue:.3g}", bool(chi.pvalue > 1e-3 and r_o.min() == r_t.min()
                                                  and r_o.max() == r_t.max()),
                      f"{len(r_o)} vs {len(r_t)} periods; range ours {r_o.min()}-{r_o.max()}, theirs "
                      f"{r_t.min()}-{r_t.max()}"))

    # Teacher decay schedule and EMA (parameters and buffers), from their update_ema_variables.
    upd = script_functions(script, ["update_ema_variables"], {"torch": torch})["update_ema_variables"]
    train_fn = function_source(script, "train")
    # the global step their loop gives the teachers' EMA: iter_num // k, k read from its calls
    ema_div = {literal(c.args[3].right) for c in calls(train_fn, "update_ema_variables")
               if isinstance(c.args[3], ast.BinOp)}
    if len(ema_div) != 1:
        raise SystemExit(f"peer_check: {script}: update_ema_variables called with steps {sorted(ema_div)}")
    ema_div = ema_div.pop()
    args = {"consistency_rampup": yml["consistency_rampup"]}
    worst = 0.0
    for it in range(30000):
        s_, e_ = torch.nn.Linear(1, 1, bias=False), torch.nn.Linear(1, 1, bias=False)
        with torch.no_grad():
            s_.weight.fill_(1.0), e_.weight.fill_(0.0)
        upd(s_, e_, yml["ema_decay"], it // ema_div, args)
        worst = max(worst, abs((1 - float(e_.weight)) - ours.teacher_decay(it, cfg)))
    items.append(numeric(f"AD-MT teacher decay (update_ema_variables at iter_num // {ema_div}), every step of 30,000",
                         worst,
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
        upd(student, t_theirs, yml["ema_decay"], it // ema_div, args)
        ema_update(t_ours, student, ours.teacher_decay(it, cfg), cfg.ema_buffers)
        # num_batches_tracked is averaged into a float there and copied here: BatchNorm reads it only without a
        # momentum, and the UNet's BatchNorm has one (0.1).
        worst = max(worst, max(max_diff(a, b) for (k, a), b in zip(t_theirs.state_dict().items(),
                                                                   t_ours.state_dict().values())
                               if not k.endswith("num_batches_tracked")))
    items.append(numeric("AD-MT EMA update of a teacher (parameters, BN running statistics), 4 steps", worst))

    # Entropy fusion: the statements of their loop, executed on identical softmaxes.
    fusion = statements_between(train_fn, "entropy_1", "pseudo_logits")
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
    logits, target, _ = mix_inputs(5)
    ignore = torch.rand(6, 64, 64, generator=torch.Generator().manual_seed(6)) < 0.4
    items.append(grad_compare("AD-MT unlabeled Dice with ignore (DiceLoss): value and gradient",
                              lambda x: admt_losses.DiceLoss(4)(x.softmax(1), target.unsqueeze(1).float(),
                                                                ignore=ignore.float()),
                              lambda x: dice_loss(x.softmax(1), target, ignore=ignore), logits))

    items += check_steps(root, code, yml)
    items += check_cutmix_draws(mix, draws)

    # Defaults of the config and the loop.
    t = TrainConfig(**{**vars(TrainConfig()), **ours.ADMT.recipe_overrides("published")})
    rampup = {literal(c.args[0].right) for c in calls(train_fn, "get_current_consistency_weight")}
    strong = kwargs_of(calls(function_source(code / "dataloaders" / "dataset_2d.py", "WeakStrongAugment"),
                             "func_strong_augs")[0])
    jitter = calls(function_source(code / "dataloaders" / "dataset_2d.py", "color_jitter"), "ColorJitter")[0]
    # the strengths ADMT.strong uses: the defaults of the functions it calls without them
    jit, blur = inspect.signature(color_jitter).parameters, inspect.signature(gaussian_blur).parameters
    items.append(compare_pairs("AD-MT config_2d_aut.yml / train_post_2d_aut.py / dataset_2d.py defaults", [
        ("max_iterations", t.iters, yml["max_iterations"]), ("base_lr", t.lr, yml["base_lr"]),
        ("batch", (t.batch_labeled, t.batch_unlabeled), (yml["labeled_bs"], yml["batch_size"] - yml["labeled_bs"])),
        ("poly", t.lr_schedule == "poly", yml["poly"]), ("seed", t.seed, yml["seed"]),
        ("validation", (t.val_every, t.val_epochs), ("epoch", yml["test_interval_ep"])),
        ("ema_decay", cfg.ema_decay, yml["ema_decay"]), ("cutmix_prob", cfg.cutmix_p, yml["cutmix_prob"]),
        ("conf_threshold", cfg.conf_thresh, yml["conf_threshold"]), ("consistency", cfg.consistency,
                                                                     yml["consistency"]),
        ("consistency_rampup", cfg.consistency_rampup, yml["consistency_rampup"]),
        ("teacher warm-up (consistency_rampup)", cfg.teacher_warmup, yml["consistency_rampup"]),
        ("ramp-up step (get_current_consistency_weight(iter_num // ...))", {cfg.rampup_step}, rampup),
        ("conflict mode", cfg.conflict,
                                                                 yml["alt_flag_conflict_mode"]),
        ("period", (cfg.period_max, cfg.period_random), (yml["alt_param_updating_period_iters"],
                                                         yml["alt_flag_updating_period_random"])),
        ("ensemble temperature", cfg.temperature, yml["alt_param_ensemble_temp"]),
        ("teachers shuffled per epoch / student uses more / pseudo-labels from the student", (False, False, False),
         (yml["alt_flag_epoch_shuffle_teachers"], yml["alt_flag_conflict_stu_use_more"],
          bool(yml.get("flag_pseudo_from_student", False)))),
        ("strong view p_color, p_blur", (cfg.jitter_p, cfg.blur_p), (strong["p_color"], strong["p_blur"])),
        ("jitter brightness, contrast", (jit["brightness"].default, jit["contrast"].default),
         tuple(literal(a) for a in jitter.args[:2])),
        ("blur sigma range", blur["sigma"].default,
         tuple(literal(a) for a in calls(function_source(code / "dataloaders" / "dataset_2d.py", "blur"),
                                         "uniform")[0].args)),
    ]))
    return items



class _Draws:
    """NumPy for their ``cut_mix`` and loop: ``random.beta``/``random.randint``/``random.random`` return given
    values in turn (ssbench's CutMix draws), everything else is NumPy."""

    def __init__(self, beta=(), randint=(), random=()):
        b, r, u = list(beta), list(randint), list(random)
        self.random = types.SimpleNamespace(beta=lambda *a, **k: b.pop(0), randint=lambda *a, **k: r.pop(0),
                                            random=lambda *a, **k: u.pop(0))

    def __getattr__(self, name):
        return getattr(np, name)


def check_steps(root: Path, code: Path, yml: dict) -> list[Item]:
    """AD-MT's training step in each teacher's period (the first teacher's: the loader's strong view; the
    second's: CutMix of the weak view) at the first iteration, the middle of the ramp-up and the last: the
    statements of ``train``'s loop from the batch to the total loss, executed as written beside ssbench's
    ``training_step``, on the same weights (three independent networks) and batch. ssbench draws the strong view
    and the CutMix (recorded; their ``cut_mix`` runs on NumPy and ``torch.randperm`` returning those draws); each
    train-mode pass starts from the same seed on both sides."""
    from ssbench.methods import admt as ours
    from ssbench.methods.api import Batch, MethodContext, StepInfo

    from .common import copy_weights, cuda_on_cpu, loop_statements, patched, reseeded, step_item

    script = code / "train_post_2d_aut.py"
    unet = load_file(code / "networks" / "unet.py", "admt_unet")
    losses = load_file(code / "utils" / "losses.py", "admt_losses")
    ramps = load_file(code / "utils" / "ramps.py", "admt_ramps")
    mix = load_file(code / "dataloaders" / "mixaugs.py", "admt_mixaugs")
    util_ns = {"np": np, "torch": torch, "F": F}
    conflicts = script_functions(code / "train_utils.py", ["get_compromise_pseudo_btw_tea_stu"], util_ns)
    cfg = ours.ADMTConfig()
    n, size = 2, 64
    g = torch.Generator().manual_seed(51)
    lab_img, unl_img = torch.rand(n, 1, size, size, generator=g), torch.rand(n, 1, size, size, generator=g)
    lab = torch.randint(0, 4, (n, size, size), generator=g)
    last_it = int(yml["max_iterations"]) - 1
    mid = int(yml["consistency_rampup"]) * cfg.rampup_step // 2  # t = iteration // 150 halfway up its 50
    items = []
    for it in (0, mid, last_it):
        for first in (True, False):
            torch.manual_seed(0)
            method = ours.ADMT(cfg, MethodContext(1, 4, size, 30000, torch.device("cpu")))
            method.schedule.flag = first
            with torch.no_grad():  # confident networks: pixels above 0.95, conflicts the student sometimes wins
                method.teacher2.load_state_dict(method.teacher.state_dict())
                for p in method.teacher2.parameters():
                    p.add_(torch.randn_like(p) * 0.05)
                for t, scale in ((method.teacher, 150), (method.teacher2, 150), (method.student, 80)):
                    [m for m in t.modules() if isinstance(m, torch.nn.Conv2d)][-1].weight.mul_(scale)
            nets = {"model": unet.UNet(1, 4), "ema_model": unet.UNet(1, 4), "ema_model_another": unet.UNet(1, 4)}
            for name, mine in (("model", method.student), ("ema_model", method.teacher),
                               ("ema_model_another", method.teacher2)):
                copy_weights(nets[name], mine)
            views, draws = [], []
            real_strong, real_draw = method.strong, ours.draw_cutmix

            def strong(x):
                views.append(real_strong(x))
                return views[-1]

            def draw_cutmix(*a, **k):
                draws.append(real_draw(*a, **k))
                return draws[-1]

            method.strong = strong
            method.train()
            torch.manual_seed(5)
            with patched(ours, "draw_cutmix", draw_cutmix), reseeded(method.teacher, method.teacher2,
                                                                     method.student):
                out = method.training_step(Batch(lab_img.clone(), lab.clone()), Batch(unl_img.clone()),
                                           StepInfo(it, 30000))
            del method.strong
            strong_u = views[0] if views else unl_img.clone()
            order = (lambda lb, ulb: torch.cat([lb, ulb])) if yml.get("flag_sampling_based_on_lb", False) else \
                (lambda lb, ulb: torch.cat([ulb, lb]))
            q = draws[0] if draws else None
            args = {**script_defaults(script), **yml, "labeled_bs": n, "batch_size": 2 * n}  # as update_values
            ns = {"torch": torch, "np": _Draws(random=[0.0] if q is not None else [0.99]), "F": F, "args": args,
                  "batch_size": 2 * n, "iter_num": it, "flag_start_self_learning": False,
                  "alternate_indicator": types.SimpleNamespace(get_alternate_state=lambda f=first: f),
                  "alt_param_ensemble_temp": yml["alt_param_ensemble_temp"],
                  "alt_flag_conflict_mode": yml["alt_flag_conflict_mode"],
                  "alt_flag_conflict_stu_use_more": yml["alt_flag_conflict_stu_use_more"],
                  "var_param_conflict_weight": yml["alt_param_conflict_weight"],
                  "ce_loss": torch.nn.CrossEntropyLoss(), "dice_loss": losses.DiceLoss(4), "ramps": ramps,
                  "cut_mix": mix.cut_mix, **conflicts, **nets,
                  "sampled_batch": {"image_weak": order(lab_img, unl_img), "image_strong": order(lab_img, strong_u),
                                    "label_aug": order(lab, torch.zeros_like(lab))}}
            script_functions(script, ["get_current_consistency_weight"], ns)
            their_np = _Draws(beta=[float(q.lam)] if q else [],
                              randint=[q.cx.numpy(), q.cy.numpy()] if q else [])
            nets["model"].train()
            with cuda_on_cpu(), reseeded(nets["ema_model"], nets["ema_model_another"], nets["model"]), \
                    patched(mix, "np", their_np), \
                    patched(torch, "randperm", lambda *a, **k: q.perm.clone() if q else torch.arange(a[0])):
                exec(loop_statements(script, "num_lb =", "loss = loss_lb", within="train"), ns)
            terms = [("supervised", ns["loss_lb"], out["loss_x"]), ("unlabeled", ns["loss_ulb"], out["loss_u"]),
                     ("weight", ns["consistency_weight"], out["u_weight"]),
                     ("confident fraction", ns["high_ratio"], out["conf_ratio"])]
            period = "first teacher, strong view" if first else "second teacher, CutMix"
            items.append(step_item(f"AD-MT: step at iteration {it}, {period} (terms, total, gradients)", terms,
                                   (ns["loss"], list(nets["model"].parameters())),
                                   (out["loss"], list(method.student.parameters())), ns["loss_lb"]))
    return items


def _pastes(mixed_target: torch.Tensor) -> list[tuple]:
    """What a CutMix did to a batch whose image i is coded i: per image, its partner's offset (perm[i] - i) mod B
    and its box (first row, first column, height, width), or None where nothing visible changed (its own image
    drawn as partner, or an empty box)."""
    b = mixed_target.shape[0]
    idx = torch.arange(b)
    changed = mixed_target != idx.view(b, 1, 1)
    rows, cols = changed.any(2), changed.any(1)
    r0, c0 = rows.float().argmax(1), cols.float().argmax(1)
    partner = mixed_target[idx, r0, c0]
    return [((int(partner[i]) - i) % b, int(r0[i]), int(c0[i]), int(rows[i].sum()), int(cols[i].sum()))
            if rows[i].any() else None for i in range(b)]


def check_cutmix_draws(mix, draws: int, b: int = 12, size: int = 128) -> list[Item]:
    """The production CutMix draws: their ``cut_mix`` (torch.randperm, NumPy's Beta and box centres) and ssbench's
    ``draw_cutmix`` + ``apply_cutmix``, each on batches whose image i is coded i: the fraction of images with a
    visible paste, the partner (permutation) offsets (chi-square on the two samples' counts), the box's first row
    and column, height and width (two-sample KS). ``draws`` // 2 images at 128 px (the same code as at 256, four
    times faster)."""
    from ssbench.methods import admt as ours

    coded = torch.arange(b).view(b, 1, 1).expand(b, size, size).clone()
    image, conf = coded[:, None].float(), coded.float()
    np.random.seed(0)
    torch.manual_seed(0)
    theirs = [p for _ in range(draws // 2 // b) for p in _pastes(mix.cut_mix(image, coded, conf)[1])]
    torch.manual_seed(1)
    mine = [p for _ in range(draws // 2 // b)
            for p in _pastes(ours.apply_cutmix(ours.draw_cutmix(b, size, size, "cpu"), image, coded, conf)[1])]
    items = []
    seen_t, seen_o = [p for p in theirs if p], [p for p in mine if p]
    f_t, f_o = len(seen_t) / len(theirs), len(seen_o) / len(mine)
    se = math.sqrt(f_t * (1 - f_t) / len(theirs) + f_o * (1 - f_o) / len(mine))
    items.append(Item("AD-MT CutMix (production draws): fraction of images with a visible paste",
                      f"{abs(f_t - f_o):.3g}",
                      abs(f_t - f_o) < 4 * se, f"{f_o:.4f} vs {f_t:.4f} (4 s.e. = {4 * se:.3g})"))
    counts = np.array([np.bincount([p[0] for p in s], minlength=b)[1:] for s in (seen_o, seen_t)])
    chi = stats.chi2_contingency(counts)
    items.append(Item(f"AD-MT CutMix (production draws): partner offsets perm[i] - i mod {b} (chi-square)",
                      f"p={chi.pvalue:.3g}", bool(chi.pvalue > 1e-3),
                      f"ours {counts[0].min()}-{counts[0].max()}, theirs {counts[1].min()}-{counts[1].max()} "
                      "per offset"))
    for k, name in ((1, "first row"), (2, "first column"), (3, "height"), (4, "width")):
        ks = stats.ks_2samp([p[k] for p in seen_o], [p[k] for p in seen_t])
        items.append(Item(f"AD-MT CutMix (production draws): box {name} (two-sample KS)", f"D={ks.statistic:.3g}",
                          bool(ks.pvalue > 1e-3), f"p = {ks.pvalue:.3g}"))
    return items
