"""A third-party method installed as a package is found through the same entry points as the built-ins."""

import sys
import textwrap

import pytest

from ssbench import registry
from ssbench.errors import UserError

PLUGIN = textwrap.dedent('''
    """A third-party method: the supervised UNet under another name."""
    from dataclasses import dataclass

    from ssbench.api import UNetConfig
    from ssbench.methods.supervised import Supervised


    @dataclass(frozen=True)
    class EchoConfig(UNetConfig):
        width: int = 16


    class Echo(Supervised):
        """Echo: a plugin method for the tests."""

        name = "echo"
        Config = EchoConfig
''')


def _install(tmp_path, entries: str, module: str = "echo_plugin", code: str = PLUGIN):
    """Make a package importable with a dist-info that importlib.metadata finds, as pip would leave it."""
    (tmp_path / f"{module}.py").write_text(code)
    dist = tmp_path / f"{module}-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(entries)
    sys.path.insert(0, str(tmp_path))


@pytest.fixture
def cleanup():
    before = list(sys.path)
    yield
    sys.path[:] = before
    for mod in ("echo_plugin", "broken_plugin"):
        sys.modules.pop(mod, None)


def test_builtins_come_from_entry_points():
    assert {"supervised", "mean-teacher", "unimatch", "fixmatch", "sss"} <= set(registry.names(registry.METHODS_GROUP))
    assert {"acdc", "bhsd", "nnunet"} <= set(registry.names(registry.DATASETS_GROUP))


def test_a_plugin_method_is_listed_and_runs_like_a_builtin(tmp_path, cleanup, cli, tiny_nnunet):
    import json

    from conftest import tiny_args

    _install(tmp_path, "[ssbench.methods]\necho = echo_plugin:Echo\n")
    code, out, _ = cli("methods")
    assert code == 0 and "echo" in out and "plugin method" in out
    assert registry.method("echo").Config().width == 16
    args = tiny_args(tiny_nnunet, tmp_path / "results", "--iters", "2")
    code, _, err = cli("run", *["echo" if a == "supervised" else a for a in args])
    assert code == 0, err
    run = tmp_path / "results" / "nnunet" / "echo" / "2" / "seed1337"
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "complete" and info["method"] == "echo"
    assert info["method_source"]["distribution"] == "echo_plugin" and info["method_source"]["version"] == "0.1"
    assert (run / "metrics_per_case.csv").is_file()


def test_duplicate_and_broken_plugins_are_clear_errors(tmp_path, cleanup):
    _install(tmp_path, "[ssbench.methods]\nsupervised = echo_plugin:Echo\n")
    with pytest.raises(UserError, match="'supervised' is claimed more than once"):
        registry.method("supervised")
    sys.path.pop(0)
    other = tmp_path / "b"
    other.mkdir()
    _install(other, "[ssbench.methods]\nbroken = broken_plugin:Nope\n", module="broken_plugin",
             code="raise ImportError('missing dependency foo')\n")
    with pytest.raises(UserError, match="plugin 'broken' .*failed to load: ImportError: missing dependency foo"):
        registry.method("broken")
