"""Figures (PNG and PDF): per-case Dice by method and split, learning curves, qualitative overlays.

Every figure of one ``ssbench table`` call colours a method the same way (``palette``); the seeds of a method
share its colour and differ by line style and marker. Legends sit outside the axes; panels that compare the same
metric share their axis. Figures are built with matplotlib's object API (no pyplot state) and returned, so that
callers (and tests) can read what was drawn before saving.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from ssbench import runfolder
from ssbench.report.pooling import Layout, PooledRow
from ssbench.report.tables import case_scores, seed_mean_scores

SEED_STYLES = ("-", "--", ":", "-.", (0, (5, 1, 1, 1)), (0, (1, 3)))
SEED_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
UPPER_STYLE = "--"


def palette(methods: list[str]) -> dict[str, tuple]:
    """One colour per method (folder name) for every figure of a results folder: tab10 up to 10 methods, tab20
    up to 20, evenly spaced hues beyond."""
    methods = sorted(set(methods))
    n = len(methods)
    if n <= 10:
        colors = [colormaps["tab10"](i) for i in range(n)]
    elif n <= 20:
        colors = [colormaps["tab20"](i) for i in range(n)]
    else:
        colors = [colormaps["hsv"](i / n) for i in range(n)]
    return dict(zip(methods, colors))


def seed_style(seeds: list[int]) -> dict[int, tuple]:
    """Seed -> (line style, marker), in seed order, the same for every method."""
    return {s: (SEED_STYLES[i % len(SEED_STYLES)], SEED_MARKERS[i % len(SEED_MARKERS)])
            for i, s in enumerate(sorted(set(seeds)))}


def save(fig: Figure, out: Path, stem: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{stem}.png", out / f"{stem}.pdf"]
    from ssbench.atomic import atomic_path

    for p in paths:
        with atomic_path(p) as tmp:
            fig.savefig(tmp, dpi=150, format=p.suffix[1:])
    return paths


def _compared(layout: Layout) -> list[PooledRow]:
    return [r for r in layout.main_rows if r.role != "upper"]


def _uppers(layout: Layout) -> list[PooledRow]:
    return [r for r in layout.main_rows if r.role == "upper"]


def dice_boxes(layout: Layout, checkpoint: str, colors: dict) -> Figure:
    """Per split, each method's per-volume Dice (averaged over seeds): box, points, shared y axis."""
    splits = layout.splits()
    rows = _compared(layout)
    width = max(len([r for r in rows if n in r.cells]) for n in splits)
    fig = Figure(figsize=(1.2 + 1.0 * width * len(splits) + 2.8, 4.0), layout="constrained")
    axes = fig.subplots(1, len(splits), sharey=True, squeeze=False)[0]
    rng = np.random.default_rng(0)
    for ax, n in zip(axes, splits):
        present = [r for r in rows if n in r.cells]
        data = [seed_mean_scores(r.cells[n], checkpoint).to_numpy() * 100 for r in present]
        box = ax.boxplot(data, showfliers=False, patch_artist=True, widths=0.6)
        for patch, median, r in zip(box["boxes"], box["medians"], present):
            patch.set_facecolor((*colors[r.method][:3], 0.35))
            patch.set_edgecolor(colors[r.method])
            median.set_color(colors[r.method])
            median.set_linewidth(2)
        for i, (d, r) in enumerate(zip(data, present), 1):
            ax.scatter(i + rng.uniform(-0.18, 0.18, len(d)), d, s=9, color=colors[r.method], alpha=0.8, zorder=3)
        for up in _uppers(layout):
            mean = seed_mean_scores(up.runs, checkpoint).mean() * 100
            ax.axhline(mean, color=colors[up.method], ls=UPPER_STYLE, lw=1.2)
        ax.set_xticks(range(1, len(present) + 1), [r.display for r in present], rotation=30, ha="right")
        ax.set_title(layout.split_label(n))
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("Dice % per test volume\n(mean over seeds)")
    handles = [Patch(facecolor=(*colors[r.method][:3], 0.35), edgecolor=colors[r.method], label=r.label)
               for r in rows]
    handles += [Line2D([], [], color=colors[u.method], ls=UPPER_STYLE, label=f"{u.label} (mean)")
                for u in _uppers(layout)]
    fig.legend(handles=handles, loc="outside right center", fontsize=8, title="method")
    fig.suptitle(f"{layout.dataset}: test set, {checkpoint} checkpoint (one point per volume)")
    return fig


def run_curves(run) -> pd.DataFrame | None:
    """A run's curves (``iteration``, ``loss``, ``val_dice``, ...: train_log.csv's columns) from its TensorBoard
    event files, the record the run wrote as it trained (``engine.tracking``); train_log.csv for runs without
    them (written before tracking existed)."""
    from ssbench.events import read_scalars

    scalars = read_scalars(run.path)
    if scalars is None:
        return run.train_log
    names = {c: c[len("train/"):] for c in scalars.columns if c.startswith("train/")}
    names.update({"val/dice": "val_dice"})
    return scalars[["iteration", *[c for c in names if c in scalars.columns]]].rename(columns=names)


def _val_column(log: pd.DataFrame) -> pd.DataFrame:
    if "val_dice" not in log.columns:
        return log.iloc[0:0]
    return log.dropna(subset=["val_dice"])


def learning_curves(layout: Layout, colors: dict) -> Figure | None:
    """Per split (rows): the training loss and the validation Dice (model selection) against iterations (each run's
    TensorBoard events, ``run_curves``); colour = method, line style and marker = seed; each column shares its y
    axis."""
    panels = [(layout.split_label(n), [(r, r.cells[n]) for r in _compared(layout) if n in r.cells])
              for n in layout.splits()]
    panels += [(f"all {max(u.cells)} labeled", [(u, u.runs)]) for u in _uppers(layout)]
    logs = {id(x): run_curves(x) for _, items in panels for _, runs in items for x in runs}
    panels = [(t, items) for t, items in panels
              if any(logs[id(x)] is not None and len(logs[id(x)]) for _, runs in items for x in runs)]
    if not panels:
        return None
    seeds = seed_style([x.seed for _, items in panels for _, runs in items for x in runs])
    fig = Figure(figsize=(10.5, 2.9 * len(panels) + 0.6), layout="constrained")
    axes = fig.subplots(len(panels), 2, sharey="col", sharex="row", squeeze=False)
    for (title, items), (ax_loss, ax_val) in zip(panels, axes):
        for row, runs in items:
            for run in runs:
                log = logs[id(run)]
                if log is None or log.empty or "loss" not in log.columns:
                    continue
                ls, marker = seeds[run.seed]
                window = min(20, max(1, len(log) // 10))
                ax_loss.plot(log["iteration"], log["loss"].rolling(window, min_periods=1).mean(),
                             color=colors[row.method], ls=ls, lw=1.2)
                val = _val_column(log)
                ax_val.plot(val["iteration"], val["val_dice"] * 100, color=colors[row.method], ls=ls,
                            marker=marker, ms=4, lw=1.2)
        ax_loss.set_title(f"{title}: training loss", fontsize=10)
        ax_val.set_title(f"{title}: validation Dice (model selection)", fontsize=10)
        ax_loss.set_ylabel("loss (moving mean)")
        ax_val.set_ylabel("val Dice %")
        for ax in (ax_loss, ax_val):
            ax.grid(alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel("iteration")
    rows = list(dict.fromkeys(r for _, items in panels for r, _ in items))
    handles = [Line2D([], [], color=colors[r.method], lw=2, label=r.label) for r in rows]
    handles += [Line2D([], [], color="0.35", ls=ls, marker=m, label=f"seed {s}") for s, (ls, m) in seeds.items()]
    fig.legend(handles=handles, loc="outside right center", fontsize=8)
    fig.suptitle(f"{layout.dataset}: training curves (each method's own loss; validation Dice as selected on)")
    return fig


# ---- overlays --------------------------------------------------------------------------------------------------

# Class colours (ColorBrewer Set1) differ in kind from the method colours (tab10), which frame the predictions.
CLASS_COLORS = colormaps["Set1"]


def pick_cases(method_scores: pd.Series, reference_scores: pd.Series) -> list[tuple[str, str]]:
    """(kind, case id): the case where the method does best against the reference, the one where it does worst,
    and the case of its median Dice; distinct cases, in that order. The kind says whether it is a win or a loss."""
    common = method_scores.index.intersection(reference_scores.index)
    diff = (method_scores.loc[common] - reference_scores.loc[common]).sort_index()
    chosen: list[tuple[str, str]] = []
    if len(diff) == 0:
        return chosen
    best = diff.idxmax()
    chosen.append(("largest win" if diff[best] > 0 else "smallest loss", best))
    rest = diff.drop(best)
    if len(rest):
        worst = rest.idxmin()
        chosen.append(("largest loss" if rest[worst] < 0 else "smallest win", worst))
    rest = method_scores.loc[common].drop([c for _, c in chosen]).sort_values(kind="stable")
    if len(rest):
        chosen.append(("median case", rest.index[(len(rest) - 1) // 2]))
    return chosen


def _dataset(run):
    """The dataset of a run, rebuilt from its config (data root and loader options), or the reason it cannot be."""
    from ssbench import registry
    from ssbench.fields import from_dict
    from ssbench.errors import UserError

    cfg = run.config
    root = cfg.get("data.root")
    if not root or not Path(root).exists():
        return None, f"data root {root} is not available here"
    name = cfg["data.dataset"]
    prefix = f"{name}."
    options = {k[len(prefix):]: v for k, v in cfg.items() if k.startswith(prefix)}
    try:
        cls = registry.dataset(name)
        return cls(root, from_dict(cls.Options, options, name)), ""
    except UserError as exc:
        return None, str(exc)


def _predictions(run, checkpoint: str):
    f = runfolder.predictions_path(run.path, checkpoint)
    if not f.is_file():
        return None
    try:
        return np.load(f)
    except (OSError, ValueError):
        return None


def overlays(layout: Layout, checkpoint: str, labeled: int, reference: str, colors: dict,
             class_names: list[str]) -> tuple[Figure | None, dict]:
    """Per method against the reference: its largest win, its largest loss and its median case, each as image,
    ground truth, the reference's and the method's prediction on the slice where the two disagree most."""
    rows = [r for r in _compared(layout) if labeled in r.cells]
    ref = next((r for r in rows if r.label == reference), None)
    if ref is None or len(rows) < 2:
        return None, {"reason": "overlays need a reference and one other method"}
    picks = []
    for row in rows:
        if row is ref:
            continue
        pair = _paired_runs(row.cells[labeled], ref.cells[labeled], checkpoint)
        if pair is None:
            continue
        run, ref_run, preds, ref_preds = pair
        m = case_scores(run, checkpoint).set_index("case_id")["value"] * 100
        r = case_scores(ref_run, checkpoint).set_index("case_id")["value"] * 100
        available = [c for c in m.index if c in preds.files and c in ref_preds.files]
        for kind, cid in pick_cases(m.loc[available], r.loc[r.index.intersection(available)]):
            picks.append({"row": row, "kind": kind, "case": cid, "dice": float(m[cid]), "reference_dice": float(r[cid]),
                          "seed": run.seed, "pred": preds[cid], "ref_pred": ref_preds[cid]})
    if not picks:
        return None, {"reason": "no saved test predictions shared by a method and the reference"}
    dataset, why = _dataset(picks[0]["row"].cells[labeled][0])
    if dataset is None:
        return None, {"reason": why}
    from ssbench.errors import UserError

    try:  # the volumes first: a file that does not load costs the figure, never the tables
        cases = {p["case"]: dataset.load_case(p["case"], True) for p in picks}
    except UserError as exc:
        return None, {"reason": str(exc)}
    fig = Figure(figsize=(4 * 2.3 + 1.6, 2.55 * len(picks) + 0.5), layout="constrained")
    axes = fig.subplots(len(picks), 4, squeeze=False)
    k = len(class_names)
    cmap = _class_cmap(k)
    for ax_row, p in zip(axes, picks):
        case = cases[p["case"]]
        z = _slice(case.label, p["pred"], p["ref_pred"])
        panels = [(None, f"{p['row'].display}: {p['kind']}\n{p['case']}, slice {z}", None),
                  (case.label[z], "ground truth", None),
                  (p["ref_pred"][z], f"reference: {ref.display}\nDice {p['reference_dice']:.1f}",
                   colors[ref.method]),
                  (p["pred"][z], f"{p['row'].display}, seed {p['seed']}\nDice {p['dice']:.1f} "
                                 f"({p['dice'] - p['reference_dice']:+.1f})", colors[p["row"].method])]
        for ax, (lab, title, frame) in zip(ax_row, panels):
            ax.imshow(case.image[z], cmap="gray", interpolation="nearest")
            if lab is not None:
                ax.imshow(np.ma.masked_equal(lab, 0), cmap=cmap, vmin=0, vmax=k, alpha=0.55,
                          interpolation="nearest")
            ax.set_title(title, fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
            if frame is not None:  # the method's colour, as in every other figure
                for spine in ax.spines.values():
                    spine.set_color(frame)
                    spine.set_linewidth(3)
    handles = [Patch(color=cmap(i + 1), label=name) for i, name in enumerate(class_names)]
    fig.legend(handles=handles, loc="outside right center", title="class", fontsize=8)
    fig.suptitle(f"{layout.dataset}, {layout.split_label(labeled)}: each method against the reference "
                 f"({ref.label}), test set, {checkpoint} checkpoint\nDice of the whole volume in %; frame colour = "
                 "method")
    info = {"reference": ref.label, "picks": [{k2: (v.label if k2 == "row" else v) for k2, v in p.items()
                                               if k2 not in ("pred", "ref_pred")} for p in picks]}
    return fig, info


def _class_cmap(k: int):
    from matplotlib.colors import ListedColormap

    return ListedColormap([(0, 0, 0, 0)] + [CLASS_COLORS(i % CLASS_COLORS.N) for i in range(k)])


def _paired_runs(runs, ref_runs, checkpoint):
    """The lowest seed that the method and the reference both ran with saved predictions (else their first
    runs with predictions)."""
    by_seed = {r.seed: r for r in ref_runs}
    ordered = [(r, by_seed[r.seed]) for r in runs if r.seed in by_seed] + [(r, q) for r in runs for q in ref_runs]
    for run, ref_run in ordered:
        preds, ref_preds = _predictions(run, checkpoint), _predictions(ref_run, checkpoint)
        if preds is not None and ref_preds is not None:
            return run, ref_run, preds, ref_preds
    return None


def _slice(label: np.ndarray, pred: np.ndarray, ref_pred: np.ndarray) -> int:
    """The slice where the two predictions disagree most; without disagreement, the largest ground truth."""
    if pred.shape != label.shape or ref_pred.shape != label.shape:
        return int(np.argmax((label > 0).sum(axis=(1, 2))))
    disagree = (pred != ref_pred).sum(axis=(1, 2))
    if disagree.max() > 0:
        return int(np.argmax(disagree))
    return int(np.argmax((label > 0).sum(axis=(1, 2))))
