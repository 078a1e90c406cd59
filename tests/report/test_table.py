"""`ssbench table` on run folders written by the tests: numbers, tests, corrections, formats, refusals."""

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from report_runs import build_tables, hand_cases, hand_mean, write_run
from ssbench.report.stats import holm


@pytest.fixture
def results(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "results"
    runs = {}
    for method, shift in (("supervised", 0.0), ("unimatch", 0.05)):
        for seed in (1, 2):
            runs[(method, 3, seed)] = write_run(root, method, "3", seed, rng=rng, shift=shift)
    runs[("unimatch", 7, 1)] = write_run(root, "unimatch", "7", 1, rng=rng, shift=0.08)  # supervised@7 is missing
    staging = root / "acdc" / "supervised" / "7" / ".seed1.incomplete"
    staging.mkdir(parents=True)
    (staging / "run.json").write_text(json.dumps({"status": "running"}))
    return root, runs


def _cell(frame, method, labeled, metric):
    hit = frame[(frame.method == method) & (frame.labeled == labeled) & (frame.metric == metric)]
    assert len(hit) == 1
    return hit.iloc[0]


def test_tables_equal_hand_computed_means(results, cli, tmp_path):
    root, runs = results
    out = tmp_path / "paper"
    code, stdout, err = cli("table", "--results", root, "--out", out)
    assert code == 0, err
    assert "skipped" in stdout and ".seed1.incomplete" in stdout and "used" in stdout
    frame = pd.read_csv(out / "main_acdc.csv")
    for method in ("supervised", "unimatch"):
        seeds = [hand_mean(runs[(method, 3, s)]) * 100 for s in (1, 2)]
        row = _cell(frame, method, 3, "dice")
        assert row["mean"] == pytest.approx(np.mean(seeds))
        assert row["std"] == pytest.approx(np.std(seeds, ddof=1))
        assert row["n_seeds"] == 2 and row["seeds"] == "1;2"
        hd = [hand_mean(runs[(method, 3, s)], metric="hd95") for s in (1, 2)]
        assert _cell(frame, method, 3, "hd95")["mean"] == pytest.approx(np.mean(hd))
    # display names from run.json, in the table and the CSV
    assert set(frame["row"]) == {"U-Net (labeled only)", "UniMatch"}
    md = (out / "main_acdc.md").read_text()
    sup = [line for line in md.splitlines() if line.startswith("| U-Net (labeled only)")][0]
    assert sup.count("— [1]") == 4  # the missing cell, its reason in a footnote
    assert "[1] run .seed1.incomplete skipped: incomplete" in md
    prov = json.loads((out / "main_acdc.provenance.json").read_text())
    uni = next(r for r in prov["rows"] if r["method"] == "unimatch")
    assert {c["run"] for c in uni["cells"]["3"]} == {str(runs[("unimatch", 3, s)]) for s in (1, 2)}
    assert prov["skipped"][0]["reason"].startswith("incomplete")
    per_class = pd.read_csv(out / "perclass_acdc_3labeled.csv")
    rv = []
    for s in (1, 2):
        f = pd.read_csv(runs[("supervised", 3, s)] / "metrics_per_case.csv")
        rv.append(f[(f.checkpoint == "best") & (f["class"] == "RV")]["dice"].mean())
    got = per_class[(per_class.method == "supervised") & (per_class["class"] == "RV") & (per_class.metric == "dice")]
    assert got["mean"].iloc[0] == pytest.approx(100 * np.mean(rv))


def test_final_checkpoint_reads_the_final_rows(results, cli, tmp_path):
    root, runs = results
    out = tmp_path / "paper"
    build_tables(root, out, checkpoint="final")
    frame = pd.read_csv(out / "main_acdc.csv")
    expected = np.mean([hand_mean(runs[("unimatch", 3, s)], ckpt="final") for s in (1, 2)]) * 100
    assert _cell(frame, "unimatch", 3, "dice")["mean"] == pytest.approx(expected)
    assert expected != pytest.approx(np.mean([hand_mean(runs[("unimatch", 3, s)]) for s in (1, 2)]) * 100)


def test_p_values_equal_scipy_on_the_same_pairs(results, cli, tmp_path):
    root, runs = results
    out = tmp_path / "paper"
    build_tables(root, out, reference="unimatch")
    sig = pd.read_csv(out / "significance_acdc.csv")
    a = hand_cases([runs[("supervised", 3, s)] for s in (1, 2)])
    b = hand_cases([runs[("unimatch", 3, s)] for s in (1, 2)])
    vol = sig[(sig.level == "volume") & (sig.labeled == 3)].iloc[0]
    assert vol["method_id"] == "supervised" and vol["reference_id"] == "unimatch" and vol["n"] == 20
    assert vol["p_raw"] == pytest.approx(stats.wilcoxon(a, b).pvalue)
    assert vol["mean_diff"] == pytest.approx((a - b).mean() * 100)
    pa, pb = a.groupby(level="patient_id").mean(), b.groupby(level="patient_id").mean()
    pat = sig[(sig.level == "patient") & (sig.labeled == 3)].iloc[0]
    assert pat["n"] == 10 and pat["p_raw"] == pytest.approx(stats.wilcoxon(pa, pb).pvalue)
    assert pat["mean_diff"] == pytest.approx((pa - pb).mean() * 100)
    assert pat["ci_low"] < pat["mean_diff"] < pat["ci_high"]
    assert pat["reference_chosen"] == "given by --reference"


def test_holm_known_example():
    # m = 4: sorted 0.01, 0.02, 0.03, 0.04 -> 0.04, 0.06, 0.06 (monotone), 0.06... capped at 1
    np.testing.assert_allclose(holm([0.03, 0.01, 0.04, 0.02]), [0.06, 0.04, 0.06, 0.06])
    np.testing.assert_allclose(holm([0.5, 0.001]), [0.5, 0.002])
    np.testing.assert_allclose(holm([0.9, 0.8]), [1.0, 1.0])


def test_format_option_limits_the_files(results, tmp_path):
    root, _ = results
    out = tmp_path / "paper"
    build_tables(root, out, formats=["tex"])
    assert not list(out.glob("main_*.md")) and not list(out.glob("main_*.csv"))
    assert (out / "main_acdc.tex").is_file() and (out / "main_acdc-notes.tex").is_file()


def test_ablation_table(tmp_path, cli):
    rng = np.random.default_rng(2)
    root = tmp_path / "results"
    write_run(root, "sss", "7", 1, dataset="bhsd", rng=rng)
    write_run(root, "sss@dfe=false", "7", 1, dataset="bhsd", rng=rng, settings={"sss.dfe": False})
    out = tmp_path / "paper"
    build_tables(root, out)
    ab = (out / "ablation_sss_bhsd.md").read_text()
    assert "| DFE off, PCSW on (sss@dfe=false) |" in ab and "| DFE on, PCSW on |" in ab


def test_bad_table_options(cli, tmp_path, results):
    code, _, err = cli("table", "--results", tmp_path / "none")
    assert code == 2 and "does not exist" in err
    (tmp_path / "empty").mkdir()
    code, _, err = cli("table", "--results", tmp_path / "empty", "--out", tmp_path / "p")
    assert code == 2 and "no completed runs" in err
    code, _, err = cli("table", "--results", tmp_path / "empty", "--format", "docx")
    assert code == 2 and "--format" in err
    root, _ = results
    code, _, err = cli("table", "--results", root, "--out", tmp_path / "p", "--reference", "nosuch")
    assert code == 2 and "--reference nosuch" in err and "unimatch" in err and len(err.strip().splitlines()) == 1


def test_a_table_of_runs_the_engine_wrote_equals_the_hand_mean(tiny_run, tiny_nnunet, tmp_path, cli):
    """Two tiny supervised runs (seeds 1337 and 7) as the engine writes them, through `ssbench table`: every
    metric's mean and sample std over seeds equals the literature's mean recomputed from each metrics_per_case.csv
    (misses and false positives included, absent classes left out)."""
    import shutil

    from conftest import tiny_request
    from ssbench.engine.run import execute

    results = tmp_path / "results"
    first = results / "nnunet" / "supervised" / "2" / "seed1337"
    shutil.copytree(tiny_run, first)
    second = execute(tiny_request(tiny_nnunet, results, seed=7))
    out = tmp_path / "paper"
    code, _, err = cli("table", "--results", results, "--out", out)
    assert code == 0, err
    frame = pd.read_csv(out / "main_nnunet.csv")
    for metric, scale in (("dice", 100), ("jaccard", 100), ("hd95", 1), ("asd", 1)):
        seeds = [hand_mean(run, metric) * scale for run in (first, second)]
        cell = _cell(frame, "supervised", 2, metric)
        assert cell["mean"] == pytest.approx(np.mean(seeds), rel=1e-12)
        assert cell["std"] == pytest.approx(np.std(seeds, ddof=1), rel=1e-9)
        assert cell["n_seeds"] == 2 and cell["seeds"] == "7;1337"
    assert seeds[0] != seeds[1]  # two different runs
    md = (out / "main_nnunet.md").read_text()
    dice = np.mean([hand_mean(run) * 100 for run in (first, second)])
    assert f"{dice:.2f} ± " in md
