"""What every peer-check module shares: the item and its verdict, reading an official script's syntax tree
(functions, classes, loop statements and argparse defaults, compiled and run without running the script), loading
their modules by file path, and comparing values, gradients and networks."""

from __future__ import annotations

import ast
import importlib.util
import math
import random
import types
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

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


def call_keywords(path: Path, func: str) -> dict:
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


def loop_statements(path: Path, first: str, last: str, skip: tuple[str, ...] = (), within: str | None = None):
    """The statements of a script's training loop from the one whose source starts with ``first`` through the one
    starting with ``last``, compiled (those starting with a ``skip`` prefix left out); ``within``: only in that
    function (BCP's ``pre_train`` and ``self_train`` loops start alike). They run as written, on the namespace
    given to ``exec``, without running the script."""
    tree = ast.parse(path.read_text(), filename=str(path))
    if within is not None:
        tree = next((n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == within), None)
        if tree is None:
            raise SystemExit(f"peer_check: {path}: no function {within}")
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
def reseeded(*nets: torch.nn.Module, base: int = 100):
    """Each train-mode pass through any of ``nets`` starts from the global seed ``base + k`` (the k-th such pass),
    so that dropout draws the same numbers on both sides whatever else was drawn between passes (ssbench draws
    its boxes from torch, their code from NumPy)."""
    count = [0]

    def wrap(net):
        forward = net.forward

        def seeded(*args, **kwargs):
            if net.training:
                count[0] += 1
                torch.manual_seed(base + count[0])
            return forward(*args, **kwargs)
        return seeded

    for net in nets:
        net.forward = wrap(net)
    try:
        yield count
    finally:
        for net in nets:
            del net.forward


class NumpyWith:
    """NumPy, but ``random.randint`` returns given values in turn (their box corners set to ssbench's draw)."""

    def __init__(self, values):
        self._values = list(values)
        self.random = types.SimpleNamespace(randint=lambda *a, **k: self._values.pop(0))

    def __getattr__(self, name):
        return getattr(np, name)


def statements_between(fn: ast.FunctionDef, first: str, last: str) -> ast.Module:
    """The statements of ``fn`` (anywhere in it) from the first assigning ``first`` to the first assigning ``last``."""
    assigns = sorted((n for n in ast.walk(fn) if isinstance(n, ast.Assign)), key=lambda n: n.lineno)

    def names(n):
        return {t.id for tgt in n.targets for t in ast.walk(tgt) if isinstance(t, ast.Name)}

    start = next(n.lineno for n in assigns if first in names(n))
    end = next(n.lineno for n in assigns if last in names(n) and n.lineno >= start)
    return ast.Module(body=[n for n in assigns if start <= n.lineno <= end], type_ignores=[])


def max_diff(a, b) -> float:
    a, b = (x.detach() if isinstance(x, torch.Tensor) else x for x in (a, b))
    return float((torch.as_tensor(a, dtype=torch.float64) - torch.as_tensor(b, dtype=torch.float64)).abs().max())


def numeric(name: str, diff: float, tol: float = TOL, detail: str = "") -> Item:
    return Item(name, f"{diff:.3g}", diff <= tol, detail)


def compare_pairs(name, pairs) -> Item:
    bad = [f"{k}: ours {a!r}, theirs {b!r}" for k, a, b in pairs if a != b]
    return Item(name, "equal" if not bad else f"{len(bad)} differ", not bad, "; ".join(bad))


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


def box_stats(masks) -> dict[str, np.ndarray]:
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


def check_unet(label: str, their_cls) -> list[Item]:
    from ssbench.methods.blocks.unet import UNet

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


def check_unet_subset(label: str, theirs) -> list[Item]:
    """A network that wraps the literature's UNet in ``encoder``/``decoder`` beside unused heads (BCP's
    ``UNet_2d``): those weights in order and shape, the same initial weights under one seed (the heads are built
    after them), and the same output."""
    from ssbench.methods.blocks.unet import UNet

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


def label_maps(seed: int, n: int = 6, size: int = 64) -> torch.Tensor:
    """Label maps with many components per class (sparse blobs and noise), for the largest-component check."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randint(0, 4, (n, 1, size // 8, size // 8), generator=g).float()
    blobs = F.interpolate(coarse, size=(size, size), mode="nearest")[:, 0].long()
    noise = torch.randint(0, 4, (n, size, size), generator=g) * (torch.rand(n, size, size, generator=g) < 0.05)
    return torch.where(torch.rand(n, size, size, generator=g) < 0.5, blobs, noise)


def mix_inputs(seed: int, size: int = 64):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(6, 4, size, size, generator=g, dtype=torch.float64)
    lab_img = torch.randint(0, 4, (6, size, size), generator=g)
    lab_patch = torch.randint(0, 4, (6, size, size), generator=g)
    return logits, lab_img, lab_patch


def loss_inputs(seed: int = 5):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(6, 4, 64, 64, generator=g, dtype=torch.float64)
    target = torch.randint(0, 4, (6, 64, 64), generator=g)
    ignore = torch.rand(6, 64, 64, generator=g) < 0.3
    return logits, target, ignore



# --- training-step items: each term, the total and every gradient, relative tolerances -------------------------

RTOL = 1e-4  # a loss term, float32: the same terms summed in another order differ by ~1e-7 relative
GRAD_RTOL = 1e-3  # each parameter's gradient, relative to its largest (at least 1 % of the largest of all)
UNLABELED_RTOL = 5e-3  # the unlabeled part of the gradient (ours: total minus the official supervised gradient)
RESOLVED = 5e-3  # ... compared where it is at least this fraction of the whole gradient


def scalar(v) -> float:
    return float(v.detach()) if isinstance(v, torch.Tensor) else float(v)


def rel(a, b) -> float:
    a, b = scalar(a), scalar(b)
    scale = max(abs(a), abs(b))
    return 0.0 if scale == 0 else abs(a - b) / scale


def gradients(loss: torch.Tensor, params: list[torch.Tensor]) -> list[torch.Tensor | None]:
    return list(torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True))


def grad_rel(ga: list, gb: list, scale: float | None = None) -> float:
    """Worst max |a - b| over parameters, relative to that parameter's largest |a| but at least a hundredth of
    the largest over all (a bias before BatchNorm has a gradient of round-off only), or relative to ``scale``;
    a gradient present on one side only is infinitely different."""
    if any((a is None) != (b is None) for a, b in zip(ga, gb, strict=True)):
        return math.inf
    pairs = [(a, b) for a, b in zip(ga, gb) if a is not None]
    floor = 1e-2 * max((float(a.abs().max()) for a, _ in pairs), default=0.0)
    worst = 0.0
    for a, b in pairs:
        s = scale if scale is not None else max(float(a.abs().max()), floor)
        d = float((a.double() - b.double()).abs().max())
        worst = max(worst, 0.0 if d == 0 else d / s if s > 0 else math.inf)
    return worst


def step_item(name: str, terms: list[tuple[str, object, object]], theirs: tuple, ours: tuple,
              their_supervised: torch.Tensor | None = None, tol_scale: float = 1.0,
              judge_gradients: bool = True) -> Item:
    """One training step of the official loop beside ssbench's: each named term (theirs, ours) within ``RTOL``
    relative, the total within ``RTOL``, every parameter's gradient within ``GRAD_RTOL``, and, given the official
    supervised term, the unlabeled part of the gradient (total minus supervised; ours minus the official
    supervised gradient) within ``UNLABELED_RTOL`` of its largest value. ``theirs``/``ours``: (total loss,
    parameters in the same order). ``tol_scale`` multiplies the tolerances; ``judge_gradients=False``: the gradients
    are reported, not judged (bf16 against fp32: pixels cross the confidence threshold, gradients move far more
    than the loss terms)."""
    (t_loss, t_params), (o_loss, o_params) = theirs, ours
    parts = [(label, rel(a, b), f"{label} {scalar(b):.6g} vs {scalar(a):.6g}") for label, a, b in terms]
    parts.append(("total", rel(t_loss, o_loss), f"total {scalar(o_loss):.6g} vs {scalar(t_loss):.6g}"))
    g_t, g_o = gradients(t_loss, t_params), gradients(o_loss, o_params)
    worst = [(d / (RTOL * tol_scale), text) for _, d, text in parts]
    d = grad_rel(g_t, g_o)
    worst.append((d / (GRAD_RTOL * tol_scale) if judge_gradients else 0.0, f"gradients {d:.2g}"))
    if their_supervised is not None:
        g_s = gradients(their_supervised, t_params)
        u_t = [None if a is None else a - (0 if s is None else s) for a, s in zip(g_t, g_s)]
        u_o = [None if a is None else a - (0 if s is None else s) for a, s in zip(g_o, g_s)]
        scale = max((float(u.abs().max()) for u in u_t if u is not None), default=0.0)
        full = max((float(g.abs().max()) for g in g_t if g is not None), default=0.0)
        if scale >= RESOLVED * full:
            d = grad_rel(u_t, u_o, scale)
            worst.append((d / (UNLABELED_RTOL * tol_scale) if judge_gradients else 0.0,
                          f"unlabeled gradients {d:.2g} of their largest {scale:.2g} ({scale / full:.1g} of all)"))
        else:  # float32 round-off of the supervised gradient would swamp it: left to the later iterations
            worst.append((0.0, f"unlabeled gradients not resolved (largest {scale:.2g}, {scale / full:.1g} of all)"))
    ratio = max(r for r, _ in worst)
    terms_text = "; ".join(t for _, _, t in parts)
    grads_text = "; ".join(t for _, t in worst[len(parts):])
    return Item(name, f"{ratio:.3g} x tol", ratio <= 1.0, f"{terms_text}; {grads_text}")


@contextmanager
def own_noise(seed: int):
    """``torch.randn_like`` from a generator of its own, so that input noise and dropout draw the same numbers on
    both sides whatever their order (the Mean Teacher script draws the noise before the student's pass, ssbench
    after it)."""
    g = torch.Generator().manual_seed(seed)
    saved = torch.randn_like

    def randn_like(x, *args, **kwargs):
        return torch.randn(x.shape, generator=g, dtype=kwargs.get("dtype") or x.dtype).to(x.device)

    torch.randn_like = randn_like
    try:
        yield
    finally:
        torch.randn_like = saved


# --- the weak augmentation: which transform each side applies, read off its output ------------------------------

def _weak_classes(image: np.ndarray) -> dict[bytes, str]:
    """The outputs of every weak transform of ``image`` (the eight rot90/flip results, each rotation -20..19 by
    order-0 ``ndimage.rotate``; rotation by 0 is the identity), by their bytes."""
    from scipy import ndimage

    out = {}
    for angle in range(-20, 20):
        out.setdefault(ndimage.rotate(image, angle, order=0, reshape=False).tobytes(),
                       "identity" if angle == 0 else f"rotate {angle}")
    for k in range(4):
        for axis in range(2):
            out[np.ascontiguousarray(np.flip(np.rot90(image, k), axis=axis)).tobytes()] = f"rot90 {k} flip {axis}"
    return out


def check_weak(name: str, theirs, draws: int, always: bool = False) -> Item:
    """ssbench's weak augmentation (``augment.weak``) beside an official one (``theirs(image) -> image``), each
    run ``draws`` times on one random 48 x 48 slice: the distribution of the transform applied (identity, the
    eight rot90/flips, the 39 rotations), chi-square on the two samples' counts, and the fraction left as it was.
    ``always``: ssbench's ``train.augment=rotflip-or-rotate`` variant."""
    from scipy import stats

    from ssbench.augment import weak

    image = np.random.default_rng(0).random((48, 48)).astype(np.float32)
    classes = _weak_classes(image)
    rng = np.random.default_rng(1)
    ours = [classes.get(weak(image, None, rng, always)[0].tobytes(), "other") for _ in range(draws)]
    random.seed(0)
    np.random.seed(0)
    their = [classes.get(np.asarray(theirs(image), np.float32).tobytes(), "other") for _ in range(draws)]
    names = sorted(set(ours) | set(their))
    counts = np.array([[s.count(n) for n in names] for s in (ours, their)])
    p = float(stats.chi2_contingency(counts + 0).pvalue) if counts.shape[1] > 1 else 1.0
    f_o, f_t = ours.count("identity") / draws, their.count("identity") / draws
    return Item(f"{name}: weak augmentation drawn (chi-square, two samples)", f"p={p:.3g}",
                p > 1e-3 and "other" not in names,
                f"left unchanged: ours {f_o:.3f}, theirs {f_t:.3f}; {len(names)} transforms seen")
