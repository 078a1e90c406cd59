"""Plugins as docs/plugins.md describes them: installed packages (entry points), ``--plugin module:attr`` and
``--plugin file.py``, autoloading switched off, and every failure as one line naming the plugin and its
distribution while the other methods keep working. Runs go through the installed console script, as a user's do."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import one_line
from runs import REPO, ssbench_cli

TINY = ("--set", "data.train_size=32", "--set", "train.batch_labeled=2", "--set", "train.val_every=2", "--iters", "2",
        "--device", "cpu", "--quiet")

METHOD = textwrap.dedent('''
    """Echo: the supervised UNet under another name, for the plugin tests."""
    from __future__ import annotations

    import math
    from dataclasses import dataclass

    from ssbench.api import UNetConfig
    from ssbench.methods.supervised import Supervised


    @dataclass(frozen=True)
    class EchoConfig(UNetConfig):
        weight: float = 0.5  # a weight that must be in [0, 1]

        def __post_init__(self):
            if not 0 <= self.weight <= 1:
                raise ValueError(f"weight must be in [0, 1], got {self.weight}")


    class Echo(Supervised):
        """Echo: a plugin method."""

        name = "echo"
        display_name = "Echo"
        Config = EchoConfig
''')


def _dist(root: Path, dist: str, version: str, entries: str, modules: dict[str, str]) -> Path:
    """A package on ``root`` with a dist-info that importlib.metadata reads, as pip leaves an installed one."""
    root.mkdir(parents=True, exist_ok=True)
    for name, code in modules.items():
        (root / f"{name}.py").write_text(code)
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(entries)
    return root


def _listing(out: str) -> dict[str, str]:
    return {line.split()[0]: line for line in out.splitlines() if line and not line.startswith("(")}


def test_an_installed_plugin_is_listed_with_its_distribution_without_importing_torch(tmp_path):
    root = _dist(tmp_path / "p", "echo-plugin", "0.4", "[ssbench.methods]\necho = echo_mod:Echo\n",
                 {"echo_mod": METHOD})
    code, out, err = ssbench_cli("methods", extra_path=[root])
    assert code == 0, err
    rows = _listing(out)
    assert "echo-plugin 0.4" in rows["echo"] and "Echo: a plugin method." in rows["echo"]
    assert "ssbench" in rows["unimatch"] and "UniMatch" in rows["unimatch"]
    # --plugin naming the installed class itself is the same registration, not a second claim
    code, out, err = ssbench_cli("methods", "--plugin", "echo_mod:Echo", extra_path=[root])
    assert code == 0 and "echo-plugin 0.4" in _listing(out)["echo"] and "ERROR" not in out, err
    # listing reads names and docstrings from the sources: neither torch nor the plugin is imported
    probe = ("import sys; sys.argv = ['ssbench', 'methods']\nfrom ssbench.cli import main\ntry:\n    main()\n"
             "except SystemExit:\n    pass\nassert 'torch' not in sys.modules and 'echo_mod' not in sys.modules, "
             "sorted(m for m in sys.modules if m.startswith(('torch', 'echo')))[:5]")
    env_path = f"{REPO}:{root}"
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("case,modules,entries,needles", [
    ("import-failure", {"broken_mod": "raise ImportError('needs the package foo')\n"},
     "[ssbench.methods]\nbroken = broken_mod:Broken\n",
     ["method plugin 'broken' (broken_mod:Broken, bad-plugin 1.2)", "failed to load: ImportError: needs the package foo"]),
    ("not-a-method", {"broken_mod": "def Broken():\n    pass\n"}, "[ssbench.methods]\nbroken = broken_mod:Broken\n",
     ["method plugin 'broken' (broken_mod:Broken, bad-plugin 1.2) is not a valid method", "not a subclass of"]),
    ("other-api-version", {"broken_mod": METHOD.replace('name = "echo"', 'name = "broken"\n    api_version = 2')},
     "[ssbench.methods]\nbroken = broken_mod:Echo\n",
     ["method plugin 'broken' (broken_mod:Echo, bad-plugin 1.2)", "declares Method API version 2",
      "provides version 1"]),
    ("name-mismatch", {"broken_mod": METHOD}, "[ssbench.methods]\nbroken = broken_mod:Echo\n",
     ["method plugin 'broken' (broken_mod:Echo, bad-plugin 1.2)", "declares name 'echo', registered as 'broken'"]),
    ("not-a-dataset", {"broken_mod": METHOD}, "[ssbench.datasets]\nbroken = broken_mod:Echo\n",
     ["dataset plugin 'broken' (broken_mod:Echo, bad-plugin 1.2) is not a valid dataset"]),
])
def test_a_bad_plugin_is_one_line_naming_it_and_the_others_keep_working(case, modules, entries, needles, tmp_path,
                                                                         tiny_nnunet, cli, monkeypatch):
    # in-process (the console script's own error path is covered by the subprocess tests around this one)
    root = _dist(tmp_path / "p", "bad-plugin", "1.2", entries, modules)
    monkeypatch.syspath_prepend(str(root))
    for name in modules:
        monkeypatch.delitem(sys.modules, name, raising=False)
    out = tmp_path / "results"
    if "datasets" in entries:
        args = ["--method", "supervised", "--dataset", "broken"]
    else:
        args = ["--method", "broken", "--dataset", "nnunet", "--data-root", str(tiny_nnunet)]
    code, _, err = cli("run", *args, "--split", "2", "--out", out, *TINY)
    one_line(code, err, *needles)
    assert not out.exists()
    # the listing still shows it and every built-in, and a built-in still runs beside it (one case is enough)
    code, listed, err = cli("methods" if "methods" in entries else "datasets")
    assert code == 0 and "broken" in _listing(listed) and "bad-plugin 1.2" in _listing(listed)["broken"], err
    assert ("supervised" if "methods" in entries else "nnunet") in _listing(listed)
    if case == "import-failure":
        code, _, err = cli("run", "--method", "supervised", "--dataset", "nnunet", "--data-root", tiny_nnunet,
                           "--split", "2", "--out", out, *TINY)
        assert code == 0, err
    for name in modules:
        sys.modules.pop(name, None)


@pytest.mark.slow
def test_a_name_claimed_by_two_distributions(tmp_path, tiny_nnunet):
    a = _dist(tmp_path / "a", "echo-a", "1.0", "[ssbench.methods]\necho = echo_a:Echo\n", {"echo_a": METHOD})
    b = _dist(tmp_path / "b", "echo-b", "2.0", "[ssbench.methods]\necho = echo_b:Echo\n", {"echo_b": METHOD})
    code, _, err = ssbench_cli("run", "--method", "echo", "--dataset", "nnunet", "--data-root", tiny_nnunet,
                               "--split", "2", "--out", tmp_path / "r", *TINY, extra_path=[a, b])
    one_line(code, err, "method 'echo' is claimed more than once", "echo_a:Echo from echo-a 1.0",
             "echo_b:Echo from echo-b 2.0")
    code, listed, _ = ssbench_cli("methods", extra_path=[a, b])
    assert code == 0 and "claimed by echo-a 1.0, echo-b 2.0" in _listing(listed)["echo"]
    assert "supervised" in _listing(listed)
    # a plugin claiming a built-in's name leaves the built-in unusable until one is removed: said, not guessed
    c = _dist(tmp_path / "c", "hijack", "0.1", "[ssbench.methods]\nsupervised = hijack:Echo\n", {"hijack": METHOD})
    code, _, err = ssbench_cli("config", "--method", "supervised", extra_path=[c])
    one_line(code, err, "method 'supervised' is claimed more than once", "from ssbench", "from hijack 0.1")


@pytest.mark.slow
def test_plugin_from_a_file_runs_records_its_origin_and_reevaluates(tmp_path, tiny_nnunet):
    plugin = tmp_path / "echo_file.py"
    plugin.write_text(METHOD)
    out = tmp_path / "results"
    code, _, err = ssbench_cli("run", "--plugin", plugin, "--method", "echo", "--dataset", "nnunet", "--data-root",
                               tiny_nnunet, "--split", "2", "--out", out, *TINY)
    assert code == 0, err
    run = out / "nnunet" / "echo" / "2" / "seed1337"
    info = json.loads((run / "run.json").read_text())
    assert info["method_source"]["plugin"] == str(plugin) and info["method_display_name"] == "Echo"
    # re-evaluation needs the plugin again, and says so
    code, _, err = ssbench_cli("eval", run, "--device", "cpu")
    one_line(code, err, "--method echo: unknown method", f"the run was made with --plugin {plugin}: give it again")
    code, _, err = ssbench_cli("eval", run, "--device", "cpu", "--plugin", plugin)
    assert code == 0, err
    # and `ssbench table` puts it beside a built-in without loading it
    code, _, err = ssbench_cli("run", "--method", "supervised", "--dataset", "nnunet", "--data-root", tiny_nnunet,
                               "--split", "2", "--out", out, *TINY)
    assert code == 0, err
    code, _, err = ssbench_cli("table", "--results", out, "--out", tmp_path / "paper")
    assert code == 0, err
    table = (tmp_path / "paper" / "main_nnunet.md").read_text()
    assert "| Echo |" in table and "U-Net (labeled only)" in table


@pytest.mark.slow
def test_plugin_module_attr_and_a_dataset_from_a_file(tmp_path, tiny_nnunet):
    mod = _dist(tmp_path / "m", "unused", "0.0", "", {"echo_attr": METHOD})  # importable, registers nothing itself
    code, out, err = ssbench_cli("methods", "--plugin", "echo_attr:Echo", extra_path=[mod])
    assert code == 0 and "--plugin echo_attr:Echo" in _listing(out)["echo"], err
    dataset = tmp_path / "tiny_ds.py"
    dataset.write_text(textwrap.dedent('''
        """Tiny: the nnU-Net loader under another name."""
        from ssbench.datasets.nnunet import NNUNet


        class Tiny(NNUNet):
            """Tiny: a dataset plugin from a file."""

            name = "tiny"
    '''))
    code, out, err = ssbench_cli("datasets", "--plugin", dataset)
    assert code == 0 and "Tiny: a dataset plugin from a file." in _listing(out)["tiny"], err
    code, _, err = ssbench_cli("run", "--plugin", dataset, "--plugin", "echo_attr:Echo", "--method", "echo",
                               "--dataset", "tiny", "--data-root", tiny_nnunet, "--split", "2", "--out",
                               tmp_path / "r", *TINY, extra_path=[mod])
    assert code == 0, err
    assert (tmp_path / "r" / "tiny" / "echo" / "2" / "seed1337" / "summary.json").is_file()


@pytest.mark.parametrize("spec,needle", [
    ("no_such_module_xyz:Thing", "--plugin no_such_module_xyz:Thing: failed to import: ModuleNotFoundError"),
    ("missing.py", "--plugin missing.py: no such file"),
    ("json", "--plugin json: expected module:attr or a path to a .py file"),
    ("json:dumps", "--plugin json:dumps: defines no ssbench Method or Dataset subclass"),
])
def test_bad_plugin_options_are_one_line(spec, needle, tmp_path, cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = cli("methods", "--plugin", spec)
    one_line(code, err, needle)


@pytest.mark.slow
def test_autoload_off_keeps_builtins_and_plugin_options(tmp_path, monkeypatch):
    root = _dist(tmp_path / "p", "echo-plugin", "0.4", "[ssbench.methods]\necho = echo_mod:Echo\n",
                 {"echo_mod": METHOD})
    monkeypatch.setenv("SSBENCH_DISABLE_PLUGIN_AUTOLOAD", "1")
    code, out, err = ssbench_cli("methods", extra_path=[root])
    rows = _listing(out)
    assert code == 0 and "echo" not in rows and {"supervised", "unimatch", "sss"} <= set(rows), err
    assert "SSBENCH_DISABLE_PLUGIN_AUTOLOAD is set" in out
    code, _, err = ssbench_cli("config", "--method", "echo", extra_path=[root])
    one_line(code, err, "--method echo: unknown method", "SSBENCH_DISABLE_PLUGIN_AUTOLOAD is set")
    plugin = tmp_path / "echo_file.py"
    plugin.write_text(METHOD)
    code, out, err = ssbench_cli("methods", "--plugin", plugin, extra_path=[root])
    assert code == 0 and f"--plugin {plugin}" in _listing(out)["echo"], err


def test_a_plugin_config_refusing_a_value_is_one_line_naming_the_key(tmp_path, tiny_nnunet, cli, own_registry):
    # in-process (the console script's error path is test_cli_usage's)
    plugin = tmp_path / "echo_file.py"
    plugin.write_text(METHOD)
    data = ("--dataset", "nnunet", "--data-root", tiny_nnunet)
    code, _, err = cli("config", "--plugin", plugin, "--method", "echo", *data, "--set", "echo.weight=3")
    one_line(code, err, "--set echo.weight=3: weight must be in [0, 1], got 3")
    code, out, err = cli("config", "--plugin", plugin, "--method", "echo", *data, "--help-fields")
    assert code == 0 and "echo.weight: 0.5" in out and "a weight that must be in [0, 1]" in out, err



@pytest.fixture
def own_registry(monkeypatch):
    """In-process commands: what --plugin registers is dropped after the test (a process runs one command)."""
    from ssbench import registry

    monkeypatch.setattr(registry, "_EXTRA", {group: dict(entries) for group, entries in registry._EXTRA.items()})


WARPED = textwrap.dedent('''
    """Warped: the nnU-Net loader with its cases broken after loading, for the engine's contract check."""
    import dataclasses
    import os

    import numpy as np

    from ssbench.datasets.nnunet import NNUNet


    class Warped(NNUNet):
        """Warped: a dataset plugin whose loader breaks the contract."""

        name = "warped"

        def load_case(self, case_id, with_label=True):
            case = super().load_case(case_id, with_label)
            image, label = case.image.copy(), None if case.label is None else case.label.copy()
            if os.environ["WARP"] == "label" and label is not None:
                label[0, 0, 0] = 9
            if os.environ["WARP"] == "nan":
                image[0, 0, 0] = np.nan
            if os.environ["WARP"] == "shape" and label is not None:
                label = label[:, :-1]
            return dataclasses.replace(case, image=image, label=label)
''')


@pytest.mark.parametrize("warp,needle", [
    ("label", "label values 0..9 outside the dataset's classes 0..2"),
    ("nan", "the image holds 1 non-finite values (NaN or infinity)"),
    ("shape", "(4, 31, 32) does not match image shape (4, 32, 32)"),
])
def test_the_engine_checks_the_cases_a_plugin_loader_returns(warp, needle, tmp_path, tiny_nnunet, cli, monkeypatch,
                                                             own_registry):
    plugin = tmp_path / "warped.py"
    plugin.write_text(WARPED)
    monkeypatch.setenv("WARP", warp)
    out = tmp_path / "results"
    code, _, err = cli("run", "--plugin", plugin, "--method", "supervised", "--dataset", "warped", "--data-root",
                       tiny_nnunet, "--split", "2", "--out", out, *TINY)
    one_line(code, err, needle, str(tiny_nnunet / "imagesTr"))
    assert not out.exists()


TINY_DS = textwrap.dedent('''
    """Tiny: the nnU-Net loader under another name."""
    from ssbench.datasets.nnunet import NNUNet


    class Tiny(NNUNet):
        """Tiny: a dataset plugin from a file."""

        name = "tiny"
''')


def test_split_and_table_take_plugins(tmp_path, tiny_nnunet, tiny_run, cli, own_registry):
    plugin = tmp_path / "tiny_ds.py"
    plugin.write_text(TINY_DS)
    code, out, err = cli("split", "--plugin", plugin, "--dataset", "tiny", "--data-root", tiny_nnunet, "--split", "2",
                         "--json")
    assert code == 0, err
    assert json.loads(out)["labeled"] == json.loads(
        cli("split", "--dataset", "nnunet", "--data-root", tiny_nnunet, "--split", "2", "--json")[1])["labeled"]
    results = tmp_path / "results"
    shutil.copytree(tiny_run, results / "nnunet" / "supervised" / "2" / "seed1337")
    code, printed, err = cli("table", "--plugin", plugin, "--results", results, "--out", tmp_path / "paper")
    assert code == 0 and (tmp_path / "paper" / "main_nnunet.md").is_file(), err
    for command in (["split", "--dataset", "nnunet", "--split", "2"], ["table", "--results", results]):
        code, _, err = cli(*command, "--plugin", tmp_path / "missing.py")
        one_line(code, err, f"--plugin {tmp_path / 'missing.py'}: no such file")


def test_datasets_are_listed_without_importing_them_or_torch(tmp_path):
    root = _dist(tmp_path / "p", "tiny-plugin", "0.2", "[ssbench.datasets]\ntiny = tiny_mod:Tiny\n",
                 {"tiny_mod": TINY_DS})
    probe = ("import sys; sys.argv = ['ssbench', 'datasets']\nfrom ssbench.cli import main\ntry:\n    main()\n"
             "except SystemExit:\n    pass\nassert 'torch' not in sys.modules and 'tiny_mod' not in sys.modules "
             "and 'ssbench.datasets.nnunet' not in sys.modules and 'nibabel' not in sys.modules, "
             "sorted(m for m in sys.modules if m.startswith(('torch', 'tiny', 'ssbench.datasets.', 'nibabel')))")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          env={"PYTHONPATH": f"{REPO}:{root}", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    rows = _listing(proc.stdout)
    assert "tiny-plugin 0.2" in rows["tiny"] and "Tiny: a dataset plugin from a file." in rows["tiny"]
    assert {"acdc", "bhsd", "nnunet"} <= set(rows)
