"""Peer check against LiheYoung/UniMatch-V2."""

from __future__ import annotations

import ast
import importlib
import math
import sys
import types
from pathlib import Path

import torch
import torch.nn.functional as F

from .common import Item, call_keywords, cuda_on_cpu, loop_statements, max_diff, numeric, patched


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


def model_config(code: Path, size: str = "small") -> dict:
    """DPT's configuration for an encoder size, as unimatch_v2.py's ``model_configs`` gives it."""
    for node in ast.walk(ast.parse((code / "unimatch_v2.py").read_text())):
        if isinstance(node, ast.Assign) and ast.unparse(node.targets[0]) == "model_configs":
            return ast.literal_eval(node.value)[size]
    raise SystemExit(f"peer_check: {code / 'unimatch_v2.py'}: no model_configs")


def our_adamw_betas() -> tuple:
    """The betas ssbench's engine builds AdamW with: PyTorch's default where engine/train.py passes none."""
    import inspect

    import ssbench.engine.train as train

    given = [kw.value for c in ast.walk(ast.parse(Path(train.__file__).read_text())) if isinstance(c, ast.Call)
             and getattr(c.func, "attr", "") == "AdamW" for kw in c.keywords if kw.arg == "betas"]
    if given:
        return tuple(ast.literal_eval(given[0]))
    return tuple(inspect.signature(torch.optim.AdamW).parameters["betas"].default)


def _v2_pair(dpt_module, config: dict, seed: int = 0):
    """V2's DPT-S and ours with the same weights (random, then perturbed so that no weight keeps its init)."""
    from ssbench.methods.unimatch_v2.network import DPT

    torch.manual_seed(seed)
    theirs = dpt_module.DPT(nclass=4, **config)
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


def run(code: Path, draws: int) -> list[Item]:
    import tempfile

    import yaml

    from ssbench.engine.runconfig import TrainConfig
    from ssbench.methods.blocks import perturb
    from ssbench.methods.blocks.ema import ema_alpha, ema_update
    from ssbench.methods.unimatch_v2 import network
    from ssbench.methods.unimatch_v2.method import (UniMatchV2, UniMatchV2Config, mix_targets, mix_view, v2_loss)

    dpt = load_v2(code)
    items = []
    small = model_config(code, "small")
    theirs, ours = _v2_pair(dpt, small)
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
        _, fresh = _v2_pair(dpt, small, seed=1)
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

    items.append(check_step(code, dpt, small))

    # recipe defaults: configs/pascal.yaml, the optimizer and EMA of unimatch_v2.py, DPT-S's configuration
    ours_cfg, ours_train = UniMatchV2Config(), {**vars(TrainConfig()), **UniMatchV2.recipe_overrides("published")}
    adamw = call_keywords(code / "unimatch_v2.py", "AdamW")
    ema = _v2_ema_decay(code / "unimatch_v2.py")
    pairs = [("lr", ours_train["lr"], cfg["lr"]), ("lr_multi", ours_cfg.lr_multiplier, cfg["lr_multi"]),
             ("conf_thresh", ours_cfg.conf_thresh, cfg["conf_thresh"]),
             ("backbone", f"dinov2_{ours_cfg.backbone}", cfg["backbone"]),
             ("lock_backbone", ours_cfg.lock_backbone, cfg["lock_backbone"]),
             ("optimizer (the AdamW call)", ours_train["optimizer"], "adamw" if adamw is not None else "other"),
             ("weight_decay", ours_train["weight_decay"], adamw.get("weight_decay")),
             ("betas", our_adamw_betas(), tuple(adamw.get("betas", ()))), ("EMA decay", ours_cfg.ema_decay, ema),
             ("DPT-S features / out_channels", (network.BACKBONES["small"][2], list(network.BACKBONES["small"][3])),
              (small["features"], small["out_channels"])),
             ("blocks read (small)", list(network.BACKBONES["small"][1]),
              list(dpt.DPT(nclass=4, **small).intermediate_layer_idx["small"]))]
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


def _v2_ema_decay(path: Path) -> float:
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Assign) and ast.unparse(node.targets[0]) == "ema_ratio":
            return ast.literal_eval(node.value.args[1])
    raise SystemExit(f"peer_check: {path}: no ema_ratio")


def _complementary_statistics(code: Path, draws: int) -> Item:
    """V2's mask statements (dpt.py, executed) and ``perturb.complementary_masks``, ``draws`` times each: the two
    views' masks sum to 2, int(B/2) images are undropped, a dropped image keeps a channel with probability 0.5."""
    from ssbench.methods.blocks import perturb

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



class _Shell(torch.nn.Module):
    """Their DPT inside ssbench's port shell (one channel to three, ImageNet normalisation, the fit to the patch
    grid: compared with V2's own evaluation resize by its own item), called as their loop calls ``model``."""

    def __init__(self, their_dpt, fit: str):
        from ssbench.methods.unimatch_v2 import network

        super().__init__()
        self.seg = network.Segmenter("small", 4, fit)
        self.seg.dpt = _Adapter(their_dpt)

    def forward(self, x, comp_drop=False):
        return self.seg(x, torch.ones(1) if comp_drop else None)


class _Adapter(torch.nn.Module):
    def __init__(self, dpt):
        super().__init__()
        self.dpt = dpt

    def forward(self, x, drop=None):
        return self.dpt(x, comp_drop=drop is not None)


def check_step(code: Path, dpt, small: dict) -> Item:
    """UniMatch V2's training step: the statements of unimatch_v2.py's loop from the batch to the total loss,
    executed as written (their DPT-S for student and EMA teacher, in ssbench's port shell) beside ssbench's
    ``training_step`` on the same weights and batch. ssbench draws the strong views, the CutMix boxes and the
    complementary masks (recorded; their Binomial sample and ``torch.randperm`` return those masks' draws). The
    loss does not depend on the iteration: one step. 56 px slices (4 x 4 patches)."""
    import yaml

    from ssbench.methods.blocks import perturb
    from ssbench.methods.api import Batch, MethodContext, StepInfo
    from ssbench.methods.unimatch_v2 import method as v2

    from .common import step_item

    size, b = 56, 2
    g = torch.Generator().manual_seed(61)
    img_x, img_u_w = torch.rand(b, 1, size, size, generator=g), torch.rand(b, 1, size, size, generator=g)
    mask_x = torch.randint(0, 4, (b, size, size), generator=g)
    cfg = v2.UniMatchV2Config(init="random")
    method = v2.UniMatchV2(cfg, MethodContext(1, 4, size, 30000, torch.device("cpu"), synthetic_data=True))
    their_s, ours_s = _v2_pair(dpt, small, seed=0)
    their_t, ours_t = _v2_pair(dpt, small, seed=1)
    with torch.no_grad():  # a confident teacher: pixels above the 0.95 threshold
        their_t.head.scratch.output_conv[-1].weight.mul_(30), their_t.head.scratch.output_conv[-1].bias.mul_(30)
    ours_t.load_state_dict({k: v for k, v in their_t.state_dict().items() if k != "backbone.mask_token"})
    method.student.dpt.load_state_dict(ours_s.state_dict())
    method.teacher.dpt.load_state_dict(ours_t.state_dict())

    views, boxes, masks = [], [], []
    real_view, real_boxes, real_masks = v2.strong_view, v2.cutmix_boxes, perturb.complementary_masks

    def strong_view(*a, **k):
        views.append(real_view(*a, **k))
        return views[-1]

    def cutmix_boxes(*a, **k):
        boxes.append(real_boxes(*a, **k))
        return boxes[-1]

    def complementary_masks(*a, **k):
        masks.append(real_masks(*a, **k))
        return masks[-1]

    method.train()
    torch.manual_seed(5)
    with patched(v2, "strong_view", strong_view), patched(v2, "cutmix_boxes", cutmix_boxes), \
            patched(perturb, "complementary_masks", complementary_masks):
        out = method.training_step(Batch(img_x.clone(), mask_x.clone()), Batch(img_u_w.clone()), StepInfo(0, 30000))

    first = masks[0][0][0]  # view 1's (B, D) mask: 1 on the undropped images, else 2 x a Bernoulli sample
    kept = (first == 1).all(1)
    perm = torch.cat([kept.nonzero()[:, 0], (~kept).nonzero()[:, 0]])
    their_s.binomial = _Fixed(first / 2.0)
    model, model_ema = _Shell(their_s, cfg.fit).train(), _Shell(their_t, cfg.fit).eval()
    conf = yaml.safe_load((code / "configs" / "pascal.yaml").read_text())
    ns = {"torch": torch, "cfg": conf, "model": model, "model_ema": model_ema,
          "criterion_l": torch.nn.CrossEntropyLoss(ignore_index=255),
          "criterion_u": torch.nn.CrossEntropyLoss(reduction="none"),
          "img_x": img_x.clone(), "mask_x": mask_x.clone(), "img_u_w": img_u_w.clone(),
          "img_u_s1": views[0].clone(), "img_u_s2": views[1].clone(), "ignore_mask": torch.zeros(b, size, size),
          "cutmix_box1": boxes[0].long(), "cutmix_box2": boxes[1].long()}
    with cuda_on_cpu(), patched(torch, "randperm", lambda n, *a, **k: perm[:n].clone()):
        exec(loop_statements(code / "unimatch_v2.py", "img_x, mask_x =", "loss = (loss_x + loss_u_s)"), ns)
    terms = [("loss_x", ns["loss_x"], out["loss_x"]), ("loss_s1", ns["loss_u_s1"], out["loss_s1"]),
             ("loss_s2", ns["loss_u_s2"], out["loss_s2"]),
             ("confident fraction", (ns["conf_u_w"] >= conf["conf_thresh"]).float().mean(), out["conf_ratio"])]
    return step_item(f"UniMatch V2: step (loss_x, s1, s2, confident fraction, total, gradients; {int(kept.sum())} "
                     f"of {b} images undropped)", terms,
                     (ns["loss"], [p for n, p in their_s.named_parameters() if n != "backbone.mask_token"]),
                     (out["loss"], list(method.student.dpt.parameters())),
                     ns["loss_x"] / 2.0)
