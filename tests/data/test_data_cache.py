"""The prepared-data cache (ssbench.datasets.cache): a run through it gives the numbers of the in-memory path to
the last digit; its arrays stay on disk until used; a preparation is atomic and fingerprinted; a damaged, changed
or unwritable cache stops with one line and exit code 2."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import TINY_SETS, one_line, tiny_args
from ssbench.datasets import cache
from ssbench.engine.plan import RunRequest
from ssbench.engine.run import execute

PHANTOM_SETS = TINY_SETS + ("train.val_every=3", "train.checkpoint_every=3")


def _phantom_request(dataset, out, method, data_cache, **kw):
    return RunRequest(method=method, dataset=dataset, split="2", iters=6, sets=PHANTOM_SETS, out=str(out),
                      device="cpu", quiet=True, data_cache=data_cache, **kw)


def _frames(run):
    return (pd.read_csv(run / "train_log.csv").drop(columns="elapsed_s"), pd.read_csv(run / "metrics_per_case.csv"))


def _same_numbers(memory, *runs):
    for run in runs:
        for a, b in zip(_frames(memory), _frames(run)):
            pd.testing.assert_frame_equal(a, b, check_exact=True)


@pytest.mark.slow
def test_a_phantom_run_through_the_cache_gives_the_in_memory_numbers(tmp_path):
    memory = execute(_phantom_request("bhsd", tmp_path / "memory", "unimatch", "off"))
    cached = execute(_phantom_request("bhsd", tmp_path / "cached", "unimatch", str(tmp_path / "cache")))
    _same_numbers(memory, cached)


@pytest.mark.slow
def test_a_run_through_the_cache_gives_the_in_memory_numbers(tiny_nnunet, tmp_path):
    from conftest import tiny_request

    sets = ("mean-teacher.consistency_start=0",)
    memory = execute(tiny_request(tiny_nnunet, tmp_path / "memory", "mean-teacher", sets, data_cache="off"))
    cached = execute(tiny_request(tiny_nnunet, tmp_path / "cached", "mean-teacher", sets,
                                  data_cache=str(tmp_path / "cache")))
    again = execute(tiny_request(tiny_nnunet, tmp_path / "again", "mean-teacher", sets,
                                 data_cache=str(tmp_path / "cache")))  # reused, not prepared again
    _same_numbers(memory, cached, again)
    info = [json.loads((r / "run.json").read_text())["data_cache"] for r in (memory, cached, again)]
    assert info[0] == {"path": None}
    assert info[1]["cases_prepared_now"] > 0 and info[2]["cases_prepared_now"] == 0
    assert info[1]["path"] == info[2]["path"] and info[1]["path"].startswith(str(tmp_path / "cache"))
    assert (memory / "config.yaml").read_text() == (cached / "config.yaml").read_text()  # never in the config


def test_cached_cases_are_the_loaders_arrays_mapped_from_disk(tiny_nnunet, tmp_path):
    from ssbench.datasets.nnunet import NNUNet

    ds = NNUNet(tiny_nnunet)
    prepared = cache.PreparedData(ds, tmp_path)
    report = prepared.prepare(cache.all_needs(ds))
    assert report.prepared == len(cache.all_needs(ds)) and report.bytes == prepared.disk_bytes() > 0
    for cid, with_label in cache.all_needs(ds):
        a, b = ds.load_case(cid, with_label), prepared.load_case(cid, with_label)
        assert b.image.dtype == a.image.dtype and np.array_equal(a.image, b.image)
        assert isinstance(b.image.base, np.memmap) or isinstance(getattr(b.image.base, "base", None), np.memmap)
        if with_label:
            assert b.label.dtype == a.label.dtype and np.array_equal(a.label, b.label)
        assert (b.patient_id, b.spacing) == (a.patient_id, a.spacing)
    assert prepared.prepare(cache.all_needs(ds)).reused == report.prepared  # nothing decoded twice


def test_another_fingerprint_is_prepared_again_and_said(tiny_nnunet, tmp_path, cli):
    code, out, err = cli("data", "prepare", "--dataset", "nnunet", "--data-root", str(tiny_nnunet),
                         "--data-cache", str(tmp_path))
    assert code == 0, err
    assert "prepared" in out and "on disk" in out
    code, out, err = cli("data", "prepare", "--dataset", "nnunet", "--data-root", str(tiny_nnunet),
                         "--data-cache", str(tmp_path), "--set", "nnunet.intensity=minmax-volume")
    assert code == 0, err
    assert "another loader version, code or options" in " ".join(out.split())
    assert len(list(tmp_path.glob("nnunet-*/FINGERPRINT.json"))) == 2


def _prepared(tiny_nnunet, tmp_path):
    from ssbench.datasets.nnunet import NNUNet

    prepared = cache.PreparedData(NNUNet(tiny_nnunet), tmp_path / "cache")
    prepared.prepare(cache.all_needs(prepared.dataset))
    return prepared


def test_a_damaged_cache_file_stops_the_run(tiny_nnunet, tmp_path, cli):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(tiny_nnunet, root)
    prepared = _prepared(root, tmp_path)
    for image in (prepared.dir / "cases").glob("*/image.npy"):
        image.write_bytes(image.read_bytes()[:-10])  # truncated
    code, _, err = cli("run", *tiny_args(root, tmp_path / "out", "--data-cache", tmp_path / "cache"))
    one_line(code, err, str(prepared.dir / "cases"), "image.npy: damaged prepared file", "delete")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("summary.json"))


def test_a_source_changed_after_preparation_stops_the_run_until_prepared_again(tiny_nnunet, tmp_path, cli):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(tiny_nnunet, root)
    prepared = _prepared(root, tmp_path)
    sources = sorted((root / "imagesTr").iterdir())
    for source in sources:
        os.utime(source, ns=(1, 1))
    code, _, err = cli("run", *tiny_args(root, tmp_path / "out", "--data-cache", tmp_path / "cache"))
    one_line(code, err, str(root / "imagesTr"), "changed since it was prepared", "ssbench data prepare")
    code, out, err = cli("data", "prepare", "--dataset", "nnunet", "--data-root", str(root),
                         "--data-cache", str(tmp_path / "cache"))
    assert code == 0 and f"{len(sources)} of them again" in " ".join(out.split()), out + err
    assert prepared.prepare(cache.all_needs(prepared.dataset)).prepared == 0


def test_an_unwritable_cache_folder_is_one_line(tiny_nnunet, tmp_path, cli):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")  # root ignores permissions: a file where the folder should be fails for everyone
    code, _, err = cli("run", *tiny_args(tiny_nnunet, tmp_path / "out", "--data-cache", blocker / "cache"))
    one_line(code, err, "cannot write the prepared-data cache", "--data-cache")


def test_a_full_disk_while_preparing_leaves_no_case_that_looks_complete(tiny_nnunet, tmp_path):
    """A real write failure: the file-size limit (RLIMIT_FSIZE) makes the writes of the volumes fail (EFBIG)."""
    script = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (3000, 3000))\n"
        "from ssbench.cli import main\n"
        f"sys.argv = ['ssbench', 'data', 'prepare', '--dataset', 'nnunet', '--data-root', {str(tiny_nnunet)!r},"
        f" '--data-cache', {str(tmp_path / 'cache')!r}]\n"
        "main()\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(Path(cache.__file__).parents[2])})
    one_line(proc.returncode, proc.stderr, "cannot write the prepared-data cache", "free space")
    leftovers = [p for p in (tmp_path / "cache").rglob("*") if p.name.endswith(".incomplete")]
    assert not leftovers and not list((tmp_path / "cache").rglob("case.json"))


def test_a_device_budget_keeps_only_its_share_resident_and_changes_no_pixel():
    import torch

    from ssbench.engine.data import DevicePool, Sampler, SlicePool

    rng = np.random.default_rng(0)
    shapes = [(int(rng.integers(20, 40)), int(rng.integers(20, 40))) for _ in range(12)]
    images = [rng.random(s).astype(np.float32) for s in shapes]
    labels = [rng.integers(0, 4, s).astype(np.uint8) for s in shapes]
    pool = SlicePool(images, labels, [(f"c{i}", 0) for i in range(12)], {})
    budget = sum(i.nbytes + l.nbytes for i, l in zip(images[:3], labels[:3])) + 10
    device_pool = DevicePool(pool, "cpu", budget)
    assert len(device_pool.images) == 3 and device_pool.resident_bytes <= budget
    host = Sampler(pool, 5, seed=3, size=32)
    dev = Sampler(pool, 5, seed=3, size=32, device_pool=device_pool)
    for _ in range(6):
        a, b = host.next("cpu"), dev.next("cpu")
        assert a.case_ids == b.case_ids and torch.equal(a.image, b.image) and torch.equal(a.label, b.label)
    assert len(device_pool.images) == 3  # the streamed slices were not kept


def test_the_device_budget_is_recorded_but_not_hashed(tiny_nnunet):
    from conftest import tiny_request
    from ssbench.engine.plan import build_config

    cfg = build_config(tiny_request(tiny_nnunet, "out"))[0]
    other = cfg.override("data.device_budget_gb", "0.5")
    assert other.data.device_budget_gb == 0.5 and other.to_dict()["data"]["device_budget_gb"] == 0.5
    assert other.hash() == cfg.hash()
    assert cfg.override("data.train_size", "48").hash() != cfg.hash()  # the hash does see data fields


def _memmap_pool(tmp_path, n=6, depth=4):
    """A pool over volumes mapped from .npy files, as a run through the cache builds it."""
    from ssbench.datasets.base import Case
    from ssbench.engine.data import SlicePool

    rng = np.random.default_rng(1)
    cases = []
    for k in range(n):
        shape = (depth, int(rng.integers(24, 40)), int(rng.integers(24, 40)))
        np.save(tmp_path / f"i{k}.npy", rng.random(shape).astype(np.float32))
        np.save(tmp_path / f"l{k}.npy", rng.integers(0, 3, shape).astype(np.uint8))
        cases.append(Case(f"c{k}", f"c{k}", cache._open(tmp_path / f"i{k}.npy"), cache._open(tmp_path / f"l{k}.npy"),
                          None))
    return SlicePool.from_cases(cases, True)


def _batches(sampler, n):
    out = [sampler.next("cpu") for _ in range(n)]
    return [(b.case_ids, b.slice_indices, b.image, b.label) for b in out]


def _same(a, b):
    import torch

    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x[0] == y[0] and x[1] == y[1] and torch.equal(x[2], y[2]) and torch.equal(x[3], y[3])


@pytest.mark.slow  # worker processes start in seconds on 2 loaded cores
def test_data_workers_change_no_batch_and_resume_draws_what_an_uninterrupted_run_draws(tmp_path):
    import torch

    from ssbench.engine.data import Sampler

    pool = _memmap_pool(tmp_path)
    make = lambda workers: Sampler(pool, 5, seed=4, size=32, drop_last=True, workers=workers)  # noqa: E731
    reference = _batches(make(0), 12)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    two = make(2)
    _same(_batches(two, 5), reference[:5])
    assert len(two._pending) > 0  # the workers have drawn ahead ...
    state = two.state_dict()  # ... and the state saved is that after the 5th batch, the last one used
    _same(_batches(two, 7), reference[5:])  # the batches do not depend on the number of workers
    assert torch.equal(torch.get_rng_state(), before)  # the workers' seeds did not come from the model's RNG
    two.close()
    resumed = make(1)
    resumed.load_state_dict(state)
    _same(_batches(resumed, 7), reference[5:])
    resumed.close()


class _Counting(list):
    """A pool's slice list that records which slices were read."""

    def __init__(self, items):
        super().__init__(items)
        self.read = set()

    def __getitem__(self, i):
        self.read.add(i)
        return super().__getitem__(i)


def test_under_ddp_each_rank_reads_only_its_share_of_the_mapped_slices(tmp_path):
    from ssbench.engine.data import Sampler, SlicePool

    mapped = _memmap_pool(tmp_path)
    drawn_by_rank = []
    for rank in range(2):
        pool = SlicePool(_Counting(mapped.images), _Counting(mapped.labels), mapped.origin, mapped.cases)
        sampler = Sampler(pool, 6, seed=2, size=24, rank=rank, world=2)
        mine = set()
        for _ in range(3):
            batch = sampler.next("cpu")
            mine |= {mapped.origin.index((c, z)) for c, z in zip(batch.case_ids, batch.slice_indices)}
        assert pool.images.read == mine and pool.labels.read == mine  # nothing of the other rank's share
        drawn_by_rank.append(mine)
    assert drawn_by_rank[0] and drawn_by_rank[1] and drawn_by_rank[0] != drawn_by_rank[1]


def test_two_processes_preparing_the_same_case_both_succeed_with_one_copy(tiny_nnunet, tmp_path, monkeypatch):
    """Jobs of a sweep may prepare the same case at once: the one that renames second keeps the first one's."""
    from ssbench.datasets.nnunet import NNUNet

    a, b = (cache.PreparedData(NNUNet(tiny_nnunet), tmp_path) for _ in range(2))
    cid = cache.all_needs(a.dataset)[0][0]
    rename = os.replace
    raced = []

    def replace(src, dst):
        if not raced and str(src).endswith(".incomplete") and Path(dst).name == cache._folder_name(cid):
            raced.append(True)
            b.prepare([(cid, True)])  # b renames its copy into place between a's check and a's rename
        return rename(src, dst)

    monkeypatch.setattr(cache.os, "replace", replace)
    report = a.prepare([(cid, True)])
    assert raced and report.prepared == 1 and report.bytes > 0
    assert len(list(tmp_path.rglob("case.json"))) == 1 and not list(tmp_path.rglob("*.incomplete"))
    assert np.array_equal(a.load_case(cid).image, a.dataset.load_case(cid).image)


def test_preparing_with_several_jobs_stores_the_same_arrays_and_fails_with_one_line(tiny_nnunet, tmp_path, cli):
    import shutil

    code, out, err = cli("data", "prepare", "--dataset", "nnunet", "--data-root", str(tiny_nnunet),
                         "--data-cache", str(tmp_path / "two"), "--jobs", "2")
    assert code == 0, err
    from ssbench.datasets.nnunet import NNUNet

    ds = NNUNet(tiny_nnunet)
    prepared = cache.PreparedData(ds, tmp_path / "two")
    for cid, with_label in cache.all_needs(ds):
        a, b = ds.load_case(cid, with_label), prepared.load_case(cid, with_label)
        assert np.array_equal(a.image, b.image) and (not with_label or np.array_equal(a.label, b.label))
    root = tmp_path / "data"
    shutil.copytree(tiny_nnunet, root)
    broken = sorted((root / "imagesTr").iterdir())[3]
    broken.write_bytes(b"not a nifti file")
    code, _, err = cli("data", "prepare", "--dataset", "nnunet", "--data-root", str(root),
                       "--data-cache", str(tmp_path / "broken"), "--jobs", "2")
    one_line(code, err, str(broken))
    assert not list((tmp_path / "broken").rglob("*.incomplete"))
