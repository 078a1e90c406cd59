"""ssbench.report.pooling on its own, with Run records built in memory (no folders, no rendering): which runs share
a table, a row and a cell, how rows are ordered and named, and what a duplicated seed is. The same rules through
``ssbench table`` are tests/report/test_report_pooling.py."""

from pathlib import Path

import pandas as pd
import pytest

from ssbench.report.collect import Run
from ssbench.report.pooling import (MISSING, Duplicate, describe, differences, layouts, signature)

BASE = {"eval.empty": "worst", "eval.hd_units": "mm", "eval.connectivity": 1, "train.selection": "val",
        "data.inference_resize": "order0", "data.train_resize": "order0", "train.iters": 600}
DISPLAY = {"supervised": "U-Net (labeled only)", "unimatch": "UniMatch", "mean-teacher": "Mean Teacher"}


def run(method="unimatch", labeled=3, seed=1, dataset="acdc", split=None, full=False, iters=None, **settings):
    flat = {**BASE, **{k.replace("__", "."): v for k, v in settings.items()}}
    base = method.split("@")[0]
    return Run(path=Path(f"/r/{dataset}/{method}/{split or labeled}/seed{seed}-{len(settings)}"), dataset=dataset,
               method=method, base_method=base, display_name=DISPLAY.get(base, base),
               split=split or str(labeled), labeled=labeled, seed=seed, config_hash="h", settings=flat,
               labeled_only=base == "supervised", full=full, frame=pd.DataFrame(),
               config={"train.iters": iters if iters is not None else flat["train.iters"]})


def only(runs):
    (lay,) = layouts(runs)
    return lay


def test_tables_split_by_dataset_and_metric_policy_and_the_default_comes_first():
    lays = layouts([run(eval__hd_units="voxel"), run(seed=2), run(eval__connectivity=2), run(dataset="bhsd"),
                    run(eval__empty="legacy-zero", eval__hd_units="voxel")])
    assert [(l.dataset, l.tag) for l in lays] == [("acdc", ""), ("acdc", "legacy-zero-voxel-c1"),
                                                   ("acdc", "worst-mm-c2"), ("acdc", "worst-voxel-c1"), ("bhsd", "")]
    assert [l.stem for l in lays] == ["acdc", "acdc_legacy-zero-voxel-c1", "acdc_worst-mm-c2",
                                      "acdc_worst-voxel-c1", "bhsd"]
    assert lays[0].policy == ("worst", "mm", 1) and lays[0].units == "mm" and lays[3].units == "voxel"
    # without the benchmark's default policy: worst-voxel before others (mm first, then voxels), then by name
    lays = layouts([run(eval__empty="exclude"), run(eval__hd_units="voxel", seed=2)])
    assert [l.tag for l in lays] == ["", "exclude-mm-c1"] and lays[0].policy == ("worst", "voxel", 1)
    lays = layouts([run(eval__empty="exclude", eval__hd_units="voxel"), run(eval__empty="exclude", seed=2)])
    assert lays[0].policy == ("exclude", "mm", 1) and lays[1].tag == "exclude-voxel-c1"


def test_the_main_protocol_is_val_selection_with_the_most_used_inference_resize():
    lay = only([run(seed=1, data__inference_resize="bilinear"), run(seed=2, data__inference_resize="bilinear"),
                run(method="supervised")])
    assert lay.main_protocol == {"selection": "val", "inference_resize": "bilinear"}
    lay = only([run(seed=1, data__inference_resize="bilinear"), run(method="supervised")])  # a tie: order0
    assert lay.main_protocol["inference_resize"] == "order0"
    lay = only([run(train__selection="legacy-val+test", data__inference_resize="bilinear")])  # no val run
    assert lay.main_protocol == {"selection": "val", "inference_resize": "order0"}
    assert [r.main for r in lay.rows] == [False]
    assert lay.rows[0].differs == {"train.selection": ("legacy-val+test", "val"),
                                   "data.inference_resize": ("bilinear", "order0")}
    assert lay.rows[0].label == "UniMatch (legacy val+test selection, bilinear inference)"


def test_a_methods_main_row_is_its_largest_group_on_the_main_protocol():
    runs = [run(seed=s) for s in (1, 2)] + [run(seed=s, train__iters=200, iters=200) for s in (1, 2, 3)]
    runs += [run(seed=4, train__selection="legacy-val+test")] * 1
    lay = only(runs)
    main, = lay.main_rows
    assert main.settings["train.iters"] == 200 and [r.seed for r in main.cells[3]] == [1, 2, 3]
    others = {r.label: r for r in lay.other_rows}
    assert set(others) == {"UniMatch (legacy val+test selection, train.iters=600)", "UniMatch (train.iters=600)"}
    assert others["UniMatch (train.iters=600)"].differs == {"train.iters": (600, 200)}
    # a tie in size: the longer training wins (1000 > 600, though "1000" < "600" as text)
    lay = only([run(seed=1), run(seed=2, train__iters=1000, iters=1000)])
    assert lay.main_rows[0].settings["train.iters"] == 1000
    assert [(r.method, r.display) for r in lay.rows] == [("unimatch", "UniMatch")] * 2


def test_roles_order_and_the_upper_bound():
    lay = only([run("unimatch"), run("mean-teacher"), run("supervised"), run("supervised", 70, split="all", full=True),
                run("supervised", 7)])
    assert [(r.label, r.role) for r in lay.rows] == [
        ("U-Net (labeled only)", "baseline"), ("Mean Teacher", "method"), ("UniMatch", "method"),
        ("U-Net (labeled only), all 70 labeled", "upper")]
    assert lay.splits() == [3, 7] and lay.rows[0].runs == [lay.rows[0].cells[3][0], lay.rows[0].cells[7][0]]
    assert lay.splits([lay.rows[3]]) == []


def test_one_seed_spelled_twice_counts_once_and_says_why():
    a, b, c = run(split="10%", labeled=7), run(labeled=7), run(labeled=7, seed=2)
    lay = only([b, c, a])
    (row,) = lay.rows
    assert [r.seed for r in row.cells[7]] == [1, 2] and row.cells[7][0] is min((a, b), key=lambda r: str(r.path))
    (dup,) = lay.duplicates
    assert dup.used is row.cells[7][0] and {id(dup.used), id(dup.ignored)} == {id(a), id(b)}
    assert Duplicate(a, b).reason == (f"seed 1 is already counted from {a.path} (the same settings; split spelled "
                                      "'10%' there, '7' here)")
    assert lay.split_label(7) == "7 labeled (10%)" and lay.split_label(3) == "3 labeled"


def test_rows_of_one_method_get_unique_labels():
    lay = only([run(seed=1), run(seed=5), run(seed=2, unimatch__conf_thresh=0.9, train__iters=300,
                                              data__train_resize="bilinear"),
                run(seed=3, unimatch__conf_thresh=0.8), run(seed=4, unimatch__conf_thresh=0.8, train__lr=0.1)])
    labels = [r.label for r in lay.rows]
    assert labels[0] == "UniMatch" and lay.rows[0].main
    assert "UniMatch (bilinear train resize, train.iters=300, +1 more)" in labels
    assert "UniMatch (unimatch.conf_thresh=0.8)" in labels and "UniMatch (train.lr=0.1, unimatch.conf_thresh=0.8)" \
        in labels and len(labels) == 4
    same = only([run(seed=1), run(seed=4), run(seed=2, x__y=1), run(seed=3, x__y=2)])
    assert [r.label for r in same.rows] == ["UniMatch", "UniMatch (x.y=1)", "UniMatch (x.y=2)"]
    # no row on the main protocol: each row is named against its own settings on it, then told apart by number
    twins = only([run(seed=1, train__selection="legacy-val+test", x__y=1),
                  run(seed=2, train__selection="legacy-val+test", x__y=2)])
    assert [r.label for r in twins.rows] == ["UniMatch (legacy val+test selection)",
                                             "UniMatch (legacy val+test selection) [2]"]
    assert [r.settings["x.y"] for r in twins.rows] == [1, 2]


def test_differences_describe_and_signature():
    assert differences({"a": 1, "b": 2}, {"a": 1, "c": 3}) == {"b": (2, MISSING), "c": (MISSING, 3)}
    assert differences({"a": 1}, {"a": 1}) == {}
    assert describe("train.selection", "legacy-val+test") == "legacy val+test selection"
    assert describe("train.selection", "test") == "test selection"
    assert describe("data.inference_resize", "order0") == "order-0 inference"
    assert describe("data.inference_resize", "bilinear") == "bilinear inference"
    assert describe("data.train_resize", "order0") == "order-0 train resize"
    assert describe("data.train_resize", "bilinear") == "bilinear train resize"
    assert describe("sss.jitter", (0.2, 0.3)) == "sss.jitter=0.2,0.3" and describe("x", 5) == "x=5"
    assert signature({"b": 1, "a": 2}) == (("a", 2), ("b", 1))


@pytest.mark.parametrize("order", [0, 1])
def test_cells_are_sorted_by_seed_whatever_the_folder_order(order):
    runs = [run(seed=s) for s in (3, 1, 2)]
    lay = only(runs if order else list(reversed(runs)))
    assert [r.seed for r in lay.rows[0].cells[3]] == [1, 2, 3]
