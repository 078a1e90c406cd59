"""What `ssbench table` pools: protocols, training settings, seeds spelled twice, unreadable folders, the baseline
and upper-bound rows, re-evaluations. Run folders are written by hand as the engine writes them."""

import json
import re

import numpy as np
import pandas as pd
import pytest

from report_runs import build_tables, hand_mean, write_run
from ssbench.report.collect import collect
from ssbench.report.pooling import layouts


def _build(cli, root, out):
    return build_tables(root, out)


def _main(out, stem="acdc"):
    return pd.read_csv(out / f"main_{stem}.csv")


def _dice(frame, row, labeled):
    hit = frame[(frame.row == row) & (frame.labeled == labeled) & (frame.metric == "dice")]
    assert len(hit) == 1, (row, labeled, sorted(set(frame.row)))
    return hit.iloc[0]


@pytest.mark.parametrize("settings, label", [
    ({"train.selection": "legacy-val+test"}, "UniMatch (legacy val+test selection)"),
    ({"data.inference_resize": "bilinear"}, "UniMatch (bilinear inference)"),
    ({"train.iters": 200}, "UniMatch (train.iters=200)"),
    ({"unimatch.conf_thresh": 0.9}, "UniMatch (unimatch.conf_thresh=0.9)"),
])
def test_a_run_of_other_settings_gets_its_own_row_and_blocks_nothing(tmp_path, cli, settings, label):
    rng = np.random.default_rng(0)
    root = tmp_path / "results"
    honest = [write_run(root, "unimatch", "3", s, rng=rng) for s in (1, 2)]
    write_run(root, "supervised", "3", 1, rng=rng)
    odd = write_run(root, "unimatch", "3", 3, rng=rng, settings=settings, shift=-0.3)
    out = tmp_path / "paper"
    _build(cli, root, out)
    main = _main(out)
    cell = _dice(main, "UniMatch", 3)
    assert cell["n_seeds"] == 2 and cell["mean"] == pytest.approx(np.mean([hand_mean(f) for f in honest]) * 100)
    assert label not in set(main.row)
    other = pd.read_csv(out / "other-protocols_acdc.csv")
    assert _dice(other, label, 3)["mean"] == pytest.approx(hand_mean(odd) * 100)
    md = (out / "other-protocols_acdc.md").read_text()
    key, value = next(iter(settings.items()))
    assert f"{label}: {key} = {value}" in md  # the difference, named, with the main row's value
    assert label in (out / "main_acdc.md").read_text()  # the main table points to it
    prov = json.loads((out / "other-protocols_acdc.provenance.json").read_text())
    row = next(r for r in prov["rows"] if r["label"] == label)
    assert row["main"] is False and key in row["differs_from_main_row"]
    assert row["cells"]["3"][0]["run"] == str(odd)


def test_only_legacy_runs_build_no_main_table_but_no_error(tmp_path, cli):
    root = tmp_path / "results"
    write_run(root, "unimatch", "3", 1, settings={"train.selection": "legacy-val+test"}, suffix="-legacy-valtest")
    out = tmp_path / "paper"
    _build(cli, root, out)
    assert not (out / "main_acdc.md").exists()
    assert "UniMatch (legacy val+test selection)" in (out / "other-protocols_acdc.md").read_text()


def test_metric_policies_never_share_a_table(tmp_path, cli):
    rng = np.random.default_rng(1)
    root = tmp_path / "results"
    a = write_run(root, "unimatch", "3", 1, rng=rng)
    b = write_run(root, "unimatch", "3", 2, rng=rng, settings={"eval.connectivity": 2})
    c = write_run(root, "unimatch", "3", 3, rng=rng, settings={"eval.empty": "legacy-zero", "eval.hd_units": "voxel"})
    out = tmp_path / "paper"
    _build(cli, root, out)
    assert _dice(_main(out), "UniMatch", 3)["mean"] == pytest.approx(hand_mean(a) * 100)
    assert _dice(_main(out, "acdc_worst-mm-c2"), "UniMatch", 3)["mean"] == pytest.approx(hand_mean(b) * 100)
    legacy = _main(out, "acdc_legacy-zero-voxel-c1")
    assert _dice(legacy, "UniMatch", 3)["mean"] == pytest.approx(hand_mean(c) * 100)
    assert "95HD (voxel) ↓" in (out / "main_acdc_legacy-zero-voxel-c1.md").read_text()
    assert "surface connectivity 2" in (out / "main_acdc_worst-mm-c2.md").read_text()


def test_one_seed_spelled_two_ways_counts_once(tmp_path, cli):
    rng = np.random.default_rng(2)
    root = tmp_path / "results"
    as_pct = write_run(root, "mean-teacher", "10%", 1, labeled=7, rng=rng)
    as_count = write_run(root, "mean-teacher", "7", 1, rng=rng)
    second = write_run(root, "mean-teacher", "7", 2, rng=rng)
    out = tmp_path / "paper"
    stdout = _build(cli, root, out)
    cell = _dice(_main(out), "Mean Teacher", 7)
    assert cell["n_seeds"] == 2 and cell["seeds"] == "1;2"
    used, ignored = sorted([as_pct, as_count], key=str)  # path order decides, recorded
    assert cell["mean"] == pytest.approx(np.mean([hand_mean(used), hand_mean(second)]) * 100)
    assert f"ignored {ignored}: seed 1 is already counted from {used}" in stdout
    prov = json.loads((out / "main_acdc.provenance.json").read_text())
    assert prov["duplicates"] == [{"used": str(used), "ignored": str(ignored),
                                   "reason": prov["duplicates"][0]["reason"]}]
    md = (out / "main_acdc.md").read_text()
    assert "Counted once: Mean Teacher, 7 labeled, seed 1" in md
    assert "7 labeled (10%)" in md  # the group is named with the literature's percentage


BAD = {
    "malformed yaml": ("config.yaml", "data: [unclosed\n", "config.yaml: unreadable (malformed YAML"),
    "config not a mapping": ("config.yaml", "- a\n- b\n", "config.yaml: expected a mapping"),
    "missing key": ("config.yaml", None, "config.yaml: missing key eval.hd_units"),
    "run.json broken": ("run.json", "{not json", "run.json: unreadable"),
    "missing column": ("metrics_per_case.csv", "checkpoint,case_id\nbest,x\n", "missing column 'patient_id'"),
    "text in a metric": ("metrics_per_case.csv", None, "column 'dice' holds values that are not numbers"),
    "empty csv": ("metrics_per_case.csv", "", "metrics_per_case.csv: unreadable"),
    "no best rows": ("metrics_per_case.csv", None, "no rows for the 'best' checkpoint"),
    "failed run": ("run.json", None, "status 'failed', not complete"),
}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_unreadable_run_folders_are_skipped_and_named(tmp_path, cli, kind):
    rng = np.random.default_rng(3)
    root = tmp_path / "results"
    good = write_run(root, "unimatch", "3", 1, rng=rng)
    bad = write_run(root, "unimatch", "3", 2, rng=rng)
    name, text, reason = BAD[kind]
    path = bad / name
    if kind == "missing key":
        text = path.read_text().replace("  hd_units: mm\n", "")
    elif kind == "text in a metric":
        f = pd.read_csv(path)
        f["dice"] = f["dice"].astype(object)
        f.loc[3, "dice"] = "n/a?"
        text = f.to_csv(index=False)
    elif kind == "no best rows":
        f = pd.read_csv(path)
        text = f[f.checkpoint == "final"].to_csv(index=False)
    elif kind == "failed run":
        info = json.loads(path.read_text())
        text = json.dumps({**info, "status": "failed"})
    path.write_text(text)
    out = tmp_path / "paper"
    stdout = _build(cli, root, out)
    line = next(x for x in stdout.splitlines() if x.startswith(f"skipped {bad}:"))
    assert reason in line
    cell = _dice(_main(out), "UniMatch", 3)
    assert cell["n_seeds"] == 1 and cell["mean"] == pytest.approx(hand_mean(good) * 100)
    index = json.loads((out / "index.json").read_text())
    assert index["skipped"][0]["run"] == "../" + bad.relative_to(tmp_path).as_posix()  # seen from the paper folder


def test_baseline_and_upper_bound_have_their_own_rows(tmp_path, cli):
    rng = np.random.default_rng(4)
    root = tmp_path / "results"
    for split in ("3", "7"):
        write_run(root, "supervised", split, 1, rng=rng, shift=-0.2)
        write_run(root, "mean-teacher", split, 1, rng=rng)
    full = write_run(root, "supervised", "all", 1, rng=rng, shift=0.15)
    out = tmp_path / "paper"
    _build(cli, root, out)
    main = _main(out)
    upper = main[main.row == "U-Net (labeled only), all 70 labeled"]
    assert set(upper.section) == {"upper"} and set(upper.labeled) == {70} and len(upper) == 4  # once per metric
    assert upper[upper.metric == "dice"]["mean"].iloc[0] == pytest.approx(hand_mean(full) * 100)
    assert upper["rank"].isna().all()  # the upper bound is never ranked, though its Dice is the highest
    assert set(main[main.row == "U-Net (labeled only)"].section) == {"baseline"}
    assert set(main[main.row == "Mean Teacher"].section) == {"method"}
    md = (out / "main_acdc.md").read_text().splitlines()
    order = [line.split("|")[1].strip() for line in md if re.match(r"^\| \*[a-z]", line)]
    assert order == ["*labeled only*", "*semi-supervised*", "*upper bound*"]
    upper_line = next(line for line in md if line.startswith("| U-Net (labeled only), all 70"))
    cells = [c.strip() for c in upper_line.split("|")[2:-1]]
    assert cells[:4] == cells[4:] and "**" not in upper_line  # the same run under each split group
    assert "3 labeled" in md[2] and "7 labeled" in md[2] and "70" not in md[2]  # no column group for 'all'


def test_old_runs_without_the_new_fields_pool_with_new_ones(tmp_path, cli):
    rng = np.random.default_rng(5)
    root = tmp_path / "results"
    old = write_run(root, "mean-teacher", "3", 1, rng=rng, display=None,
                    settings={"eval.connectivity": None, "data.inference_resize": None, "data.train_resize": None,
                              "train.schedule": None, "train.epochs": None})
    new = write_run(root, "mean-teacher", "3", 2, rng=rng, display=None)
    out = tmp_path / "paper"
    _build(cli, root, out)
    cell = _dice(_main(out), "mean-teacher", 3)  # no display name recorded: the registry name
    assert cell["n_seeds"] == 2
    assert cell["mean"] == pytest.approx(np.mean([hand_mean(old), hand_mean(new)]) * 100)


def test_epoch_schedules_pool_across_splits_by_their_epochs(tmp_path):
    """Under an epoch schedule train.iters follows from the data: one row across splits, compared on epochs."""
    root = tmp_path / "results"
    for split, iters in (("3", 30900), ("7", 29400)):
        write_run(root, "unimatch", split, 1, settings={"train.schedule": "epochs", "train.iters": iters})
    write_run(root, "unimatch", "7", 2, settings={"train.schedule": "epochs", "train.iters": 29400,
                                                   "train.epochs": 100})
    runs, skipped = collect(root)
    (lay,) = layouts(runs)
    assert not skipped
    assert [(r.label, sorted(r.cells)) for r in lay.main_rows] == [("UniMatch", [3, 7])]
    assert [r.label for r in lay.other_rows] == ["UniMatch (train.epochs=100)"]


def test_reevaluations_become_a_table_of_their_policy(tmp_path, cli):
    rng = np.random.default_rng(6)
    root = tmp_path / "results"
    run = write_run(root, "unimatch", "3", 1, rng=rng)
    sub = run / "evals" / "legacy-zero-voxel"
    sub.mkdir(parents=True)
    f = pd.read_csv(run / "metrics_per_case.csv")
    f["hd95"] = f["hd95"] / 1.5
    f.to_csv(sub / "metrics_per_case.csv", index=False)
    (sub / "summary.json").write_text(json.dumps({"metric_policy": {"empty": "legacy-zero", "hd_units": "voxel",
                                                                    "connectivity": 1}}))
    out = tmp_path / "paper"
    _build(cli, root, out)
    legacy = _main(out, "acdc_legacy-zero-voxel-c1")
    hd = legacy[(legacy.row == "UniMatch") & (legacy.metric == "hd95")]["mean"].iloc[0]
    assert hd == pytest.approx(hand_mean(run, "hd95") / 1.5)
    prov = json.loads((out / "main_acdc_legacy-zero-voxel-c1.provenance.json").read_text())
    cell = prov["rows"][0]["cells"]["3"][0]
    assert cell["run"] == str(sub) and cell["evaluation"] == "legacy-zero-voxel"


def test_an_upper_bound_of_other_settings_has_its_own_row(tmp_path):
    rng = np.random.default_rng(7)
    root = tmp_path / "results"
    write_run(root, "supervised", "3", 1, rng=rng)
    main = [write_run(root, "supervised", "all", s, rng=rng) for s in (1, 2)]
    short = write_run(root, "supervised", "all", 3, rng=rng, settings={"train.iters": 100})
    out = tmp_path / "paper"
    build_tables(root, out)
    upper = _dice(_main(out), "U-Net (labeled only), all 70 labeled", 70)
    assert upper["n_seeds"] == 2 and upper["mean"] == pytest.approx(np.mean([hand_mean(f) for f in main]) * 100)
    other = pd.read_csv(out / "other-protocols_acdc.csv")
    assert _dice(other, "U-Net (labeled only), all 70 labeled (train.iters=100)", 70)["mean"] == \
        pytest.approx(hand_mean(short) * 100)
    assert "70 labeled" in (out / "other-protocols_acdc.md").read_text().splitlines()[2]


def test_a_cell_whose_run_failed_says_why(tmp_path):
    rng = np.random.default_rng(8)
    root = tmp_path / "results"
    write_run(root, "mean-teacher", "3", 1, rng=rng)
    write_run(root, "supervised", "7", 1, rng=rng)
    write_run(root, "mean-teacher", "10%", 1, labeled=7, rng=rng, status="failed")
    out = tmp_path / "paper"
    build_tables(root, out)
    md = (out / "main_acdc.md").read_text()
    line = next(x for x in md.splitlines() if x.startswith("| Mean Teacher |"))
    note = re.search(r"\[(\d)\] run seed1 skipped: status 'failed', not complete", md).group(1)
    assert line.endswith(f"| — [{note}] | — [{note}] | — [{note}] | — [{note}] |")
