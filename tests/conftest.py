import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session", autouse=True)
def _cache(tmp_path_factory):
    """Embedded phantoms go to a per-session cache, never to the user's home."""
    cache = tmp_path_factory.mktemp("ssbench-cache")
    old = os.environ.get("SSBENCH_CACHE")
    os.environ["SSBENCH_CACHE"] = str(cache)
    yield cache
    if old is None:
        os.environ.pop("SSBENCH_CACHE", None)
    else:
        os.environ["SSBENCH_CACHE"] = old


@pytest.fixture(scope="session")
def acdc_phantom(_cache):
    from ssbench.datasets import synthetic

    return synthetic.embedded("acdc")


@pytest.fixture(scope="session")
def bhsd_phantom(_cache):
    from ssbench.datasets import synthetic

    return synthetic.embedded("bhsd")


@pytest.fixture
def cli(capsys):
    """Run the ssbench CLI in-process; return (exit code, stdout, stderr)."""
    from ssbench.cli import main

    def run(*args):
        old = sys.argv
        sys.argv = ["ssbench", *map(str, args)]
        code = 0
        try:
            main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        finally:
            sys.argv = old
        out = capsys.readouterr()
        return code, out.out, out.err

    return run
