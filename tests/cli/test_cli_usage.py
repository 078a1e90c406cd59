"""The installed console script (as the README installs it) turns every usage error and every plain exception in a
plugin into one line on stderr with exit code 2; ``--debug`` shows the traceback."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import ssbench
from conftest import one_line
from runs import SCRIPT, REPO, ssbench_cli


PLUGIN = textwrap.dedent('''
    """Plugin methods for the CLI tests."""
    from __future__ import annotations

    from dataclasses import dataclass

    from ssbench.methods.supervised import Supervised


    @dataclass(frozen=True)
    class BrokenConfig:
        width: int = 16

        def __post_init__(self):
            raise RuntimeError("width is not supported on this platform")


    class Broken(Supervised):
        """Broken: its Config raises a plain exception."""

        name = "broken"
        Config = BrokenConfig
''')


def test_the_console_script_is_installed():
    assert SCRIPT.is_file(), f"{SCRIPT}: install the project as the README says (pip install -e '.[test]')"


@pytest.mark.parametrize("args,needles", [
    (["run"], ["ssbench run", "Missing option '--method'"]),
    (["run", "--method", "supervised", "--no-such-option"], ["No such option: --no-such-option"]),
    (["run", "--method", "supervised", "--iters", "abc"], ["'--iters'", "valid integer"]),
    (["split", "--split-seed", "-1"], ["'--split-seed'", "greater than or equal to 0"]),
    (["eval"], ["Missing argument", "run_dir"]),
    (["no-such-command"], ["No such command 'no-such-command'"]),
], ids=["missing-option", "unknown-option", "wrong-type", "out-of-range", "missing-argument", "unknown-command"])
def test_usage_errors_are_one_line_exit_2(args, needles, tmp_path):
    code, out, err = ssbench_cli(*args, cwd=tmp_path)
    one_line(code, err, *needles)
    assert out == "" and not any(tmp_path.iterdir())


def test_bare_command_prints_help_without_traceback():
    code, out, err = ssbench_cli()
    assert "Traceback" not in out + err and "run" in out + err and "config" in out + err


def _plugin(tmp_path):
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "broken_cfg_plugin.py").write_text(PLUGIN)
    dist = tmp_path / "broken_cfg_plugin-0.3.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-cfg-plugin\nVersion: 0.3\n")
    (dist / "entry_points.txt").write_text("[ssbench.methods]\nbroken = broken_cfg_plugin:Broken\n")
    return tmp_path


@pytest.mark.slow
def test_a_plain_exception_in_a_plugin_names_the_plugin(tmp_path, tiny_nnunet):
    plugin = _plugin(tmp_path / "plugin")
    for command in ("config", "run"):
        code, _, err = ssbench_cli(command, "--method", "broken", "--dataset", "nnunet", "--data-root", tiny_nnunet,
                                   "--split", "2", "--iters", "1", extra_path=[plugin], cwd=tmp_path)
        one_line(code, err, "method plugin 'broken' (broken_cfg_plugin:Broken, broken-cfg-plugin 0.3)",
                 "RuntimeError: width is not supported on this platform", "--debug")
    assert not (tmp_path / "results").exists()
    code, _, err = ssbench_cli("--debug", "config", "--method", "broken", "--dataset", "nnunet", "--data-root",
                               tiny_nnunet, "--split", "2", extra_path=[plugin])
    assert code == 1 and "Traceback" in err and "__post_init__" in err
    # the other methods keep working beside the broken plugin
    code, out, err = ssbench_cli("methods", extra_path=[plugin])
    assert code == 0 and "broken" in out and "supervised" in out, err
