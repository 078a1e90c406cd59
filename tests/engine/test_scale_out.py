"""Scale-out: the device data path equals the host path, DDP shares of a global batch equal the 1-process batch,
the batched strong augmentations equal torchvision's per-sample ones, and a 2-process DDP run (gloo, CPU)
through ``ssbench run --gpus 2`` publishes one normal results folder."""

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
import torchvision.transforms.v2.functional as TF

from ssbench import augment
from ssbench.engine.data import DevicePool, Sampler, SlicePool
from ssbench.methods.blocks import strong


def _pool(n=12, seed=0):
    rng = np.random.default_rng(seed)
    shapes = [(int(rng.integers(20, 60)), int(rng.integers(20, 60))) for _ in range(n)]
    images = [rng.random(s).astype(np.float32) for s in shapes]
    labels = [rng.integers(0, 4, s).astype(np.uint8) for s in shapes]
    return SlicePool(images, labels, [(f"c{i}", 0) for i in range(n)], {})


@pytest.mark.parametrize("resize", ["order0", "bilinear"])
def test_device_path_builds_the_same_batches_as_the_host_path(resize):
    pool = _pool()
    host = Sampler(pool, 5, seed=3, size=32, resize=resize)
    dev = Sampler(pool, 5, seed=3, size=32, resize=resize, device_pool=DevicePool(pool, "cpu"))
    for _ in range(6):
        a, b = host.next("cpu"), dev.next("cpu")
        assert a.case_ids == b.case_ids
        assert torch.equal(a.label, b.label)
        if resize == "order0":
            assert torch.equal(a.image, b.image)  # scipy's rotation and zoom reproduced pixel for pixel
        else:
            torch.testing.assert_close(a.image, b.image)


def test_weak_augmentation_on_tensors_equals_scipy_for_every_angle():
    rng = np.random.default_rng(1)
    img = rng.random((37, 53)).astype(np.float32) + 1
    for angle in range(-20, 20):
        p = augment.WeakParams("rotate", angle=angle)
        expected, _ = augment.apply_weak(img, None, p)
        got, _ = augment.apply_weak_torch(torch.from_numpy(img), None, p)
        np.testing.assert_array_equal(got.numpy(), expected)


def test_ddp_shares_of_a_global_batch_are_the_one_process_batch():
    pool = _pool(20)
    single = Sampler(pool, 6, seed=0, size=24)
    ranks = [Sampler(pool, 6, seed=0, size=24, rank=r, world=3) for r in range(3)]
    for _ in range(5):
        whole = single.next("cpu")
        parts = [s.next("cpu") for s in ranks]
        assert sum((p.case_ids for p in parts), []) == whole.case_ids
        assert torch.equal(torch.cat([p.image for p in parts]), whole.image)
    assert all(s.state_dict()["pos"] == single.state_dict()["pos"] for s in ranks)


def _reference_strong(x, jitter, sigmas):
    """The per-sample loop with torchvision's own functions on the same random draws (what the batched versions
    must equal)."""
    out = x.clone()
    for i in range(x.shape[0]):
        if not jitter.applied[i]:
            continue
        img = out[i]
        ops = [("b", float(jitter.brightness[i])), ("c", float(jitter.contrast[i]))]
        if jitter.contrast_first[i]:
            ops.reverse()
        for kind, f in ops:
            img = TF.adjust_brightness(img, f) if kind == "b" else TF.adjust_contrast(img, f)
        out[i] = img.clamp(0, 1)
    for i in range(x.shape[0]):
        s = float(sigmas[i])
        if s > 0:
            k = 2 * math.ceil(3 * s) + 1
            out[i] = TF.gaussian_blur(out[i], [k, k], [s, s])
    return out


def test_batched_strong_views_equal_torchvisions_per_sample_ops():
    x = torch.rand(24, 1, 48, 40)
    for seed in range(3):
        g = torch.Generator().manual_seed(seed)
        jitter, sigmas = strong.draw_jitter(24, "cpu", g), strong.draw_blur(24, "cpu", g)
        assert 0 < int(jitter.applied.sum()) < 24 and 0 < int((sigmas > 0).sum()) < 24
        expected = _reference_strong(x, jitter, sigmas)
        got = strong.apply_blur(strong.apply_jitter(x, jitter), sigmas)
        torch.testing.assert_close(got, expected, atol=2e-6, rtol=0)
        g = torch.Generator().manual_seed(seed)
        assert torch.equal(strong.strong_view(x, g), got)  # strong_view is the two draws, then the two ops


def test_cutmix_boxes_are_the_first_fitting_candidate_of_the_rejection_draw():
    """Each box is the first (ratio, position) candidate that fits, with UniMatch's area and ratio: drawn as a
    per-sample loop over the same random numbers would."""
    n, size = 40, 64
    a = strong.cutmix_boxes(n, size, torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    u = torch.rand(n, 2, generator=g)
    cand = torch.rand(n, strong.BOX_CANDIDATES, 3, generator=g)
    for i in range(n):
        if not u[i, 0] < 0.5:
            assert not a[i].any()
            continue
        target = float(0.02 + 0.38 * u[i, 1]) * size * size
        for r_u, x_u, y_u in cand[i].tolist():
            r = 0.3 + (1 / 0.3 - 0.3) * r_u
            w, h = int(math.sqrt(target / r)), int(math.sqrt(target * r))
            x0, y0 = min(int(x_u * size), size - 1), min(int(y_u * size), size - 1)
            if x0 + w <= size and y0 + h <= size:
                break
        expected = torch.zeros(size, size, dtype=torch.bool)
        expected[y0:y0 + h, x0:x0 + w] = True
        assert torch.equal(a[i], expected), i
    assert 10 < int(a.flatten(1).any(1).sum()) < 30


DRIVER = """
import sys
from ssbench.methods.mean_teacher import MeanTeacher
original = MeanTeacher.training_step
def stopped(self, labeled, unlabeled, step):
    if step.iteration == 3:  # after the iteration-2 checkpoint: every rank is stopped (a preempted job)
        raise SystemExit(3)
    return original(self, labeled, unlabeled, step)
MeanTeacher.training_step = stopped
from ssbench.cli import main
sys.argv = ["ssbench", *sys.argv[1:]]
main()
"""


@pytest.mark.slow
def test_a_ddp_run_is_its_own_run_and_resumes_from_its_per_rank_state(tmp_path, tiny_nnunet):
    """Two processes (gloo, CPU) through ``ssbench run --gpus 2``: one results folder written by rank 0, named and
    hashed apart from the one-process run; stopped after a checkpoint, it resumes from every rank's state to the
    metrics of an uninterrupted 2-process run."""
    from conftest import TINY_SETS, tiny_request
    from ssbench.engine.plan import build_config, resolve_where_it_runs, run_dir_for

    exe = Path(sys.executable).parent / "ssbench"
    common = ["run", "--method", "mean-teacher", "--dataset", "nnunet", "--data-root", str(tiny_nnunet), "--split",
              "2", "--iters", "6", "--device", "cpu", "--quiet", *[x for t in TINY_SETS for x in ("--set", t)]]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    stopped = subprocess.run([*torchrun, str(driver), *common, "--out", str(tmp_path / "r")], env=env,
                             capture_output=True, text=True, timeout=900)
    assert stopped.returncode != 0
    folder = Path("nnunet") / "mean-teacher" / "2" / "seed1337-ddp2"
    staging = tmp_path / "r" / folder.with_name(".seed1337-ddp2.incomplete")
    assert (staging / "checkpoints" / "last.pt").is_file() and not (tmp_path / "r" / folder).exists()
    resumed = subprocess.run([str(exe), *common, "--resume", "--gpus", "2", "--out", str(tmp_path / "r")], env=env,
                             capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    clean = subprocess.run([str(exe), *common, "--gpus", "2", "--out", str(tmp_path / "c")], env=env,
                           capture_output=True, text=True, timeout=900)
    assert clean.returncode == 0, clean.stderr[-3000:]
    a, b = ((tmp_path / d / folder / "metrics_per_case.csv").read_text() for d in ("r", "c"))
    assert a == b

    run = tmp_path / "c" / folder
    # Only rank 0 tracks: one event file, each step once, resumed or not (another rank would add its own file).
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 1
    for d in ("r", "c"):
        seen = [(e.step, v.tag) for p in (tmp_path / d / folder / "tensorboard").glob("events.out.tfevents.*")
                for e in EventFileLoader(str(p)).Load() for v in e.summary.value]
        assert seen and len(seen) == len(set(seen)), d
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "complete" and info["world_size"] == 2 and info["execution"]["world"] == 2
    assert not (run / "checkpoints" / "last.pt").exists()
    assert [p.name for p in run.parent.iterdir()] == ["seed1337-ddp2"]  # one folder, written once, by rank 0
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["train"]["world_size"] == 2 and config["train"]["sync_bn"] == "off"  # gloo: no SyncBatchNorm
    one, _, dataset = build_config(tiny_request(tiny_nnunet, tmp_path / "c", method="mean-teacher"))
    one = resolve_where_it_runs(one, dataset, torch.device("cpu"))
    assert one.train.world_size == 1 and one.hash() != info["config_hash"]  # never pooled with a 1-process run
    assert run_dir_for(one, str(tmp_path / "c")).name == "seed1337"
    two = dataclasses.replace(one, train=dataclasses.replace(one.train, world_size=2))
    assert two.hash() == info["config_hash"]  # ... and the process count is all that differs
