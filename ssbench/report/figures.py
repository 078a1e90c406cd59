"""Figures (PNG and PDF): per-case Dice by method and split, learning curves, qualitative overlays."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ssbench.report.tables import case_scores


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out: Path, stem: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{stem}.png", out / f"{stem}.pdf"]
    for p in paths:
        fig.savefig(p, dpi=120, bbox_inches="tight")
    _plt().close(fig)
    return paths


def dice_boxes(dataset: str, cells: dict, checkpoint: str, out: Path) -> list[Path]:
    plt = _plt()
    labeled = sorted({n for _, n in cells})
    methods = sorted({m for m, _ in cells})
    fig, axes = plt.subplots(1, len(labeled), figsize=(1.6 + 1.4 * len(methods) * len(labeled), 3.6), squeeze=False)
    rng = np.random.default_rng(0)
    for ax, n in zip(axes[0], labeled):
        data, names = [], []
        for m in methods:
            if (m, n) not in cells:
                continue
            per_seed = [case_scores(r, checkpoint).set_index("case_id")["value"] for r in cells[(m, n)].runs]
            data.append(pd.concat(per_seed, axis=1).mean(axis=1).to_numpy() * 100)
            names.append(m)
        ax.boxplot(data, showfliers=False)
        for i, d in enumerate(data, 1):
            ax.scatter(i + rng.uniform(-0.15, 0.15, len(d)), d, s=8, alpha=0.6)
        ax.set_xticks(range(1, len(names) + 1), names, rotation=30, ha="right")
        ax.set_title(f"{n} labeled")
        ax.set_ylabel("per-case Dice % (mean over seeds)")
    fig.suptitle(f"{dataset}: test set, {checkpoint} checkpoint")
    return _save(fig, out, f"dice_{dataset}")


def learning_curves(dataset: str, cells: dict, out: Path) -> list[Path]:
    plt = _plt()
    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(10, 3.6))
    for (m, n), cell in sorted(cells.items()):
        for r in cell.runs:
            log = r.train_log
            if log is None or log.empty:
                continue
            label = f"{m}, {n} lab., seed {r.seed}"
            ax_loss.plot(log["iteration"], log["loss"].rolling(20, min_periods=1).mean(), lw=1, label=label)
            val = log.dropna(subset=["val_dice"]) if "val_dice" in log else log.iloc[0:0]
            ax_val.plot(val["iteration"], val["val_dice"] * 100, marker="o", ms=3, lw=1, label=label)
    ax_loss.set(xlabel="iteration", ylabel="training loss (moving mean of 20)", title="loss")
    ax_val.set(xlabel="iteration", ylabel="val Dice %", title="validation (model selection)")
    ax_val.legend(fontsize=6, loc="lower right")
    fig.suptitle(dataset)
    return _save(fig, out, f"curves_{dataset}")


def overlays(dataset: str, cells: dict, checkpoint: str, out: Path, max_cases: int = 3) -> tuple[list[Path], str]:
    """Image, ground truth and each method's prediction on a few test slices (first seed of each method)."""
    from ssbench import registry
    from ssbench.config import from_dict

    plt = _plt()
    labeled = max(n for _, n in cells)
    chosen = {m: c.runs[0] for (m, n), c in sorted(cells.items()) if n == labeled}
    first = next(iter(chosen.values()))
    import yaml

    cfg = yaml.safe_load((first.path / "config.yaml").read_text())
    root = cfg["data"]["root"]
    if not root or not Path(root).exists():
        return [], f"overlays skipped: data root {root} is not available here"
    preds = {}
    for m, r in chosen.items():
        f = r.path / "predictions" / f"{checkpoint}.npz"
        if f.is_file():
            preds[m] = np.load(f)
    if not preds:
        return [], "overlays skipped: no saved predictions"
    cls = registry.dataset(cfg["data"]["dataset"])
    ds = cls(root, from_dict(cls.Options, cfg.get(cfg["data"]["dataset"], {})))
    case_ids = sorted(set.intersection(*[set(p.files) for p in preds.values()]))[:max_cases]
    cols = 2 + len(preds)
    fig, axes = plt.subplots(len(case_ids), cols, figsize=(2.2 * cols, 2.2 * len(case_ids)), squeeze=False)
    k = ds.num_classes - 1
    for row, cid in zip(axes, case_ids):
        case = ds.load_case(cid)
        z = int(np.argmax((case.label > 0).sum(axis=(1, 2))))
        panels = [("image", None), ("ground truth", case.label[z])] + [(m, p[cid][z]) for m, p in preds.items()]
        for ax, (title, lab) in zip(row, panels):
            ax.imshow(case.image[z], cmap="gray")
            if lab is not None:
                ax.imshow(np.ma.masked_equal(lab, 0), cmap="tab10", vmin=0, vmax=max(k, 9), alpha=0.5,
                          interpolation="nearest")
            ax.set_title(f"{title}\n{cid} z={z}" if title == "image" else title, fontsize=7)
            ax.axis("off")
    fig.suptitle(f"{dataset}, {labeled} labeled, {checkpoint} checkpoint")
    return _save(fig, out, f"overlays_{dataset}"), ""
