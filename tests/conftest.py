import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent / "helpers"))  # formats, report_runs, runs, ...: shared by the tests

# The suite runs on pytest-xdist workers (pyproject's addopts: -n auto): each worker owns one core, so torch gets one
# thread in each worker and in every process a test starts (set before anything imports torch). Numbers do not
# depend on it: a run records its thread count, and tests compare runs made under the same one.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"


@pytest.fixture(scope="session", autouse=True)
def _cache(tmp_path_factory):
    """Embedded phantoms go to a cache of this test session (shared by its workers: generation is atomic), never
    to the user's home."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        cache = tmp_path_factory.getbasetemp().parent / "ssbench-cache"
        cache.mkdir(exist_ok=True)
    else:
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


@pytest.fixture(scope="session")
def tiny_nnunet(tmp_path_factory):
    """A 10-case nnU-Net raw dataset of 32 x 32 x 4 volumes: whole runs in seconds (see formats.write_nnunet)."""
    from formats import write_nnunet

    return write_nnunet(tmp_path_factory.mktemp("tiny") / "Dataset001_Tiny")


@pytest.fixture
def data(tmp_path, tiny_nnunet):
    """A private copy of the tiny nnU-Net dataset to corrupt (labeled 3, 7; unlabeled 0, 2, 4, 8, 9; val 5; test 1,
    6): the bad-input and protocol-guard tests."""
    import shutil

    return shutil.copytree(tiny_nnunet, tmp_path / "data")


# A whole run on the tiny dataset: 6 iterations of batch 2 + 2 at 32 x 32, validation and a resumable checkpoint
# every 2 iterations (checkpoints at 2 and 4), the test set of 2 volumes evaluated at the end.
TINY_SETS = ("data.train_size=32", "train.batch_labeled=2", "train.batch_unlabeled=2", "train.val_every=2",
             "train.checkpoint_every=2", "train.eval_batch=4")
TINY_RUN = ("--dataset", "nnunet", "--split", "2", "--iters", "6", "--device", "cpu", "--quiet",
            *[x for s in TINY_SETS for x in ("--set", s)])


def tiny_request(root, out, method="supervised", sets=(), iters=6, **kw):
    from ssbench.engine.plan import RunRequest

    return RunRequest(method=method, dataset="nnunet", data_root=str(root), split="2", iters=iters,
                      sets=TINY_SETS + tuple(sets), out=str(out), device="cpu", quiet=True, **kw)


def tiny_args(root, out, *extra):
    """``ssbench run`` arguments of the same tiny run."""
    return ["--method", "supervised", "--data-root", str(root), "--out", str(out), *TINY_RUN, *map(str, extra)]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_nnunet):
    """A completed, uninterrupted tiny supervised run: the reference for resumed, repeated and re-evaluated runs."""
    from ssbench.engine.run import execute

    return execute(tiny_request(tiny_nnunet, tmp_path_factory.mktemp("tiny-run")))


def one_line(code, err, *needles):
    """A user error as ssbench reports it: exit code 2 and one line on stderr holding every needle, no traceback."""
    assert code == 2, err
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ssbench: error: "), err
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture(scope="session")
def sam2_once():
    """SAM-2 built once per test session: ``sam2_net.build`` answers each set of build arguments from a cache (a
    deep copy of the model it first built), and leaves the torch RNG where the real build would have (builds from
    the same RNG state draw the same weights), so tests stay independent of their order."""
    import copy

    import torch

    from ssbench.methods.sss import sam2_net

    built = {}
    original = sam2_net.build

    def build(*args, **kwargs):
        before = torch.get_rng_state()
        key = (args, tuple(sorted(kwargs.items())), bytes(before.numpy()))
        if key not in built:
            sam = original(*args, **kwargs)
            built[key] = (sam, torch.get_rng_state())
        sam, after = built[key]
        torch.set_rng_state(after)
        return copy.deepcopy(sam)

    patch = pytest.MonkeyPatch()
    patch.setattr(sam2_net, "build", build)
    yield built
    patch.undo()
