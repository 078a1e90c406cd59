"""CLI papercuts (issue 29, item 7): --version and -h; flags shown without a '<bool>' type they do not take; help
for every sweep/eval option a user asks about; --grid's help names every shipped grid; a split seed on a frozen
split is refused; a missed structure's HD95 is explained as the 'worst' policy's volume diagonal."""

import json

import pytest

from conftest import one_line


def test_version_and_short_help(cli):
    code, out, _ = cli("--version")
    assert code == 0 and out.startswith("ssbench ")
    for command in (("run",), ("sweep",), ("data", "synth"), ("table",)):
        code, out, err = cli(*command, "-h")
        assert code == 0 and f"ssbench {' '.join(command)} [OPTIONS]" in " ".join(out.split()), (command, err)


@pytest.mark.parametrize("command", [("run",), ("sweep",), ("config",), ("split",)])
def test_flags_are_not_shown_as_taking_a_bool(cli, command):
    code, out, _ = cli(*command, "--help")
    assert code == 0 and "--help" in out and "<bool>" not in out


def test_every_sweep_and_eval_option_has_help(cli):
    from ssbench.cli import app
    from ssbench.sweep.grid import shipped_grids
    import typer.main

    group = typer.main.get_command(app)
    sweep, evaluate = group.commands["sweep"], group.commands["eval"]
    for cmd in (sweep, evaluate):
        undocumented = [p.opts[0] for p in cmd.params if not getattr(p, "help", None) and p.opts[0] != "--help"]
        assert not undocumented, (cmd.name, undocumented)
    grid = next(p for p in sweep.params if p.opts[0] == "--grid")
    assert all(name in grid.help for name in shipped_grids()) and {"paper", "zoo"} <= set(shipped_grids())
    gpus = next(p for p in sweep.params if p.opts[0] == "--gpus-per-job")
    assert "--gpus-per-node=N" in gpus.help and "--ntasks-per-node=N" in gpus.help


def test_a_split_seed_on_a_frozen_split_is_refused(cli, tmp_path):
    code, _, err = cli("split", "--split-seed", "3")
    one_line(code, err, "--split-seed 3: the acdc split is frozen")
    code, _, err = cli("run", "--method", "supervised", "--split-seed", "3", "--out", tmp_path, "--quiet")
    one_line(code, err, "--split-seed 3: the acdc split is frozen")
    assert cli("split", "--split-seed", "0")[0] == 0


def test_a_missed_structure_is_explained_as_the_worst_policys_diagonal(tmp_path):
    from rich.console import Console

    from ssbench.cli import _print_summary

    def summary(status):
        cls = {"dice": 0.5, "jaccard": 0.4, "hd95": 302.57, "asd": 150.0, "n_cases": 2, "status_counts": status}
        return {"metric_policy": {"hd_units": "mm", "empty": "worst"}, "test_cases": 2,
                "checkpoints": {"best": {"per_class": {"LV": cls}, "mean": cls}}}

    for status, hint in (({"ok": 1, "missed": 1}, True), ({"ok": 2}, False)):
        (tmp_path / "summary.json").write_text(json.dumps(summary(status)))
        console = Console(record=True, width=200)
        _print_summary(console, tmp_path)
        text = console.export_text()
        assert ("volume's diagonal in mm, the 'worst' empty policy" in text) == hint
