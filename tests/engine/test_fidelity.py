"""The literature's recipes as the official codes run them (UniMatch medical branch, SSL4MIS), pinned without the
official code: the UNet's structure, the supervised batch, UniMatch's epoch schedule and evaluation resize, the
legacy protocol's reported score, the LR step order, the weak augmentation's order and angles.
(benchmarks/peer_check.py compares against the official code itself.)"""

import json

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from ssbench import augment
from ssbench.engine.data import Sampler, SlicePool
from ssbench.engine.plan import RunRequest, build_config, plan
from ssbench.engine.run import execute
from ssbench.engine.train import step_lr
from ssbench.errors import ConfigError
from ssbench.methods.blocks.unet import UNet
from ssbench.resize import scores_to_labels

@pytest.fixture(scope="module")
def small_acdc(tmp_path_factory):
    from formats import write_acdc_raw

    return write_acdc_raw(tmp_path_factory.mktemp("acdc"), ["patient001"])


@pytest.fixture
def acdc_folder(small_acdc, monkeypatch):
    """For config-only tests: an ACDC folder in the raw archive format (one patient, written in well under a
    second), standing in for the embedded phantom too (only its being the embedded default decides the recipe)."""
    from ssbench.datasets import synthetic

    monkeypatch.setattr(synthetic, "embedded", lambda name: small_acdc)
    return small_acdc


def _official_parameter_shapes(cin=1, k=4, ch=(16, 32, 64, 128, 256)):
    """Parameter shapes in the order of the official module (Encoder in_conv, down1..4; Decoder up1..4 each
    Conv1x1 then ConvBlock; out_conv), written from its structure."""
    def block(a, b):
        return [(b, a, 3, 3), (b,), (b,), (b,), (b, b, 3, 3), (b,), (b,), (b,)]

    shapes, prev = [], cin
    for c in ch:
        shapes += block(prev, c)
        prev = c
    for i in reversed(range(4)):
        shapes += [(ch[i], ch[i + 1], 1, 1), (ch[i],)] + block(2 * ch[i], ch[i])
    return shapes + [(k, ch[0], 3, 3), (k,)]


def test_unet_is_the_official_bilinear_network():
    net = UNet(1, 4)
    assert sum(p.numel() for p in net.parameters()) == 1_813_764
    assert [tuple(p.shape) for p in net.parameters()] == _official_parameter_shapes()
    up = net.up[0]
    x = torch.randn(1, 256, 8, 8)
    expected = F.interpolate(up.reduce(x), scale_factor=2, mode="bilinear", align_corners=True)
    assert torch.equal(up.up(up.reduce(x)), expected)  # Conv1x1 first, then bilinear x2 with aligned corners


def test_transposed_up_sampling_is_only_a_named_recorded_option(acdc_folder):
    assert sum(p.numel() for p in UNet(1, 4, upsampling="transpose").parameters()) == 1_944_324
    cfg, _, _ = build_config(RunRequest(method="supervised", sets=("supervised.upsampling=transpose",)))
    assert cfg.method_config.upsampling == "transpose" and cfg.variant == "upsampling=transpose"
    assert build_config(RunRequest(method="unimatch"))[0].method_config.upsampling == "bilinear"


def test_supervised_batch_is_24_published_and_scaled_on_cpu(acdc_folder):
    published, _, _ = build_config(RunRequest(method="supervised", data_root=str(acdc_folder)))
    assert published.train.recipe == "published" and published.train.batch_labeled == 24
    assert published.train.iters == 30000 and published.train.val_every == 200  # SSL4MIS's fully supervised script
    small, _, _ = build_config(RunRequest(method="supervised"))
    assert small.train.recipe == "cpu-small" and small.train.batch_labeled == 8  # 2 x the SSL methods' 4 labeled
    mt, _, _ = build_config(RunRequest(method="mean-teacher", data_root=str(acdc_folder)))
    assert (mt.train.batch_labeled, mt.train.batch_unlabeled, mt.train.schedule) == (12, 12, "iterations")


def _pool(n_slices):
    return SlicePool([np.zeros((4, 4), np.float32)] * n_slices, None, [("c", i) for i in range(n_slices)], {})


@pytest.mark.parametrize("n_unlabeled, iters", [(1280, 31_800), (1244, 30_900), (1176, 29_400)])
def test_unimatch_published_length_is_300_passes_over_the_unlabeled_slices(acdc_folder, n_unlabeled, iters):
    """ACDC with 1 / 3 / 7 labeled patients has 1,280 / 1,244 / 1,176 unlabeled slices (UniMatch's lists):
    len(trainloader_u) = slices // 12 with drop_last, times 300 epochs."""
    planned = plan(RunRequest(method="unimatch", data_root=str(acdc_folder)))
    cfg = planned.cfg
    assert (cfg.train.schedule, cfg.train.epochs, cfg.train.val_every) == ("epochs", 300, "epoch")
    pools = {"labeled": _pool(136), "unlabeled": _pool(n_unlabeled)}
    scheduled = planned.with_schedule(pools)
    resolved, info = scheduled.cfg, scheduled.schedule
    assert resolved.train.iters == iters and info["iters_per_epoch"] == iters // 300
    assert info["epoch_pool"] == "unlabeled"


def test_drop_last_sampler_sees_each_slice_once_per_epoch():
    pool = SlicePool([np.full((6, 6), i, np.float32) for i in range(10)], None, [("c", i) for i in range(10)], {})
    s = Sampler(pool, 3, seed=0, size=6, augment_weak=False, drop_last=True)
    assert s.batches_per_epoch() == 3
    for _ in range(4):  # four epochs: 3 batches of distinct slices each, the 10th slice of each epoch dropped
        seen = [int(v) for _ in range(3) for v in s.next("cpu").image[:, 0, 0, 0]]
        assert len(set(seen)) == 9


def test_setting_iters_under_an_epoch_schedule_is_refused_but_iters_option_switches(acdc_folder):
    with pytest.raises(ConfigError, match="train.iters.*epochs"):
        build_config(RunRequest(method="unimatch", data_root=str(acdc_folder), sets=("train.iters=100",)))
    cfg, _, _ = build_config(RunRequest(method="unimatch", data_root=str(acdc_folder), iters=100))
    assert (cfg.train.schedule, cfg.train.iters) == ("iterations", 100)


@pytest.mark.slow
def test_epoch_schedule_validates_once_per_pass(tmp_path, tiny_nnunet):
    from conftest import tiny_request

    sets = ("train.schedule=epochs", "train.epochs=2", "train.val_every=epoch", "train.batch_unlabeled=8")
    run = execute(tiny_request(tiny_nnunet, tmp_path, method="fixmatch", sets=sets, iters=None))  # one length
    info = json.loads((run / "run.json").read_text())["schedule"]
    per_epoch = info["epoch_pool_slices"] // 8
    assert info["iters_per_epoch"] == per_epoch and per_epoch >= 2
    log = pd.read_csv(run / "train_log.csv")
    assert len(log) == 2 * per_epoch
    assert log.dropna(subset=["val_dice"])["iteration"].tolist() == [per_epoch, 2 * per_epoch]


def test_unlabeled_batch_of_zero_is_refused_for_methods_that_need_one(acdc_folder):
    for method in ("mean-teacher", "unimatch", "fixmatch", "sss"):
        with pytest.raises(ConfigError, match=f"batch_unlabeled=0: method {method}"):
            build_config(RunRequest(method=method, sets=("train.batch_unlabeled=0",)))
    build_config(RunRequest(method="supervised", sets=("train.batch_unlabeled=0",)))


def test_lr_follows_the_official_step_order():
    """Both official codes set the LR after each step from that step's index: steps 0 and 1 run at the base LR,
    step k at poly(k - 1)."""
    lrs = [step_lr(0.01, k, 100, 0.9) for k in range(100)]
    assert lrs[0] == lrs[1] == 0.01
    assert lrs[50] == pytest.approx(0.01 * (1 - 49 / 100) ** 0.9)
    assert lrs[99] == pytest.approx(0.01 * (1 - 98 / 100) ** 0.9) and lrs[99] > 0


def test_weak_augmentation_angles_are_the_officials_and_act_before_the_resize(monkeypatch):
    angles = []
    original = augment.ndimage.rotate

    def recording_rotate(image, angle, **kw):
        angles.append(angle)
        return original(image, angle, **kw)

    monkeypatch.setattr(augment.ndimage, "rotate", recording_rotate)
    rng = np.random.default_rng(0)
    img = np.zeros((5, 5), np.float32)
    for _ in range(4000):
        augment.weak(img, None, rng)
    assert min(angles) == -20 and max(angles) == 19  # np.random.randint(-20, 20): +20 is never drawn

    from ssbench.engine import data

    shapes = []
    original_apply = data.apply_weak
    monkeypatch.setattr(data, "apply_weak", lambda i, l, p: (shapes.append(i.shape), original_apply(i, l, p))[1])
    native = np.random.default_rng(1).random((20, 30)).astype(np.float32)
    pool = SlicePool([native], [np.zeros((20, 30), np.uint8)], [("c", 0)], {})
    batch = Sampler(pool, 4, seed=0, size=16).next("cpu")
    assert shapes == [(20, 30)] * 4 and batch.image.shape == (4, 1, 16, 16)


def test_bilinear_inference_resizes_scores_before_the_argmax():
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(2, 4, 16, 16, generator=g)
    bilinear = scores_to_labels(scores, (27, 23), "bilinear")
    expected = F.interpolate(scores, size=(27, 23), mode="bilinear", align_corners=False).argmax(1).numpy()
    np.testing.assert_array_equal(bilinear, expected)
    order0 = scores_to_labels(scores, (27, 23), "order0")
    assert order0.shape == (2, 27, 23) and (order0 != bilinear).any()


def test_bilinear_inference_is_recorded_and_gets_its_own_folder(tmp_path, acdc_folder):
    cfg, _, _ = build_config(RunRequest(method="unimatch", sets=("data.inference_resize=bilinear",)))
    assert cfg.protocol_variant == "infer-bilinear" and cfg.to_dict()["data"]["inference_resize"] == "bilinear"
    legacy, _, _ = build_config(RunRequest(method="unimatch", sets=("train.selection=legacy-val+test",
                                                                    "data.inference_resize=bilinear")))
    assert legacy.protocol_variant == "legacy-valtest-infer-bilinear"


def test_legacy_protocol_reports_the_val_test_score_it_selected_on(tmp_path, tiny_nnunet):
    from conftest import tiny_request

    run = execute(tiny_request(tiny_nnunet, tmp_path, iters=4, sets=("train.selection=legacy-val+test",)))
    assert run.name == "seed1337-legacy-valtest"
    selection = json.loads((run / "summary.json").read_text())["selection"]
    log = pd.read_csv(run / "train_log.csv").dropna(subset=["val_dice"])
    assert selection["set"] == "legacy-val+test" and selection["cases"] == 3  # the 1 validation + 2 test cases
    assert selection["best_score"] == pytest.approx(log["val_dice"].max())
    assert selection["best_iteration"] == int(log.loc[log["val_dice"].idxmax(), "iteration"])
