"""Significance: scipy's Wilcoxon without shortcuts, the method it used, the direction of a difference, and
bootstrap CIs that resample patients (a patient's ED and ES volumes together)."""

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from report_runs import build_tables, case_ids, hand_cases, write_run
from ssbench.report.stats import cluster_bootstrap_ci, wilcoxon


def test_tiny_one_signed_differences_are_tested_not_rounded_to_p_1():
    rng = np.random.default_rng(0)
    b = rng.uniform(0.6, 0.9, 20)
    a = b + 1e-9 * np.arange(1, 21)  # within np.allclose of b, but every pair one way
    res = wilcoxon(a, b)
    assert res.p == pytest.approx(stats.wilcoxon(a, b).pvalue) and res.p < 1e-5
    assert res.method == "exact" and res.zero_method == "wilcox" and res.direction == 1
    assert wilcoxon(b, a).direction == -1


@pytest.mark.parametrize("d, method", [
    (np.r_[0.0, 0.0, np.arange(1, 9)], "permutation (all 2^n sign flips)"),  # zeros, n <= 13
    (np.r_[np.ones(5), np.arange(2, 27)], "asymptotic (normal approximation, tie-corrected)"),  # ties, n > 13
    (np.arange(1, 61, dtype=float), "asymptotic (normal approximation, tie-corrected)"),  # n > 50
    (np.r_[-3.5, np.arange(1, 12)], "exact"),
])
def test_the_method_is_scipys_auto_choice_and_recorded(d, method):
    b = np.full(len(d), 0.5)
    res = wilcoxon(b + d / 100, b)
    assert res.method == method
    assert res.p == pytest.approx(stats.wilcoxon(b + d / 100, b).pvalue)  # scipy's default gives the same p
    assert res.n == len(d) and res.n_nonzero == int(np.count_nonzero(d))


def test_identical_scores_give_p_1_through_scipys_zsplit():
    a = np.linspace(0.5, 0.9, 12)
    res = wilcoxon(a, a.copy())
    assert res.p == 1.0 and res.zero_method == "zsplit" and res.direction == 0


def test_direction_follows_the_ranks_not_the_count_of_signs():
    # six small losses (ranks 1-6, sum 21), four large wins (ranks 7-10, sum 34): the test favours a
    d = np.r_[-0.01 * np.arange(1, 7), 1.0, 2.0, 3.0, 4.0]
    b = np.full(10, 0.5)
    assert wilcoxon(b + d, b).direction == 1


def test_cluster_bootstrap_resamples_patients_not_volumes():
    rng = np.random.default_rng(1)
    per_patient = rng.normal(0.02, 0.05, 20)
    volumes = np.repeat(per_patient, 2)  # ED and ES of a patient move together
    patients = np.repeat([f"p{i:03d}" for i in range(20)], 2)
    cluster = cluster_bootstrap_ci(volumes, patients)
    # each resample draws 20 patients with both their volumes: the same CI as resampling the patients' means
    assert cluster == pytest.approx(cluster_bootstrap_ci(per_patient, [f"p{i:03d}" for i in range(20)]))
    independent = cluster_bootstrap_ci(volumes, [f"v{i}" for i in range(40)])  # volumes as if independent
    assert (cluster[1] - cluster[0]) > 1.3 * (independent[1] - independent[0])
    lo, hi = cluster
    assert lo < volumes.mean() < hi


def test_marks_say_the_direction_and_the_file_says_how(tmp_path):
    cases = case_ids()
    rng = np.random.default_rng(2)
    base = rng.uniform(0.6, 0.8, len(cases))
    root = tmp_path / "results"
    folders = {}
    for method, delta in (("mean-teacher", 0.0), ("unimatch", 0.05), ("supervised", -0.05)):
        folders[method] = [write_run(root, method, "3", s, dice=base + delta + rng.normal(0, 0.002, len(cases)))
                           for s in (1, 2)]
    out = tmp_path / "paper"
    build_tables(root, out, reference="mean-teacher")
    md = (out / "main_acdc.md").read_text()
    line = {name: next(x for x in md.splitlines() if x.startswith(f"| {name} |"))
            for name in ("UniMatch", "U-Net (labeled only)", "Mean Teacher")}
    assert "†" in line["UniMatch"] and "‡" not in line["UniMatch"]
    assert "‡" in line["U-Net (labeled only)"] and "†" not in line["U-Net (labeled only)"]
    assert "†" not in line["Mean Teacher"] and "‡" not in line["Mean Teacher"]
    assert "† / ‡: significantly better / worse than the reference method" in md
    sig = pd.read_csv(out / "significance_acdc.csv")
    pat = sig[sig.level == "patient"].set_index("method_id")
    assert pat.loc["unimatch", "direction"] == "better" and pat.loc["supervised", "direction"] == "worse"
    assert set(sig["wilcoxon_method"]) == {"exact"} and set(sig["zero_method"]) == {"wilcox"}
    assert set(sig["seed_handling"]) == {"per-case Dice averaged over each method's seeds, then paired by case"}
    assert (sig["seeds"] == 2).all() and (sig["reference_seeds"] == 2).all()
    assert sig["ci_method"].str.contains("resamples of patients").all()
    prov = json.loads((out / "main_acdc.provenance.json").read_text())["significance"]
    assert prov["reference"] == {"3": {"row": "Mean Teacher", "chosen": "given by --reference"}}
    assert prov["decided_at"] == "patient" and prov["marks"] == {"†": "better", "‡": "worse"}
    # the volume-level CI is the cluster bootstrap of the per-volume differences
    a, b = hand_cases(folders["unimatch"]), hand_cases(folders["mean-teacher"])
    vol = sig[(sig.level == "volume") & (sig.method_id == "unimatch")].iloc[0]
    diff = (a - b) * 100
    assert (vol["ci_low"], vol["ci_high"]) == pytest.approx(
        cluster_bootstrap_ci(diff.to_numpy(), diff.index.get_level_values("patient_id")))


@pytest.mark.parametrize("d, method", [
    (np.r_[0.0, np.arange(1, 10)], "permutation (all 2^n sign flips)"),  # one zero, no ties: not exact
    (np.r_[np.ones(2), np.arange(2, 13)], "permutation (all 2^n sign flips)"),  # ties, n = 13
    (np.r_[np.ones(2), np.arange(2, 14)], "asymptotic (normal approximation, tie-corrected)"),  # ties, n = 14
    (np.arange(1, 51, dtype=float), "exact"),  # n = 50
    (np.arange(1, 52, dtype=float), "asymptotic (normal approximation, tie-corrected)"),  # n = 51
    (np.r_[1.0], "exact"),  # one pair
])
def test_the_method_choice_at_its_boundaries(d, method):
    b = np.full(len(d), 0.5)
    res = wilcoxon(b + d / 100, b)
    assert res.method == method and res.p == pytest.approx(stats.wilcoxon(b + d / 100, b).pvalue)


def test_no_pairs_and_identical_large_samples():
    with pytest.raises(ValueError) as err:
        wilcoxon([], [])
    assert str(err.value) == "wilcoxon: no pairs"
    a = np.linspace(0.5, 0.9, 20)  # n > 13, every difference zero: zsplit keeps p = 1 (wilcox would give NaN)
    res = wilcoxon(a, a.copy())
    assert res.p == 1.0 and res.zero_method == "zsplit" and res.method.startswith("asymptotic")
    assert wilcoxon([0.3], [0.1]).p == 1.0 and wilcoxon([0.3], [0.1]).direction == 1


@pytest.mark.parametrize("d, r_plus, direction", [
    ([2.0, -1.0], 2, 1),  # n = 2: half the rank sum is 1.5, R+ = 2
    ([1.0, 2.0, -3.0], 3, 0),  # balanced: R+ = R- = 3
    ([-1, -2, -3, -4, -5, -6, 7, 8, 10, -9], 25, -1),  # n = 10: half is 27.5
    ([1, 2, 3, 4, 5, 6, -7, -8, -10, 9], 30, 1),
    ([-1, 2, 3, 4, 5, 6, 7, -8, -9, -10], 27, -1),
    ([1, -2, -3, -4, -5, -6, -7, 8, 9, 10], 28, 1),
    ([-1, -2, -3, -4, -5, -6, -7, -8, 9, -10], 9, -1),  # one positive difference: below half all the same
])
def test_the_direction_compares_the_positive_rank_sum_with_half_the_total(d, r_plus, direction):
    d = np.asarray(d, float) / 100
    assert stats.wilcoxon(d, alternative="greater").statistic == r_plus  # the fixture's rank sum, by scipy
    assert wilcoxon(0.5 + d, np.full(len(d), 0.5)).direction == direction


def _bootstrap_by_hand(values, clusters, n_boot, seed, level):
    """The documented procedure, one resample at a time: draw as many clusters as there are (with replacement,
    numpy's default_rng(seed)), average every value of the drawn clusters, take the percentiles."""
    names = sorted(set(clusters))
    members = {c: [v for v, k in zip(values, clusters) if k == c] for c in names}
    rng = np.random.default_rng(seed)
    means = []
    for _ in range(n_boot):
        drawn = [names[i] for i in rng.integers(0, len(names), size=len(names))]
        pooled = [v for c in drawn for v in members[c]]
        means.append(sum(pooled) / len(pooled))
    return tuple(np.percentile(means, [50 * (1 - level), 50 * (1 + level)]))


@pytest.mark.parametrize("level", [0.95, 0.8])
def test_cluster_bootstrap_equals_the_procedure_by_hand(level):
    rng = np.random.default_rng(5)
    clusters = [f"p{i}" for i in rng.integers(0, 7, 23)]  # clusters of unequal size
    values = rng.normal(0.1, 0.3, 23)
    got = cluster_bootstrap_ci(values, clusters, n_boot=300, seed=4, level=level)
    assert got == pytest.approx(_bootstrap_by_hand(values, clusters, 300, 4, level), rel=1e-12)
    default = cluster_bootstrap_ci(values, clusters)
    assert default == cluster_bootstrap_ci(values, clusters, n_boot=10_000, seed=0, level=0.95)  # as recorded
    assert default != cluster_bootstrap_ci(values, clusters, seed=1)
