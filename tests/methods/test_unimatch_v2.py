"""UniMatch V2 (the port): recipe facts pinned without the official code (benchmarks/peer_check.py --unimatch-v2
compares the network, masks, EMA and losses with it), the DINOv2 loader, the recorded initialisation, end to end."""

import json
import types

import pytest
import torch
import torch.nn.functional as F
import yaml

from conftest import TINY_RUN, one_line
from ssbench.methods.blocks import perturb
from ssbench.methods.api import Batch, MethodContext, StepInfo
from ssbench.methods.blocks.ema import ema_alpha
from ssbench.methods.unimatch_v2 import network
from ssbench.methods.unimatch_v2.method import (UniMatchV2, UniMatchV2Config, mix_targets, mix_view,
                                                unlabeled_ce, v2_loss)

CTX = MethodContext(in_channels=1, num_classes=4, image_size=32, total_iters=100, device=torch.device("cpu"))


@pytest.fixture(scope="module")
def v2():
    torch.manual_seed(0)
    return UniMatchV2(UniMatchV2Config(init="random"), CTX)


@pytest.fixture(scope="module")
def official_file(tmp_path_factory):
    """A randomly initialised DINOv2 ViT-S saved as the official release is: a flat state dict with mask_token."""
    torch.manual_seed(1)
    vit = network.build_vit("small")
    state = {"mask_token": torch.zeros(1, 384), **vit.state_dict()}
    path = tmp_path_factory.mktemp("dinov2") / "dinov2_vits14_pretrain.pth"
    torch.save(state, path)
    return path, state


def test_published_recipe_is_v2s():
    cfg = UniMatchV2Config()
    assert (cfg.backbone, cfg.init, cfg.conf_thresh, cfg.ema_decay, cfg.lr_multiplier, cfg.evaluate) == \
        ("small", "pretrained", 0.95, 0.996, 40.0, "student")
    assert cfg.complementary_dropout and cfg.supervised_loss == "ce" and cfg.fit == "resize"
    published = UniMatchV2.recipe_overrides("published")
    assert (published["optimizer"], published["lr"], published["weight_decay"]) == ("adamw", 5e-6, 0.01)
    assert UniMatchV2.recipe_overrides("cpu-small")["iters"] <= 40  # ViT-S on the phantom: a smoke run


def test_slice_sizes_fit_the_patch_grid(v2):
    assert [network.fitted_size(s, "resize") for s in (256, 128, 32)] == [252, 126, 28]  # V2's evaluate rounding
    assert [network.fitted_size(s, "pad") for s in (256, 128, 32)] == [266, 140, 42]
    seg = v2.teacher
    x = torch.rand(1, 1, 32, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        normalised = (x.expand(-1, 3, -1, -1) - seg.mean) / seg.std
        resized = F.interpolate(normalised, (28, 28), mode="bilinear", align_corners=True)
        expected = F.interpolate(seg.dpt(resized), (32, 32), mode="bilinear", align_corners=True)
        torch.testing.assert_close(seg(x), expected)
        seg.fit = "pad"  # the padded image's prediction, cropped: the slice's pixels see the same network
        try:
            padded = (F.pad(x, (0, 10, 0, 10)).expand(-1, 3, -1, -1) - seg.mean) / seg.std
            torch.testing.assert_close(seg(x), seg.dpt(padded)[..., :32, :32])
        finally:
            seg.fit = "resize"


def test_ema_teacher_follows_v2s_schedule(v2):
    assert [ema_alpha(i, 0.996) for i in (0, 1, 3)] == [0.0, 0.5, 0.75] and ema_alpha(10_000, 0.996) == 0.996
    g = torch.Generator().manual_seed(2)
    lab = Batch(torch.rand(2, 1, 32, 32, generator=g), torch.randint(0, 4, (2, 32, 32), generator=g))
    unl = Batch(torch.rand(2, 1, 32, 32, generator=g))
    v2.train()
    assert not v2.teacher.training  # V2: model_ema.eval()
    before = [p.clone() for p in v2.teacher.parameters()]
    with torch.no_grad():
        for p in v2.student.parameters():
            p.add_(torch.randn_like(p) * 1e-3)
    out = v2.training_step(lab, unl, StepInfo(600, 1000))
    assert set(out) >= {"loss", "loss_x", "loss_s1", "loss_s2", "conf_ratio"}
    v2.after_optimizer_step(StepInfo(600, 1000))
    for b, t, s in zip(before, v2.teacher.parameters(), v2.student.parameters()):
        torch.testing.assert_close(t, 0.996 * b + 0.004 * s)


def test_complementary_dropout_masks():
    torch.manual_seed(0)
    for n in (4, 5):
        (m1,), (m2,) = perturb.complementary_masks(n, (384,), "cpu")
        assert torch.equal(m1 + m2, torch.full_like(m1, 2.0))  # the views keep complementary channels
        whole = (m1 == 1).all(1)
        assert int(whole.sum()) == int(n * 0.5) and torch.equal(whole, (m2 == 1).all(1))
        assert set(m1[~whole].unique().tolist()) == {0.0, 2.0}  # dropped with p 0.5, the rest x2
    (m1,), _ = perturb.complementary_masks(1000, (384,), "cpu")
    assert (m1[(m1 != 1).any(1)] == 2).float().mean() == pytest.approx(0.5, abs=0.01)
    first, second = perturb.complementary_masks(6, (32, 64, 256), "cpu")  # SSS: one mask per level width
    assert [m.shape for m in first] == [(6, 32), (6, 64), (6, 256)]
    assert all(torch.equal((a == 1).all(1), (b == 1).all(1)) for a, b in zip(first, second))


def test_unlabeled_loss_is_divided_by_all_pixels_not_the_confident_ones():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 4, 6, 6, generator=g)
    pseudo = torch.randint(0, 4, (2, 6, 6), generator=g)
    conf = torch.rand(2, 6, 6, generator=g)
    ce = F.cross_entropy(logits, pseudo, reduction="none")
    keep = conf >= 0.6
    assert 0 < keep.sum() < keep.numel()
    torch.testing.assert_close(unlabeled_ce(logits, pseudo, conf, 0.6), (ce * keep).sum() / 72)
    ignore = torch.zeros_like(keep)
    ignore[0] = True
    torch.testing.assert_close(unlabeled_ce(logits, pseudo, conf, 0.6, ignore),
                               (ce * (keep & ~ignore)).sum() / 36)
    x = torch.randn(2, 4, 6, 6, generator=g)
    label = torch.randint(0, 4, (2, 6, 6), generator=g)
    box = torch.zeros(2, 6, 6, dtype=torch.bool)
    box[0, :3] = True
    targets = [mix_targets(pseudo, conf, box), (pseudo, conf)]
    out = v2_loss(x, label, [logits, logits * 2], targets, 0.6)
    s1 = unlabeled_ce(logits, *targets[0], 0.6)
    s2 = unlabeled_ce(logits * 2, pseudo, conf, 0.6)
    torch.testing.assert_close(out["loss"], (F.cross_entropy(x, label) + (s1 + s2) / 2) / 2)
    mixed, mixed_conf = targets[0]
    assert torch.equal(mixed[0, :3], pseudo[1, :3]) and torch.equal(mixed[0, 3:], pseudo[0, 3:])  # from flip(0)
    assert torch.equal(mixed_conf[1], conf[1])
    view = mix_view(x[:, :1], box)
    assert torch.equal(view[0, 0, :3], x[1, 0, :3]) and torch.equal(view[1], x[1, :1])


def test_the_head_learns_at_forty_times_the_backbones_rate(v2):
    from ssbench.engine.runconfig import TrainConfig
    from ssbench.engine.train import make_optimizer, stage_lr

    t = TrainConfig(optimizer="adamw", lr=5e-6, weight_decay=0.01)
    opt = make_optimizer(v2, t, types.SimpleNamespace(device=torch.device("cpu")))
    backbone, head = opt.param_groups
    assert {id(p) for p in backbone["params"]} == {id(p) for p in v2.student.dpt.backbone.parameters()}
    assert {id(p) for p in head["params"]} == {id(p) for p in v2.student.dpt.head.parameters()}
    assert (backbone["lr"], head["lr"], head["weight_decay"]) == (5e-6, pytest.approx(2e-4), 0.01)
    opt.set_lr(lambda base: stage_lr(t, base, StepInfo(50, 100)))
    assert head["lr"] / backbone["lr"] == pytest.approx(40.0) and backbone["lr"] < 5e-6
    assert not any(p in set(v2.teacher.parameters()) for g in opt.param_groups for p in g["params"])


def test_official_dinov2_file_loads_exactly_and_bad_files_are_refused(official_file, tmp_path):
    from ssbench.errors import UserError

    path, state = official_file
    vit = network.build_vit("small")
    network.load_official(vit, path, "small")
    for k, v in vit.state_dict().items():
        assert torch.equal(v, state[k]), k
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot load"):
        network.load_official(vit, bad, "small")
    torch.save({k: v for k, v in state.items() if not k.startswith("blocks.11.")}, bad)
    with pytest.raises(UserError, match="missing keys"):
        network.load_official(vit, bad, "small")
    torch.save({**state, "pos_embed": torch.zeros(1, 257, 384)}, bad)  # another grid
    with pytest.raises(UserError, match="does not fit the DINOv2 small backbone: size mismatch"):
        network.load_official(vit, bad, "small")


def test_the_initialisation_is_resolved_and_recorded(official_file, tmp_path):
    from ssbench.errors import ConfigError, UserError

    path, _ = official_file
    cfg = UniMatchV2Config(cache_dir=str(tmp_path))
    assert UniMatchV2.resolve_config(cfg, synthetic=True).init == "random"  # the phantom without weights
    with pytest.raises(UserError, match="unimatch-v2.checkpoint=PATH"):
        UniMatchV2.resolve_config(cfg, synthetic=False)  # real data: no silent random backbone
    with pytest.raises(ConfigError, match="file not found"):
        UniMatchV2.resolve_config(UniMatchV2Config(checkpoint=str(tmp_path / "nope.pth")), synthetic=True)
    given = UniMatchV2Config(checkpoint=str(path))
    assert UniMatchV2.resolve_config(given, synthetic=True) == given
    (tmp_path / network.OFFICIAL_FILES["small"]).write_bytes(path.read_bytes())
    assert UniMatchV2.resolve_config(cfg, synthetic=False).init == "pretrained"  # found in the cache folder


@pytest.mark.slow
def test_runs_end_to_end_random_and_pretrained_never_share_a_folder_or_hash(cli, tiny_nnunet, official_file,
                                                                            tmp_path):
    path, state = official_file
    out = tmp_path / "results"
    short = tuple("2" if a == "6" else a for a in TINY_RUN)  # 2 iterations
    base = ("run", "--method", "unimatch-v2", "--data-root", tiny_nnunet, "--out", out, *short)
    code, _, err = cli(*base, "--set", "unimatch-v2.init=random")
    assert code == 0, err
    code, _, err = cli(*base, "--set", f"unimatch-v2.checkpoint={path}")
    assert code == 0, err
    code, _, err = cli(*base)  # real-format data, no weights: one line, nothing written
    one_line(code, err, "unimatch-v2.checkpoint=PATH")
    runs = sorted((out / "nnunet").iterdir())
    assert len(runs) == 2 and runs[0].name.startswith("unimatch-v2@checkpoint=")  # a path: hashed in the name
    assert runs[1].name == "unimatch-v2@init=random"
    configs = [yaml.safe_load((r / "2" / "seed1337" / "config.yaml").read_text()) for r in runs]
    assert [c["unimatch-v2"]["init"] for c in configs] == ["pretrained", "random"]
    assert configs[0]["config_hash"] != configs[1]["config_hash"]
    info = json.loads((runs[0] / "2" / "seed1337" / "run.json").read_text())
    assert any("PORT" in w for w in info["warnings"]) and not any("RANDOMLY" in w for w in info["warnings"])
    assert info["versions"]["timm"] and info["evaluated_model"] == "student"
    random_info = json.loads((runs[1] / "2" / "seed1337" / "run.json").read_text())
    assert any("RANDOMLY INITIALISED" in w for w in random_info["warnings"])
    code, _, err = cli("eval", runs[0] / "2" / "seed1337", "--hd-units", "voxel")  # rebuilt without the weights
    assert code == 0, err
