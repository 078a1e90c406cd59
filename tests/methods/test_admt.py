"""AD-MT: the recipe facts that can be pinned without the official code (benchmarks/peer_check.py compares the
rest with it): the alternating schedule, the teacher decay, which teacher is updated and in which mode, the entropy
fusion, the conflicts with the student, the CutMix of the second teacher's periods, the recipe's seed and
validation, and the schedule's state in the checkpoint."""

import dataclasses

import numpy as np
import torch

from ssbench.engine.runconfig import TrainConfig
from ssbench.methods import admt
from ssbench.methods.api import Batch, MethodContext, StepInfo


def _method(**cfg):
    torch.manual_seed(0)
    return admt.ADMT(admt.ADMTConfig(**cfg), MethodContext(1, 4, 32, 100, torch.device("cpu")))


def _runs(flags):
    """Lengths of the runs of equal flags (the last, unfinished one left out)."""
    changes = np.flatnonzero(np.diff(np.array(flags, int))) + 1
    return np.diff(np.concatenate([[0], changes]))


def test_the_teachers_swap_after_random_periods_of_1_to_50_steps_starting_with_the_first():
    s = admt.AlternateSchedule(50, True, seed=7)
    flags = []
    for _ in range(20000):
        flags.append(s.flag)
        s.update()
    runs = _runs(flags)
    assert flags[0] is True and runs.min() >= 1 and runs.max() <= 50
    assert runs.min() == 1 and runs.max() == 50 and 22 < runs.mean() < 29  # uniform on 1..50: mean 25.5
    fixed = admt.AlternateSchedule(50, False, seed=7)
    flags = []
    for _ in range(500):
        flags.append(fixed.flag)
        fixed.update()
    assert set(_runs(flags)) == {50}
    again = admt.AlternateSchedule(50, True, seed=7)  # the same seed, the same periods (every process agrees)
    assert [again._seeded(k) for k in range(30)] == [s._seeded(k) for k in range(30)]


def test_the_teacher_decay_is_zero_until_iteration_100_then_ramps_to_0_99():
    cfg = admt.ADMTConfig()
    assert [admt.teacher_decay(it, cfg) for it in (0, 57, 99, 100, 101)] == [0.0] * 5  # iteration // 2 < 50, = 50
    assert admt.teacher_decay(102, cfg) == 0.5 and admt.teacher_decay(104, cfg) == 1 - 1 / 3
    assert admt.teacher_decay(30000, cfg) == 0.99


def test_the_teacher_of_the_period_is_updated_in_train_mode_and_the_other_left_alone_in_eval_mode():
    method = _method()
    g = torch.Generator().manual_seed(0)
    lab = Batch(torch.rand(2, 1, 32, 32, generator=g), torch.randint(0, 4, (2, 32, 32), generator=g))
    unl = Batch(torch.rand(2, 1, 32, 32, generator=g))
    for it in range(6):
        first = method.schedule.flag
        before = [{k: v.clone() for k, v in t.state_dict().items()} for t in (method.teacher, method.teacher2)]
        method.train()
        method.training_step(lab, unl, StepInfo(it, 100))
        assert method.teacher.training is first and method.teacher2.training is not first
        method.after_optimizer_step(StepInfo(it, 100))
        updated, left = (0, 1) if first else (1, 0)
        after = [t.state_dict() for t in (method.teacher, method.teacher2)]
        assert all(torch.equal(after[updated][k], method.student.state_dict()[k]) for k in after[updated]
                   if after[updated][k].dtype.is_floating_point)  # decay 0 in the warm-up: a copy of the student
        assert all(torch.equal(after[left][k], before[left][k]) for k in after[left])


def test_entropy_fusion_weights_each_teacher_by_exp_minus_its_entropy_in_bits():
    p1 = torch.tensor([0.97, 0.01, 0.01, 0.01]).view(1, 4, 1, 1)
    p2 = torch.full((1, 4, 1, 1), 0.25)
    h1 = -(p1 * torch.log2(p1 + 1e-10)).sum()
    w1 = torch.exp(-h1) / (torch.exp(-h1) + torch.exp(torch.tensor(-2.0)))  # H(uniform over 4) = 2 bits
    conf, label = admt.entropy_fusion(p1, p2)
    assert label.item() == 0 and torch.isclose(conf, w1 * 0.97 + (1 - w1) * 0.25).all()
    sharp, _ = admt.entropy_fusion(p1, p2, temperature=0.5)
    assert sharp.item() > conf.item()


def test_the_student_wins_a_conflict_only_where_both_teachers_disagree_and_it_is_more_confident():
    label, label_stu = torch.tensor([[0, 0, 0, 0]]), torch.tensor([[1, 1, 1, 0]])
    conf, conf_stu = torch.tensor([[0.6, 0.6, 0.9, 0.6]]), torch.tensor([[0.8, 0.8, 0.8, 0.99]])
    disagree = torch.tensor([[True, False, True, True]])
    out, c = admt.resolve_conflicts(label, conf, label_stu, conf_stu, disagree, "pixel_confidence")
    assert out.tolist() == [[1, 0, 0, 0]] and torch.equal(c, torch.tensor([[0.8, 0.6, 0.9, 0.6]]))
    assert admt.resolve_conflicts(label, conf, label_stu, conf_stu, disagree, "always_stu")[0].tolist() == [
        [1, 0, 1, 0]]


def test_cutmix_boxes_have_one_beta_4_4_side_per_batch_and_centres_from_an_eighth_of_the_side():
    torch.manual_seed(0)
    sides, rows = [], []
    for _ in range(300):
        q = admt.draw_cutmix(6, 64, 64, "cpu")
        box = admt.cutmix_box_masks(q, 64, 64)
        assert q.cx.min() >= 8 and q.cy.min() >= 8 and q.cx.max() < 64
        side = int(64 * float(torch.sqrt(1 - q.lam)))
        for i in range(6):  # a box's extent: side // 2 either way of its centre, clipped to the image
            r = box[i].any(1).nonzero()
            expect = min(64, int(q.cx[i]) + side // 2) - max(0, int(q.cx[i]) - side // 2)
            assert (len(r) if len(r) else 0) == expect
        sides.append(side)
        rows.append(sorted(set(q.perm.tolist())) == list(range(6)))
    assert all(rows) and 0.40 < np.mean(sides) / 64 < 0.75  # E sqrt(1 - Beta(4, 4)) ~ 0.69
    img = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 1, 8, 8).contiguous()
    q = admt.CutMixParams(torch.tensor([1, 2, 3, 0]), torch.tensor(0.75), torch.tensor([4] * 4),
                          torch.tensor([4] * 4))
    mixed, lab = admt.apply_cutmix(q, img, img[:, 0].long())
    assert mixed[0, 0, 2:6, 2:6].eq(1).all() and mixed[0, 0, 0, 0] == 0 and lab[3, 3, 3] == 0  # partner 0 for 3


def test_the_second_teachers_periods_train_on_cutmix_of_the_weak_view_the_firsts_on_the_strong_view(monkeypatch):
    method = _method()
    g = torch.Generator().manual_seed(0)
    lab = Batch(torch.rand(2, 1, 32, 32, generator=g), torch.randint(0, 4, (2, 32, 32), generator=g))
    unl = Batch(torch.rand(2, 1, 32, 32, generator=g))
    used = []
    monkeypatch.setattr(admt, "apply_cutmix", lambda q, *a: used.append("cutmix") or list(a))
    monkeypatch.setattr(method, "strong", lambda x: used.append("strong") or x)
    method.train()
    method.schedule.flag = True
    method.training_step(lab, unl, StepInfo(0, 100))
    method.schedule.flag = False
    method.training_step(lab, unl, StepInfo(1, 100))
    assert used == ["strong", "cutmix"]


def test_the_schedule_is_saved_with_the_weights_and_restored():
    a, b = _method(), _method()
    for _ in range(37):
        a.schedule.update()
    b.load_state_dict(a.state_dict())
    assert b.schedule.state() == a.schedule.state()


def test_the_published_recipe_of_ad_mt():
    t = TrainConfig(**{**vars(TrainConfig()), **admt.ADMT.recipe_overrides("published")})
    assert (t.iters, t.batch_labeled, t.batch_unlabeled, t.lr, t.lr_schedule, t.seed) == (30000, 12, 12, 0.01,
                                                                                          "poly", 2023)
    assert (t.val_every, t.val_epochs) == ("epoch", 2)
    assert admt.ADMT.recipe_overrides("cpu-small") == {"seed": 2023}
    cfg = admt.ADMTConfig()
    assert (cfg.consistency, cfg.consistency_rampup, cfg.rampup_step, cfg.conf_thresh, cfg.cutmix_p,
            cfg.period_max, cfg.conflict, cfg.jitter_p, cfg.blur_p) == (2.0, 50.0, 150, 0.95, 1.0, 50,
                                                                         "pixel_confidence", 0.8, 0.2)
    short = admt.ADMT.short_recipe(cfg, 600)
    assert (short.rampup_step, short.teacher_warmup, short.period_max) == (3, 1, 50)
    assert dataclasses.replace(cfg, evaluate="teacher").evaluate == "teacher"


def test_the_training_step_never_waits_for_the_device(tiny_nnunet, tmp_path, monkeypatch):
    """Both teachers, the fusion, the strong view or CutMix (periods of 1 step: both kinds), the student and the
    EMA, on the stand-in device: no host synchronisation (the schedule's state is host integers)."""
    from stand_in import step_on_stand_in_device as _step_on_stand_in_device

    monkeypatch.setattr(admt.AlternateSchedule, "_seeded", lambda self, k: 1)
    rec = _step_on_stand_in_device("admt", tiny_nnunet, tmp_path, steps=4)
    assert not rec.events, "\n" + rec.report()
