"""Each element of the Mean Teacher and UniMatch recipes, checked on its own."""

import math

import pytest
import torch

from ssbench.methods.api import Batch, MethodContext, StepInfo
from ssbench.methods.losses import dice_loss
from ssbench.methods.ema import ema_alpha
from ssbench.methods.mean_teacher import MeanTeacher, MeanTeacherConfig, consistency_weight
from ssbench.methods.strong import cutmix_box
from ssbench.methods.supervised import Supervised, SupervisedConfig
from ssbench.methods.unimatch import FixMatch, FixMatchConfig, UniMatch, UniMatchConfig, mix_pseudo_labels, unlabeled_dice

CTX = MethodContext(in_channels=1, num_classes=4, image_size=32, total_iters=100, device=torch.device("cpu"))


def _batches(n_lab=2, n_unl=2, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    lab = Batch(torch.rand(n_lab, 1, size, size, generator=g), torch.randint(0, 4, (n_lab, size, size), generator=g))
    unl = Batch(torch.rand(n_unl, 1, size, size, generator=g))
    return lab, unl


def test_consistency_weight_schedule():
    cfg = MeanTeacherConfig()
    assert consistency_weight(0, cfg) == 0.0
    assert consistency_weight(999, cfg) == 0.0
    assert consistency_weight(1000, cfg) == pytest.approx(0.1 * math.exp(-5 * (1 - 6 / 200) ** 2))
    assert consistency_weight(15000, cfg) == pytest.approx(0.1 * math.exp(-5 * 0.25))
    assert consistency_weight(30000, cfg) == pytest.approx(0.1)
    assert consistency_weight(60000, cfg) == pytest.approx(0.1)


def test_short_recipe_scales_the_schedule():
    short = MeanTeacher.short_recipe(MeanTeacherConfig(), 600)
    assert short.consistency_start == 20 and short.rampup_step == 3
    assert consistency_weight(599, short) == pytest.approx(0.1 * math.exp(-5 * (1 - 199 / 200) ** 2))


def test_ema_alpha_early_and_late():
    assert ema_alpha(0, 0.99) == 0.0  # the first update copies the student
    assert ema_alpha(1, 0.99) == 0.5
    assert ema_alpha(9, 0.99) == pytest.approx(0.9)
    assert ema_alpha(99, 0.99) == 0.99 and ema_alpha(10_000, 0.99) == 0.99


def _step(method, it=0):
    opt = torch.optim.SGD(method.trainable_parameters(), lr=0.01, momentum=0.9)
    lab, unl = _batches(n_unl=2 * type(method).unlabeled_batch_multiplier)
    method.train()
    losses = method.training_step(lab, unl, StepInfo(it, 100))
    opt.zero_grad()
    losses["loss"].backward()
    opt.step()
    method.after_optimizer_step(StepInfo(it, 100))
    return losses


def test_teacher_gets_no_gradient_and_follows_the_student():
    torch.manual_seed(0)
    mt = MeanTeacher(MeanTeacherConfig(consistency_start=0), CTX)
    assert all(not p.requires_grad for p in mt.teacher.parameters())
    assert {id(p) for p in mt.trainable_parameters()} == {id(p) for p in mt.student.parameters()}
    before = [p.clone() for p in mt.teacher.parameters()]
    losses = _step(mt, it=5)
    assert losses["loss_cons"] > 0
    assert all(p.grad is None for p in mt.teacher.parameters())
    alpha = ema_alpha(5, 0.99)
    for b, t, s in zip(before, mt.teacher.parameters(), mt.student.parameters()):
        torch.testing.assert_close(t, alpha * b + (1 - alpha) * s)
    # BN running statistics are averaged too (the default), unlike the original code
    bn_t = next(m for m in mt.teacher.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert not torch.all(bn_t.running_mean == 0)
    # without averaging, an eval-mode teacher keeps its initial statistics (a train-mode one gathers its own)
    mt2 = MeanTeacher(MeanTeacherConfig(ema_buffers=False, teacher_mode="eval"), CTX)
    _step(mt2)
    bn_t2 = next(m for m in mt2.teacher.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert torch.all(bn_t2.running_mean == 0)


def test_teacher_mode_switch():
    mt = MeanTeacher(MeanTeacherConfig(teacher_mode="eval"), CTX).train()
    assert mt.student.training and not mt.teacher.training
    mt = MeanTeacher(MeanTeacherConfig(), CTX).train()
    assert mt.teacher.training
    assert not mt.eval().teacher.training


@pytest.mark.parametrize("cls,cfg", [(Supervised, SupervisedConfig()), (MeanTeacher, MeanTeacherConfig()),
                                     (UniMatch, UniMatchConfig()), (FixMatch, FixMatchConfig())])
def test_one_training_step_changes_the_student(cls, cfg):
    torch.manual_seed(0)
    method = cls(cfg, CTX)
    weights = [p for p in method.trainable_parameters() if p.ndim > 1]  # conv kernels (biases before BN get no grad)
    before = [p.clone() for p in weights]
    losses = _step(method)
    assert torch.isfinite(losses["loss"])
    assert all(not torch.equal(b, p) for b, p in zip(before, weights))


def test_unimatch_dice_ignores_low_confidence_pixels():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 8, 8)
    pseudo = torch.randint(0, 4, (2, 8, 8))
    conf = torch.full((2, 8, 8), 0.99)
    conf[:, :4] = 0.5  # the top half is ignored
    loss = unlabeled_dice(logits, pseudo, conf, 0.95)
    # the same loss by hand, on the kept pixels only
    probs = logits.softmax(1)[..., 4:, :]
    onehot = torch.nn.functional.one_hot(pseudo[:, 4:], 4).permute(0, 3, 1, 2).float()
    inter = (probs * onehot).sum((0, 2, 3))
    denom = (probs**2).sum((0, 2, 3)) + (onehot**2).sum((0, 2, 3))
    expected = (1 - (2 * inter + 1e-5) / (denom + 1e-5)).mean()
    torch.testing.assert_close(loss, expected)
    changed = logits.clone()
    changed[:, :, :4] = torch.randn(2, 4, 4, 8) * 10  # changing ignored pixels changes nothing
    torch.testing.assert_close(unlabeled_dice(changed, pseudo, conf, 0.95), loss)
    assert dice_loss(probs, pseudo[:, 4:]) == pytest.approx(float(expected))


def test_unimatch_total_loss_weights():
    torch.manual_seed(0)
    method = UniMatch(UniMatchConfig(), CTX)
    losses = _step(method)
    expected = (losses["loss_x"] + 0.25 * (losses["loss_s1"] + losses["loss_s2"]) + 0.5 * losses["loss_fp"]) / 2
    torch.testing.assert_close(losses["loss"].detach(), expected)
    fix = _step(FixMatch(FixMatchConfig(), CTX))
    assert "loss_s2" not in fix and "loss_fp" not in fix
    torch.testing.assert_close(fix["loss"].detach(), (fix["loss_x"] + fix["loss_s1"]) / 2)


def test_cutmix_box_bounds_and_probability():
    g = torch.Generator().manual_seed(0)
    size, empty, n = 64, 0, 400
    for _ in range(n):
        box = cutmix_box(size, g)
        if not box.any():
            empty += 1
            continue
        rows = torch.nonzero(box.any(1)).flatten()
        cols = torch.nonzero(box.any(0)).flatten()
        h, w = len(rows), len(cols)
        assert int(box.sum()) == h * w  # one rectangle
        assert rows[-1] < size and cols[-1] < size
        assert 0.3 * 0.7 <= h / w <= (1 / 0.3) / 0.7  # aspect 0.3..1/0.3 up to integer truncation
        assert (0.02 * size * size) * 0.7 <= h * w <= 0.4 * size * size
    assert 0.4 < empty / n < 0.6
    assert not cutmix_box(size, g, p=0.0).any()


def test_cutmix_label_mixing():
    label = torch.zeros(1, 6, 6, dtype=torch.long)
    conf = torch.full((1, 6, 6), 0.99)
    mix_label = torch.full((1, 6, 6), 3)
    mix_conf = torch.full((1, 6, 6), 0.5)
    box = torch.zeros(1, 6, 6, dtype=torch.bool)
    box[0, 1:3, 2:5] = True
    lab, cf = mix_pseudo_labels(label, conf, mix_label, mix_conf, box)
    assert torch.equal(lab[box], torch.full((6,), 3)) and torch.all(lab[~box] == 0)
    assert torch.all(cf[box] == 0.5) and torch.all(cf[~box] == 0.99)


@pytest.mark.parametrize("p", [0.3, 0.7])
def test_feature_perturbation_applies_the_configured_dropout_at_every_level(p):
    """The method's own dropout, built from ``fp_dropout``, perturbs the encoder features of every level: whole
    channels zeroed at rate p, the others scaled by 1 / (1 - p)."""
    torch.manual_seed(0)
    method = UniMatch(UniMatchConfig(fp_dropout=p), CTX)
    seen = []
    method.fp_drop.register_forward_hook(lambda module, args, out: seen.append((args[0].detach(), out.detach())))
    _step(method)
    assert [x.shape[1] for x, _ in seen] == [16, 32, 64, 128, 256]  # every encoder level, once
    dropped_total = channels = 0
    for x, y in seen:
        dropped = y.flatten(2).abs().sum(-1) == 0  # (B, C): whole channels
        assert not (x.flatten(2).abs().sum(-1) == 0).any()  # ... that were not zero before
        torch.testing.assert_close(y[~dropped], x[~dropped] / (1 - p))
        dropped_total += int(dropped.sum())
        channels += dropped.numel()
    assert abs(dropped_total / channels - p) < 0.06  # 4 x 496 channels: the binomial sd is about 0.01
    fix = FixMatch(FixMatchConfig(), CTX)
    calls = []
    fix.fp_drop.register_forward_hook(lambda *a: calls.append(1))
    _step(fix)
    assert calls == []  # no feature perturbation in FixMatch


def test_legacy_selection_is_never_default_and_named(tiny_nnunet):
    from ssbench.engine.config import TrainConfig
    from ssbench.engine.run import RunRequest, build_config, run_dir_for

    assert TrainConfig().selection == "val"
    cfg, _, _ = build_config(RunRequest(method="unimatch", dataset="nnunet", data_root=str(tiny_nnunet), split="2",
                                        sets=("train.selection=legacy-val+test",)))
    assert run_dir_for(cfg, "r").name == "seed1337-legacy-valtest"
