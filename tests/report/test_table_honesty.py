"""Tables that say what they can and cannot show (issue 29, items 5 and 6): the notes give n and the smallest
attainable p and say when no mark is possible; --reference defaults to the labeled-only baseline, fixed before the
results; the significance file comes with any format; the second-best underline is only claimed where it is drawn;
no gap table of dashes for a dataset without published numbers; no absolute paths in README.md and index.json."""

import json

import numpy as np
import pandas as pd

from report_runs import build_tables, write_run

SIX = [f"patient{p:03d}_frame01" for p in range(1, 7)]  # 6 test volumes of 6 patients


def _results(root, methods=(("supervised", 0.0), ("mean-teacher", 0.10), ("fixmatch", 0.05)), dataset="acdc"):
    for method, shift in methods:
        for seed in (1, 2):
            rng = np.random.default_rng(seed)
            write_run(root, method, seed=seed, dataset=dataset, cases=SIX,
                      dice=np.clip(0.6 + shift + 0.02 * np.arange(6) + rng.normal(0, 0.001, 6), 0, 1))
    return root


def test_notes_give_n_and_the_smallest_p_and_say_no_mark_is_possible(tmp_path):
    root = _results(tmp_path / "results")
    build_tables(root, tmp_path / "paper")
    md = " ".join((tmp_path / "paper" / "main_acdc.md").read_text().split())
    # every method beats the baseline on all 6 volumes: p = 2/64 = 0.031, after Holm over 2 methods 0.062
    assert "n = 6 test volumes; the smallest attainable two-sided p is 0.0312, 0.0625 after Holm over 2 methods" in md
    assert "NO mark is possible at this n" in md
    sig = pd.read_csv(tmp_path / "paper" / "significance_acdc.csv")
    assert np.allclose(sig["p_min"], 2 / 2**6) and np.allclose(sig["p_raw"], 2 / 2**6)  # reached, and still
    assert not sig["mark_possible"].any() and not sig["significant"].any()  # no mark
    assert "†" not in md.split("**acdc")[1].split("Protocol:")[0]  # in no cell


def test_the_default_reference_is_the_labeled_only_baseline_not_the_best(tmp_path):
    root = _results(tmp_path / "results")
    build_tables(root, tmp_path / "paper")
    sig = pd.read_csv(tmp_path / "paper" / "significance_acdc.csv")
    assert set(sig["reference_id"]) == {"supervised"}  # Mean Teacher scores best; it is tested, not the reference
    assert set(sig["method_id"]) == {"mean-teacher", "fixmatch"}
    assert set(sig["reference_chosen"]) == {"the labeled-only baseline (the default: fixed before the results)"}
    prov = json.loads((tmp_path / "paper" / "main_acdc.provenance.json").read_text())
    assert prov["significance"]["reference"]["3"]["row"] == "U-Net (labeled only)"


def test_without_a_baseline_no_test_is_run_and_the_notes_say_why(tmp_path):
    root = _results(tmp_path / "results", methods=(("mean-teacher", 0.1), ("fixmatch", 0.0)))
    build_tables(root, tmp_path / "paper")
    md = " ".join((tmp_path / "paper" / "main_acdc.md").read_text().split())
    assert "No significance test at 3 labeled: no labeled-only baseline run" in md
    assert not (tmp_path / "paper" / "significance_acdc.csv").exists()


def test_tex_alone_writes_the_significance_file_its_notes_cite(tmp_path):
    root = _results(tmp_path / "results")
    build_tables(root, tmp_path / "paper", formats=("tex",))
    notes = (tmp_path / "paper" / "main_acdc-notes.tex").read_text()
    assert "significance\\_acdc.csv" in notes or "significance_acdc.csv" in notes
    assert (tmp_path / "paper" / "significance_acdc.csv").is_file()


def test_the_second_best_is_only_claimed_where_it_is_drawn(tmp_path):
    two = _results(tmp_path / "two", methods=(("supervised", 0.0), ("mean-teacher", 0.1)))
    build_tables(two, tmp_path / "p2", formats=("md",))
    md = (tmp_path / "p2" / "main_acdc.md").read_text()
    assert "<ins>" not in md and "underlined: second best" not in md and "no second best is underlined" in md
    three = _results(tmp_path / "three")
    build_tables(three, tmp_path / "p3", formats=("md",))
    md = (tmp_path / "p3" / "main_acdc.md").read_text()
    assert "<ins>" in md and "underlined: second best" in md


def test_no_gap_table_of_dashes_and_no_absolute_paths(tmp_path):
    root = _results(tmp_path / "results", dataset="nnunet")
    write_run(root, "supervised", seed=9, dataset="nnunet", cases=SIX, status="running")  # skipped: incomplete
    printed = build_tables(root, tmp_path / "paper", formats=("md", "csv"))
    assert not (tmp_path / "paper" / "reproduction_gap.md").exists()
    assert "no reproduction_gap: published.csv has no numbers for nnunet" in printed
    index = json.loads((tmp_path / "paper" / "index.json").read_text())
    readme = (tmp_path / "paper" / "README.md").read_text()
    assert index["results"] == "../results" and "`../results`" in readme
    assert index["skipped"] and all(not s["run"].startswith("/") for s in index["skipped"])
    assert str(tmp_path) not in readme and str(tmp_path) not in json.dumps(index)
