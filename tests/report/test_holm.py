"""Holm's correction where it decides something: raw p below 0.05, adjusted p above, read back from
``significance_<dataset>.csv`` and from the † / ‡ marks of the table (marking on raw p would mark two rows here)."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from report_runs import build_tables, write_run
from ssbench.report.stats import holm

# 10 patients, one per rank of |difference| (rank k: 0.01 k); the ranks whose difference is negative. Exact
# two-sided p of the signed-rank test with n = 10: 2 * #{subsets of 1..10 with sum <= W} / 1024.
NEGATIVE_RANKS = {"unimatch": (), "fixmatch": (1, 5), "supervised": (7,)}  # W = 0, 6, 7
RAW = {"unimatch": 2 * 1 / 1024, "fixmatch": 2 * 14 / 1024, "supervised": 2 * 19 / 1024}
ADJUSTED = {"unimatch": 3 * RAW["unimatch"], "fixmatch": 2 * RAW["fixmatch"], "supervised": 2 * RAW["fixmatch"]}


@pytest.fixture(scope="module")
def paper(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("holm")
    # case_ids(): patient p's two volumes at 2(p-1) and 2(p-1)+1
    base = np.repeat(np.random.default_rng(0).uniform(0.6, 0.8, 10), 2)
    root = tmp / "results"
    write_run(root, "mean-teacher", "3", 1, dice=base)
    for method, negative in NEGATIVE_RANKS.items():
        delta = np.array([0.01 * k * (-1 if k in negative else 1) for k in range(1, 11)])
        write_run(root, method, "3", 1, dice=base + np.repeat(delta, 2))
    out = tmp / "paper"
    build_tables(root, out, reference="mean-teacher")
    return out


def test_the_fixture_puts_raw_p_below_and_adjusted_p_above_005():
    assert RAW["fixmatch"] < 0.05 and RAW["supervised"] < 0.05 and ADJUSTED["fixmatch"] > 0.05
    assert ADJUSTED["unimatch"] < 0.05
    np.testing.assert_allclose(holm([RAW[m] for m in RAW]), [ADJUSTED[m] for m in RAW])


def test_significance_csv_holds_raw_and_holm_adjusted_p(paper):
    sig = pd.read_csv(paper / "significance_acdc.csv")
    pat = sig[sig.level == "patient"].set_index("method_id")
    assert sorted(pat.index) == sorted(RAW) and set(pat["reference_id"]) == {"mean-teacher"}
    for method in RAW:
        assert pat.loc[method, "p_raw"] == pytest.approx(RAW[method], rel=1e-9)
        assert pat.loc[method, "p_holm"] == pytest.approx(ADJUSTED[method], rel=1e-9)
        assert bool(pat.loc[method, "significant"]) == (ADJUSTED[method] < 0.05)
        assert pat.loc[method, "wilcoxon_method"] == "exact" and pat.loc[method, "n"] == 10
    assert pat.loc["unimatch", "direction"] == "better"
    assert pat.loc["fixmatch", "direction"] == "better" and pat.loc["supervised", "direction"] == "better"
    # every level's p_holm is Holm over that level's methods of the split
    for _, group in sig.groupby(["labeled", "level"]):
        np.testing.assert_allclose(group["p_holm"], holm(group["p_raw"]))
        assert list(group["significant"]) == list(group["p_holm"] < 0.05)
    # the raw p are scipy's on the patients' means
    assert stats.wilcoxon(np.arange(1, 11) * 0.01).pvalue == pytest.approx(RAW["unimatch"])


def test_marks_follow_the_adjusted_p(paper):
    md = (paper / "main_acdc.md").read_text()
    line = {name: next(x for x in md.splitlines() if x.startswith(f"| {name} |"))
            for name in ("UniMatch", "FixMatch", "U-Net (labeled only)", "Mean Teacher")}
    assert "†" in line["UniMatch"]
    for name in ("FixMatch", "U-Net (labeled only)", "Mean Teacher"):  # raw p < 0.05 for the first two
        assert "†" not in line[name] and "‡" not in line[name], line[name]
    tex = (paper / "main_acdc.tex").read_text()
    assert tex.count(r"^{\dagger}") == 1 and r"\ddagger" not in tex  # the UniMatch row only


@pytest.mark.parametrize("p, expected", [
    ([0.03, 0.01, 0.04, 0.02], [0.06, 0.04, 0.06, 0.06]),  # step-down, then made monotone
    ([0.5, 0.001], [0.5, 0.002]),
    ([0.9, 0.8], [1.0, 1.0]),  # capped at 1
    ([0.04], [0.04]),  # one test: nothing to correct
    ([0.01, 0.01, 0.2], [0.03, 0.03, 0.2]),  # ties
    ([0.2, 0.01, 0.011], [0.2, 0.03, 0.03]),  # 0.011 x 2 = 0.022 < 0.03: raised to the running maximum
    ([0.0, 0.3], [0.0, 0.3]),
    ([], []),
])
def test_holm_adjusted_values(p, expected):
    got = holm(p)
    assert got.shape == (len(p),)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=0)
