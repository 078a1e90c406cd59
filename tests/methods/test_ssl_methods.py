"""Each element of the Mean Teacher and UniMatch recipes, checked on its own."""

import math

import pytest
import torch

from ssbench.methods.api import Batch, MethodContext, StepInfo
from ssbench.methods.blocks.losses import dice_loss
from ssbench.methods.blocks.ema import ema_alpha
from ssbench.methods.mean_teacher import MeanTeacher, MeanTeacherConfig, consistency_weight
from ssbench.methods.blocks.strong import cutmix_box
from ssbench.methods.supervised import Supervised, SupervisedConfig
from ssbench.methods.unimatch import FixMatch, FixMatchConfig, UniMatch
from ssbench.methods.unimatch import UniMatchConfig, mix_pseudo_labels, unlabeled_dice

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
    from ssbench.engine.runconfig import TrainConfig
    from ssbench.engine.plan import RunRequest, build_config, run_dir_for

    assert TrainConfig().selection == "val"
    cfg, _, _ = build_config(RunRequest(method="unimatch", dataset="nnunet", data_root=str(tiny_nnunet), split="2",
                                        sets=("train.selection=legacy-val+test",)))
    assert run_dir_for(cfg, "r").name == "seed1337-legacy-valtest"


@pytest.mark.parametrize("ema_buffers", [True, False])
def test_ema_buffers_average_the_batchnorm_statistics_or_leave_them(ema_buffers):
    """With the teacher in eval mode its own pass moves no statistic, so what its buffers hold after a step is the
    EMA alone: alpha * before + (1 - alpha) * student (counters copied) with ema_buffers, unchanged without."""
    torch.manual_seed(0)
    mt = MeanTeacher(MeanTeacherConfig(teacher_mode="eval", ema_buffers=ema_buffers, consistency_start=0), CTX)
    before = {k: v.clone() for k, v in mt.teacher.named_buffers()}
    _step(mt, it=5)
    alpha = ema_alpha(5, 0.99)
    student = dict(mt.student.named_buffers())
    moved = 0
    for name, t in mt.teacher.named_buffers():
        s = student[name]
        if not ema_buffers:
            assert torch.equal(t, before[name]), name
        elif t.dtype.is_floating_point:
            torch.testing.assert_close(t, alpha * before[name] + (1 - alpha) * s, rtol=0, atol=1e-7)
            moved += not torch.equal(t, before[name])
        else:
            assert torch.equal(t, s) and int(s) == 1, name  # num_batches_tracked: one training pass
    assert moved >= 36 if ema_buffers else moved == 0  # running mean and variance of every BatchNorm moved


def test_mean_teacher_noisy_teacher_input_and_mse_on_softmax():
    """The teacher sees the unlabeled images plus N(0, 0.1^2) noise clipped to +-0.2; the consistency is the MSE
    between the student's and the teacher's softmax, weighted by the ramp-up."""
    torch.manual_seed(0)
    cfg = MeanTeacherConfig(consistency_start=0, teacher_mode="eval")
    mt = MeanTeacher(cfg, CTX).train()
    seen = {}
    mt.teacher.register_forward_hook(lambda m, args, out: seen.update(t_in=args[0].clone(), t_out=out.clone()))
    mt.student.register_forward_hook(lambda m, args, out: seen.update(s_out=out.detach().clone()))
    lab, unl = _batches(n_lab=2, n_unl=4)
    losses = mt.training_step(lab, unl, StepInfo(40, 100))
    noise = (seen["t_in"] - unl.image).flatten()
    assert noise.abs().max() <= 0.2 + 1e-6
    clipped = ((noise.abs() - 0.2).abs() < 1e-6).float().mean()  # P(|N(0, 1)| > 2) = 4.6 %
    assert 0.03 < clipped < 0.065 and 0.09 < noise.std() < 0.1  # a clipped normal's sd: 0.096
    assert abs(noise.mean()) < 0.01
    expected = ((seen["s_out"][2:].softmax(1) - seen["t_out"].softmax(1)) ** 2).mean()
    torch.testing.assert_close(losses["loss_cons"], expected)
    weight = consistency_weight(40, cfg)
    assert weight > 0 and float(losses["cons_weight"]) == pytest.approx(weight)
    torch.testing.assert_close(losses["loss"].detach(), losses["loss_sup"] + weight * losses["loss_cons"])
    quiet = MeanTeacher(MeanTeacherConfig(noise_std=0.0), CTX).train()  # the control: no noise, the image itself
    quiet.teacher.register_forward_hook(lambda m, args, out: seen.update(t_in=args[0].clone()))
    quiet.training_step(lab, unl, StepInfo(0, 100))
    assert torch.equal(seen["t_in"], unl.image)


def test_ce_dice_loss_by_hand_on_a_2x2_case():
    """(CE + Dice) / 2, SSL4MIS's soft Dice with squared terms over both classes (background included), smooth 1e-5,
    on a 2 x 2 image whose softmax is (1/4, 3/4), (3/4, 1/4), (1/2, 1/2), (1/4, 3/4)."""
    from ssbench.methods.blocks.losses import ce_dice_loss

    l3 = math.log(3)
    logits = torch.tensor([[0.0, l3], [l3, 0.0], [0.0, 0.0], [0.0, l3]]).T.reshape(1, 2, 2, 2)
    target = torch.tensor([[1, 0], [1, 0]])[None]
    ce = (math.log(4 / 3) + math.log(4 / 3) + math.log(2) + math.log(4)) / 4
    s = 1e-5
    dice_background = 1 - (2 * 1.0 + s) / (15 / 16 + 2 + s)  # sum p t = 3/4 + 1/4, sum p^2 = 15/16, sum t^2 = 2
    dice_foreground = 1 - (2 * 5 / 4 + s) / (23 / 16 + 2 + s)  # sum p t = 3/4 + 1/2, sum p^2 = 23/16
    expected = 0.5 * (ce + (dice_background + dice_foreground) / 2)
    assert float(ce_dice_loss(logits, target)) == pytest.approx(expected, rel=1e-6)
    perfect = torch.tensor([[-30.0, 30.0], [30.0, -30.0], [-30.0, 30.0], [30.0, -30.0]]).T.reshape(1, 2, 2, 2)
    assert float(ce_dice_loss(perfect, target)) == pytest.approx(0.0, abs=1e-6)


def test_unimatch_draws_cutmix_sources_from_a_second_unlabeled_stream(tiny_nnunet):
    """The engine gives UniMatch (and FixMatch) two unlabeled streams with their own seeds, concatenated: the
    first half are the images, the second the CutMix sources (UniMatch's trainloader_u_mix)."""
    from ssbench.engine.data import Sampler
    from ssbench.engine.plan import RunRequest, build_config
    from ssbench.engine.run import load_inputs
    from ssbench.engine.train import _draw_unlabeled, make_samplers

    for name in ("unimatch", "fixmatch"):
        cfg, cls, dataset = build_config(RunRequest(method=name, dataset="nnunet", data_root=str(tiny_nnunet),
                                                    split="2", iters=4, sets=("data.train_size=32",
                                                                              "train.batch_unlabeled=3")))
        inputs = load_inputs(cfg, cls, dataset, dataset.split("2", 0), lambda *a, **k: None)
        samplers = make_samplers(cls, cfg, inputs.pools)
        assert sorted(samplers) == ["labeled", "unlabeled", "unlabeled_2"]
        pool = inputs.pools["unlabeled"]
        first, second = (Sampler(pool, 3, cfg.train.seed + k, 32, cfg.data.train_resize) for k in (1, 2))
        for _ in range(3):
            batch = _draw_unlabeled(samplers, "cpu")
            a, b = first.next("cpu"), second.next("cpu")
            assert torch.equal(batch.image, torch.cat([a.image, b.image]))
            assert batch.case_ids == a.case_ids + b.case_ids and batch.label is None
        assert a.case_ids != b.case_ids or a.slice_indices != b.slice_indices


def test_unimatch_pastes_the_second_halfs_strong_view_and_pseudo_labels(monkeypatch):
    import ssbench.methods.unimatch as um

    torch.manual_seed(0)
    method = UniMatch(UniMatchConfig(), CTX)
    box = torch.zeros(2, 32, 32, dtype=torch.bool)
    box[:, 4:12, 8:20] = True
    monkeypatch.setattr(um, "strong_view", lambda x: x)  # the strong views as the images themselves
    monkeypatch.setattr(um, "cutmix_boxes", lambda n, size, p, device: box[:n])
    calls, mixed = [], []
    method.net.register_forward_hook(lambda m, args, out: calls.append((args[0].detach().clone(), out.detach())))
    original = um.mix_pseudo_labels
    monkeypatch.setattr(um, "mix_pseudo_labels", lambda *a: (mixed.append(a), original(*a))[1])
    lab, unl = _batches(n_unl=4)
    method.train()
    method.training_step(lab, unl, StepInfo(0, 100))
    u_w, u_mix = unl.image[:2], unl.image[2:]
    assert torch.equal(calls[0][0], u_mix)  # the sources' pseudo-labels, predicted first
    strong = torch.where(box.unsqueeze(1), u_mix, u_w)
    assert torch.equal(calls[1][0], torch.cat([strong, strong]))  # two strong views, the same box here
    source_conf, source_label = calls[0][1].softmax(1).max(1)
    assert len(mixed) == 2
    for _, _, mix_label, mix_conf, mix_box in mixed:
        assert torch.equal(mix_label, source_label) and torch.equal(mix_box, box)
        torch.testing.assert_close(mix_conf, source_conf)
