"""What the figures show, read back from the matplotlib objects the figure functions return: one colour per method
in every figure, seeds told apart by line style, legends outside the data, shared axes, and overlays of the cases
a method wins and loses most against the reference."""

import json

import nibabel as nib
import numpy as np
import pytest
from matplotlib.colors import to_rgba

from formats import write_acdc_raw
from report_runs import build_tables, write_run
from ssbench.report import figures
from ssbench.report.collect import collect
from ssbench.report.pooling import layouts
from ssbench.report.tables import classes

METHODS = ("supervised", "mean-teacher", "unimatch")


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    root = tmp_path_factory.mktemp("figs") / "results"
    rng = np.random.default_rng(0)
    for m, shift in zip(METHODS, (-0.2, 0.0, 0.05)):
        for split in ("3", "7"):
            for seed in (1, 2):
                write_run(root, m, split, seed, rng=rng, shift=shift, log_iters=20)
    write_run(root, "supervised", "all", 1, rng=rng, shift=0.1, log_iters=20)
    runs, _ = collect(root)
    (lay,) = layouts(runs)
    return lay


def _rgb(c):
    return tuple(np.round(to_rgba(c)[:3], 4))


def _legend_outside(fig):
    fig.draw_without_rendering()  # runs the constrained layout, as saving does
    (legend,) = fig.legends
    box = legend.get_window_extent()
    for ax in fig.axes:
        assert not box.overlaps(ax.get_window_extent()), "the legend covers an axes"
    return legend


def test_one_colour_per_method_across_figures(layout):
    colors = figures.palette([r.method for row in layout.rows for r in row.runs])
    assert len({_rgb(c) for c in colors.values()}) == len(METHODS)
    boxes = figures.dice_boxes(layout, "best", colors)
    curves = figures.learning_curves(layout, colors)
    # box plot: each panel's boxes in the order of its tick labels, filled with the method's colour
    for ax in boxes.axes:
        names = [t.get_text() for t in ax.get_xticklabels()]
        assert names == ["U-Net (labeled only)", "Mean Teacher", "UniMatch"]
        for patch, name in zip(ax.patches, names):
            method = next(r.method for r in layout.rows if r.display == name)
            assert _rgb(patch.get_edgecolor()) == _rgb(colors[method])
        points = [c for c in ax.collections if len(c.get_offsets()) == 20]
        assert [_rgb(c.get_facecolor()[0]) for c in points] == [_rgb(colors[m]) for m in METHODS]
    # curves: every line of a method has the method's colour; its two seeds differ in line style only
    lines = [ln for ax in curves.axes for ln in ax.get_lines()]
    assert {_rgb(ln.get_color()) for ln in lines} == {_rgb(c) for c in colors.values()}
    loss = curves.axes[0].get_lines()  # 3 labeled, training loss: 3 methods x 2 seeds
    assert len(loss) == 6
    for m in METHODS:
        mine = [ln for ln in loss if _rgb(ln.get_color()) == _rgb(colors[m])]
        assert len(mine) == 2 and mine[0].get_linestyle() != mine[1].get_linestyle()
    for fig in (boxes, curves):
        legend = _legend_outside(fig)
        labels = [t.get_text() for t in legend.get_texts()]
        assert "Mean Teacher" in labels and "UniMatch" in labels


def test_panels_comparing_one_metric_share_their_axis(layout):
    colors = figures.palette(METHODS)
    boxes = figures.dice_boxes(layout, "best", colors)
    a, b = boxes.axes[:2]
    assert a.get_shared_y_axes().joined(a, b) and a.get_ylim() == b.get_ylim()
    curves = figures.learning_curves(layout, colors)
    axes = np.array(curves.axes).reshape(-1, 2)
    assert len(axes) == 3  # 3 labeled, 7 labeled, all 70 labeled
    for col in range(2):
        assert all(axes[0, col].get_shared_y_axes().joined(axes[0, col], ax) for ax in axes[1:, col])
    assert not axes[0, 0].get_shared_y_axes().joined(axes[0, 0], axes[0, 1])  # loss and Dice are not one scale
    # the upper bound's mean is drawn in each box panel, dashed, in the baseline's colour
    up = [ln for ln in a.get_lines() if ln.get_linestyle() == "--"]
    assert len(up) == 1 and _rgb(up[0].get_color()) == _rgb(colors["supervised"])


def test_more_methods_than_a_palette_still_get_distinct_colours():
    for n in (10, 14, 23):
        names = [f"m{i:02d}" for i in range(n)]
        assert len({_rgb(c) for c in figures.palette(names).values()}) == n
    assert figures.palette(["b", "a"]) == figures.palette(["a", "b", "a"])  # independent of order and repeats


def test_seed_styles_are_the_same_for_every_method():
    styles = figures.seed_style([3, 1, 2, 1])
    assert list(styles) == [1, 2, 3] and len({s for s, _ in styles.values()}) == 3


@pytest.fixture
def overlay_results(tmp_path):
    """Three methods with saved predictions on a raw ACDC folder of four patients (eight volumes)."""
    pats = ["patient001", "patient002", "patient003", "patient004"]
    data = write_acdc_raw(tmp_path / "data", pats)
    cases, labels = [], {}
    for p in pats:
        for f in sorted((data / "training" / p).glob("*_gt.nii.gz")):
            cid = f.name.replace("_gt.nii.gz", "")
            cases.append(cid)
            labels[cid] = np.asarray(nib.load(f).dataobj).transpose(2, 1, 0).astype(np.uint8)
    rng = np.random.default_rng(1)
    dice = {"supervised": np.linspace(0.4, 0.7, 8), "mean-teacher": rng.uniform(0.6, 0.9, 8),
            "unimatch": np.full(8, 0.8)}
    root = tmp_path / "results"
    for m in METHODS:
        preds = {c: np.where(rng.random(labels[c].shape) < 0.1, 0, labels[c]).astype(np.uint8) for c in cases}
        write_run(root, m, "3", 1, cases=cases, dice=dice[m], predictions=preds, settings={"data.root": str(data)})
    return root, cases, dice


def test_overlays_show_each_methods_largest_win_loss_and_median(overlay_results):
    root, cases, dice = overlay_results
    runs, _ = collect(root)
    (lay,) = layouts(runs)
    colors = figures.palette(METHODS)
    fig, info = figures.overlays(lay, "best", 3, "UniMatch", colors, classes(lay))
    assert fig is not None, info
    mt = np.asarray(dice["mean-teacher"]) * 100
    diff = mt - 80.0
    picks = {(p["row"], p["kind"]): p for p in info["picks"]}
    win = picks[("Mean Teacher", "largest win")]
    loss = picks[("Mean Teacher", "largest loss")]
    assert win["case"] == cases[int(np.argmax(diff))] and loss["case"] == cases[int(np.argmin(diff))]
    rest = sorted((v, c) for v, c in zip(mt, cases) if c not in (win["case"], loss["case"]))
    assert picks[("Mean Teacher", "median case")]["case"] == rest[(len(rest) - 1) // 2][1]
    # the baseline never beats the reference here: its best case is named a smallest loss
    sup = [p for p in info["picks"] if p["row"] == "U-Net (labeled only)"]
    assert [p["kind"] for p in sup] == ["smallest loss", "largest loss", "median case"]
    assert sup[0]["case"] == cases[-1] and sup[1]["case"] == cases[0]
    # four panels per pick; the titles carry the case and both Dice values; the method's panel is framed in its colour
    axes = np.array(fig.axes[:len(info["picks"]) * 4]).reshape(-1, 4)
    row = next(i for i, p in enumerate(info["picks"]) if p is win)
    image, truth, ref, mine = axes[row]
    assert win["case"] in image.get_title() and "largest win" in image.get_title()
    assert ref.get_title().endswith("Dice 80.0")
    assert f"Dice {win['dice']:.1f} ({win['dice'] - 80.0:+.1f})" in mine.get_title()
    assert _rgb(mine.spines["left"].get_edgecolor()) == _rgb(colors["mean-teacher"])
    assert _rgb(ref.spines["left"].get_edgecolor()) == _rgb(colors["unimatch"])
    legend = _legend_outside(fig)
    assert [t.get_text() for t in legend.get_texts()] == ["RV", "Myo", "LV"]
    # the class colours in the legend are the colours painted on the ground truth
    cmap = truth.get_images()[1].get_cmap()
    assert [_rgb(h.get_facecolor()) for h in legend.legend_handles] == [_rgb(cmap(i)) for i in (1, 2, 3)]


def test_build_writes_every_figure_and_lists_it(overlay_results, tmp_path):
    root, _, _ = overlay_results
    out = tmp_path / "paper"
    build_tables(root, out, reference="UniMatch", draw=True)  # the default, the baseline, never wins here
    index = json.loads((out / "index.json").read_text())
    figs = index["files"]["figures_acdc"]
    assert sorted(figs) == sorted(f"figures/{s}.{e}" for s in ("dice_acdc", "curves_acdc", "overlays_acdc_3labeled")
                                  for e in ("png", "pdf"))
    readme = (out / "README.md").read_text()
    for f in figs + ["main_acdc.tex", "reproduction_gap.md", "significance_acdc.csv", "published.csv"]:
        assert f"[`{f}`]({f})" in readme
    line = next(x for x in readme.splitlines() if "overlays_acdc_3labeled.png" in x)
    assert "wins and loses most against UniMatch" in line and "3 runs: mean-teacher, supervised, unimatch" in line
    from matplotlib.image import imread

    png = imread(out / "figures" / "overlays_acdc_3labeled.png")
    assert png.shape[0] > png.shape[1]  # one row of four panels per pick: a tall figure
