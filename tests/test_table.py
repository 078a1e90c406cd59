"""`ssbench table` on per-case files written by the tests: numbers, tests, corrections, refusals, formats."""

import json
import re

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats

from ssbench.report.stats import holm

CLASSES = ("RV", "Myo", "LV")


def make_run(root, method, labeled, seed, rng, dataset="acdc", shift=0.0, hd_units="mm", empty="worst",
             selection="val", status="complete", method_config=None):
    """A completed run folder in the results layout, with random per-case metrics."""
    split = str(labeled)
    name = method.split("@")[0]
    folder = root / dataset / method / split / f"seed{seed}"
    folder.mkdir(parents=True)
    rows = []
    for p in range(1, 11):
        for frame in ("01", "12"):
            for cls in CLASSES:
                for ckpt in ("best", "final"):
                    absent = cls == "RV" and p == 3  # one absent class, excluded from every mean
                    rows.append({"checkpoint": ckpt, "case_id": f"patient{p:03d}_frame{frame}",
                                 "patient_id": f"patient{p:03d}", "class": cls,
                                 "status": "absent" if absent else "ok",
                                 "dice": np.nan if absent else float(np.clip(rng.normal(0.8 + shift, 0.05), 0, 1)),
                                 "jaccard": np.nan if absent else float(rng.uniform(0.5, 0.9)),
                                 "hd95": np.nan if absent else float(rng.uniform(1, 10)),
                                 "asd": np.nan if absent else float(rng.uniform(0.2, 3)),
                                 "hd_units": hd_units, "empty_policy": empty})
    pd.DataFrame(rows).to_csv(folder / "metrics_per_case.csv", index=False)
    cfg = {"config_hash": f"h{method}{labeled}{seed}", "data": {"dataset": dataset.replace("-phantom", ""),
                                                               "root": None, "split": split},
           "train": {"seed": seed, "selection": selection}, "eval": {"empty": empty, "hd_units": hd_units},
           name: method_config or {}, "method": name}
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg))
    (folder / "run.json").write_text(json.dumps({"status": status, "dataset": dataset, "labeled_patients": labeled,
                                                 "config_hash": cfg["config_hash"]}))
    log = pd.DataFrame({"iteration": range(1, 11), "loss": np.linspace(1, 0.1, 10),
                        "val_dice": [np.nan] * 4 + [0.5] + [np.nan] * 4 + [0.7]})
    log.to_csv(folder / "train_log.csv", index=False)
    return folder


def _hand_mean(folder, ckpt="best", metric="dice"):
    f = pd.read_csv(folder / "metrics_per_case.csv")
    f = f[(f.checkpoint == ckpt) & (f.status != "absent")]
    return f.groupby("class")[metric].mean().mean()


@pytest.fixture
def results(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "results"
    runs = {}
    for method, shift in (("supervised", 0.0), ("unimatch", 0.05)):
        for seed in (1, 2):
            runs[(method, 3, seed)] = make_run(root, method, 3, seed, rng, shift=shift)
    runs[("unimatch", 7, 1)] = make_run(root, "unimatch", 7, 1, rng, shift=0.08)  # supervised@7 is missing
    staging = root / "acdc" / "supervised" / "7" / ".seed1.incomplete"
    staging.mkdir(parents=True)
    (staging / "run.json").write_text(json.dumps({"status": "running"}))
    return root, runs


def test_tables_equal_hand_computed_means(results, cli, tmp_path):
    root, runs = results
    out = tmp_path / "paper"
    code, stdout, err = cli("table", "--results", root, "--out", out)
    assert code == 0, err
    assert "skipped" in stdout and ".seed1.incomplete" in stdout and "used" in stdout
    frame = pd.read_csv(out / "main_acdc.csv")
    for method in ("supervised", "unimatch"):
        seeds = [_hand_mean(runs[(method, 3, s)]) * 100 for s in (1, 2)]
        row = frame[(frame.method == method) & (frame.labeled == 3) & (frame.metric == "dice")].iloc[0]
        assert row["mean"] == pytest.approx(np.mean(seeds))
        assert row["std"] == pytest.approx(np.std(seeds, ddof=1))
        assert row["n_seeds"] == 2
        hd = [_hand_mean(runs[(method, 3, s)], metric="hd95") for s in (1, 2)]
        assert frame[(frame.method == method) & (frame.labeled == 3) & (frame.metric == "hd95")]["mean"].iloc[0] \
            == pytest.approx(np.mean(hd))
    md = (out / "main_acdc.md").read_text()
    sup = [l for l in md.splitlines() if l.startswith("| supervised")][0]
    assert "—[1]" in sup  # the missing cell, with its reason in a footnote
    assert "[1] run .seed1.incomplete skipped: incomplete" in md
    prov = json.loads((out / "main_acdc.provenance.json").read_text())
    assert {p["run"] for p in prov["cells"]["unimatch | 3 labeled"]} == {str(runs[("unimatch", 3, s)])
                                                                         for s in (1, 2)}
    assert prov["cells"]["unimatch | 3 labeled"][0]["config_hash"] == "hunimatch31"
    per_class = pd.read_csv(out / "perclass_acdc_3labeled.csv")
    f = pd.read_csv(runs[("supervised", 3, 1)] / "metrics_per_case.csv")
    rv1 = f[(f.checkpoint == "best") & (f["class"] == "RV") & (f.status != "absent")]["dice"].mean()
    f2 = pd.read_csv(runs[("supervised", 3, 2)] / "metrics_per_case.csv")
    rv2 = f2[(f2.checkpoint == "best") & (f2["class"] == "RV") & (f2.status != "absent")]["dice"].mean()
    got = per_class[(per_class.method == "supervised") & (per_class["class"] == "RV") & (per_class.metric == "dice")]
    assert got["mean"].iloc[0] == pytest.approx(100 * (rv1 + rv2) / 2)


def test_p_values_equal_scipy_on_the_same_pairs(results, cli, tmp_path):
    root, runs = results
    out = tmp_path / "paper"
    assert cli("table", "--results", root, "--out", out, "--reference", "unimatch")[0] == 0
    sig = pd.read_csv(out / "significance_acdc.csv")

    def per_case(method):
        series = []
        for s in (1, 2):
            f = pd.read_csv(runs[(method, 3, s)] / "metrics_per_case.csv")
            f = f[(f.checkpoint == "best") & (f.status != "absent")]
            series.append(f.groupby(["case_id", "patient_id"])["dice"].mean())
        return pd.concat(series, axis=1).mean(axis=1)

    a, b = per_case("supervised"), per_case("unimatch")
    vol = sig[(sig.level == "volume") & (sig.labeled == 3)].iloc[0]
    assert vol["method"] == "supervised" and vol["reference"] == "unimatch" and vol["n"] == 20
    assert vol["p_raw"] == pytest.approx(stats.wilcoxon(a, b).pvalue)
    pa, pb = a.groupby(level="patient_id").mean(), b.groupby(level="patient_id").mean()
    pat = sig[(sig.level == "patient") & (sig.labeled == 3)].iloc[0]
    assert pat["n"] == 10 and pat["p_raw"] == pytest.approx(stats.wilcoxon(pa, pb).pvalue)
    assert pat["mean_diff"] == pytest.approx((pa - pb).mean())
    assert pat["ci_low"] < pat["mean_diff"] < pat["ci_high"]


def test_holm_known_example():
    # m = 4: sorted 0.01, 0.02, 0.03, 0.04 -> 0.04, 0.06, 0.06 (monotone), 0.06... capped at 1
    np.testing.assert_allclose(holm([0.03, 0.01, 0.04, 0.02]), [0.06, 0.04, 0.06, 0.06])
    np.testing.assert_allclose(holm([0.5, 0.001]), [0.5, 0.002])
    np.testing.assert_allclose(holm([0.9, 0.8]), [1.0, 1.0])


@pytest.mark.parametrize("change", [dict(hd_units="voxel"), dict(empty="legacy-zero"),
                                    dict(selection="legacy-val+test")])
def test_mixed_protocols_are_refused_naming_the_runs(tmp_path, cli, change):
    rng = np.random.default_rng(1)
    root = tmp_path / "results"
    a = make_run(root, "unimatch", 3, 1, rng)
    b = make_run(root, "unimatch", 3, 2, rng, **change)
    code, _, err = cli("table", "--results", root, "--out", tmp_path / "paper")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert str(a) in err and str(b) in err and "cannot share a cell" in err


def test_latex_is_a_well_formed_tabular(results, cli, tmp_path):
    root, _ = results
    out = tmp_path / "paper"
    assert cli("table", "--results", root, "--out", out, "--format", "tex")[0] == 0
    assert not list(out.glob("*.md")) and not list(out.glob("main_*.csv"))
    for tex in out.glob("*.tex"):
        text = tex.read_text()
        assert text.count(r"\begin{tabular}") == 1 and text.count(r"\end{tabular}") == 1
        spec = re.search(r"\\begin\{tabular\}\{([lrc]+)\}", text).group(1)
        body = text.split(r"\begin{tabular}")[1].split(r"\end{tabular}")[0]
        rows = [l for l in body.splitlines() if l.rstrip().endswith(r"\\")]
        assert rows and all(r.count("&") - r.count(r"\&") == len(spec) - 1 for r in rows)
        unescaped = re.findall(r"(?<!\\)[%#_]", body.split("}", 1)[1])
        assert not unescaped, tex.name
        assert text.count("{") == text.count("}")


def test_figures_are_written(results, cli, tmp_path):
    root, _ = results
    out = tmp_path / "paper"
    assert cli("table", "--results", root, "--out", out)[0] == 0
    for stem in ("dice_acdc", "curves_acdc"):
        for ext in ("png", "pdf"):
            f = out / "figures" / f"{stem}.{ext}"
            assert f.is_file() and f.stat().st_size > 1000


def test_ablation_and_gap_tables(tmp_path, cli):
    rng = np.random.default_rng(2)
    root = tmp_path / "results"
    make_run(root, "sss", 7, 1, rng, dataset="bhsd")
    make_run(root, "sss@dfe=false", 7, 1, rng, dataset="bhsd", method_config={"dfe": False})
    out = tmp_path / "paper"
    code, _, err = cli("table", "--results", root, "--out", out)
    assert code == 0, err
    ab = (out / "ablation_sss_bhsd.md").read_text()
    assert "| off | on | 7 | sss@dfe=false |" in ab and "| on | on | 7 | sss |" in ab
    gap = pd.read_csv(out / "reproduction_gap.csv")
    row = gap[(gap.method == "SSS") & (gap.metric == "dice")].iloc[0]
    assert row["value"] == 53.15 and not np.isnan(row["ours"])
    acdc = (out / "reproduction_gap.md").read_text()
    assert "no completed run of this method, dataset and split" in acdc


def test_bad_table_options(cli, tmp_path):
    code, _, err = cli("table", "--results", tmp_path / "none")
    assert code == 2 and "does not exist" in err
    (tmp_path / "empty").mkdir()
    code, _, err = cli("table", "--results", tmp_path / "empty", "--out", tmp_path / "p")
    assert code == 2 and "no completed runs" in err
    code, _, err = cli("table", "--results", tmp_path / "empty", "--format", "docx")
    assert code == 2 and "--format" in err
