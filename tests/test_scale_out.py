"""Scale-out: the device data path equals the host path, DDP shares of a global batch equal the 1-process batch,
the batched strong augmentations equal torchvision's per-sample ones, and a 2-process DDP run (gloo, CPU)
through ``ssbench run --gpus 2`` publishes one normal results folder."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF

from ssbench import augment
from ssbench.engine.data import DevicePool, Sampler, SlicePool
from ssbench.methods import strong


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


DDP_SETS = ["--set", "data.train_size=32", "--set", "train.batch_labeled=2", "--set", "train.batch_unlabeled=2",
            "--set", "train.val_every=2", "--set", "train.checkpoint_every=2"]


@pytest.mark.slow
def test_two_process_ddp_run_on_cpu_publishes_one_results_folder(tmp_path, acdc_phantom):
    exe = Path(sys.executable).parent / "ssbench"
    sets = DDP_SETS
    common = ["run", "--method", "mean-teacher", "--split", "1", "--iters", "4", "--device", "cpu", "--quiet", *sets]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([str(exe), *common, "--gpus", "2", "--out", str(tmp_path / "ddp")], env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "ddp" / "acdc-phantom" / "mean-teacher" / "1" / "seed1337"
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "complete" and info["world_size"] == 2 and info["execution"]["world"] == 2
    assert (run / "metrics_per_case.csv").is_file() and not (run / "checkpoints" / "last.pt").exists()
    assert [p.name for p in run.parent.iterdir()] == ["seed1337"]  # one folder, written once, by rank 0
    proc = subprocess.run([str(exe), *common, "--out", str(tmp_path / "one")], env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    single = json.loads((tmp_path / "one" / run.relative_to(tmp_path / "ddp") / "run.json").read_text())
    assert single["config_hash"] == info["config_hash"]  # the world size is not part of what was trained


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
def test_ddp_run_resumes_from_its_per_rank_state_and_matches_an_uninterrupted_one(tmp_path, acdc_phantom):
    exe = Path(sys.executable).parent / "ssbench"
    sets = DDP_SETS
    common = ["run", "--method", "mean-teacher", "--split", "1", "--iters", "5", "--device", "cpu", "--quiet", *sets]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    stopped = subprocess.run([*torchrun, str(driver), *common, "--out", str(tmp_path / "r")], env=env,
                             capture_output=True, text=True, timeout=900)
    assert stopped.returncode != 0
    staging = tmp_path / "r" / "acdc-phantom" / "mean-teacher" / "1" / ".seed1337.incomplete"
    assert (staging / "checkpoints" / "last.pt").is_file() and not staging.with_name("seed1337").exists()
    one = subprocess.run([str(exe), *common, "--resume", "--out", str(tmp_path / "r")], env=env,
                         capture_output=True, text=True, timeout=900)
    assert one.returncode == 2 and "resume it with as many" in one.stderr
    resumed = subprocess.run([str(exe), *common, "--resume", "--gpus", "2", "--out", str(tmp_path / "r")], env=env,
                             capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    clean = subprocess.run([str(exe), *common, "--gpus", "2", "--out", str(tmp_path / "c")], env=env,
                           capture_output=True, text=True, timeout=900)
    assert clean.returncode == 0, clean.stderr[-3000:]
    a = (tmp_path / "r" / "acdc-phantom" / "mean-teacher" / "1" / "seed1337" / "metrics_per_case.csv").read_text()
    b = (tmp_path / "c" / "acdc-phantom" / "mean-teacher" / "1" / "seed1337" / "metrics_per_case.csv").read_text()
    assert a == b
