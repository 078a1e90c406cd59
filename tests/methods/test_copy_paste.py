"""BCP and ABD: the recipe facts that can be pinned without their official code (benchmarks/peer_check.py
compares the rest with it): the copy-paste box, the region weights, the stages and their hand-over, the constant
learning rate, the EMA over BN buffers, the largest-component pseudo-labels, ABD-R's 4 x 4 grid and its choices,
ABD's strong view and masked Dice."""

import dataclasses

import numpy as np
import pytest
import torch

from ssbench.engine.runconfig import TrainConfig
from ssbench.methods import abd, bcp
from ssbench.methods.api import Batch, MethodContext, StepInfo
from ssbench.methods.blocks.postprocess import largest_component_per_class


def _method(cls, size=32, **cfg):
    torch.manual_seed(0)
    ctx = MethodContext(1, 4, size, 10, torch.device("cpu"))
    return cls(cls.Config(**cfg), ctx)


def _batches(n=4, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    lab = Batch(torch.rand(n, 1, size, size, generator=g), torch.randint(0, 4, (n, size, size), generator=g))
    return lab, Batch(torch.rand(n, 1, size, size, generator=g))


def test_the_pasted_box_is_two_thirds_of_the_side_with_its_corner_uniform_below_size_minus_side():
    assert bcp.box_size(256, bcp.BCPConfig().box_fraction) == 170  # int(256 * 2 / 3)
    size, side = 48, bcp.box_size(48, 2 / 3)
    g = torch.Generator().manual_seed(0)
    corners = set()
    for _ in range(600):
        m = bcp.copy_paste_mask(size, 2 / 3, "cpu", g)
        zeros = (m == 0).nonzero()
        r0, c0 = zeros.min(0).values.tolist()
        assert (zeros.max(0).values - zeros.min(0).values + 1).tolist() == [side, side]
        assert int((m == 0).sum()) == side * side and set(m.unique().tolist()) == {0.0, 1.0}
        corners |= {r0, c0}
    assert corners == set(range(size - side))  # np.random.randint(0, size - side): the last corner is excluded


def test_mix_loss_weights_the_images_own_pixels_and_the_pasted_box_separately():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 4, 16, 16, generator=g)
    own_label, box_label = torch.randint(0, 4, (2, 2, 16, 16), generator=g)
    mask = bcp.box_mask(16, 8, torch.tensor([2, 3]))
    d_own, c_own = bcp.mix_loss(logits, own_label, box_label, mask, 1.0, 0.0)
    d_box, c_box = bcp.mix_loss(logits, own_label, box_label, mask, 0.0, 1.0)
    d, c = bcp.mix_loss(logits, own_label, box_label, mask, 0.5, 1.0)
    assert torch.allclose(d, 0.5 * d_own + d_box) and torch.allclose(c, 0.5 * c_own + c_box)
    # the CE of a region is its own mean: changing the label outside a region leaves that region's term alone
    other = torch.where(mask.bool(), own_label, box_label)  # box_label changed outside the box only
    assert torch.allclose(bcp.mix_loss(logits, own_label, other, mask, 0.0, 1.0)[1], c_box)


def test_bcp_weights_pseudo_labels_half_and_ground_truth_fully_in_both_mixed_images(monkeypatch):
    method = _method(bcp.BCP)
    lab, unl = _batches()
    calls = []
    original = bcp.mix_loss

    def spy(logits, image_label, patch_label, mask, image_weight, patch_weight, dice_mask="masked"):
        calls.append((image_weight, patch_weight, image_label.clone(), patch_label.clone(), dice_mask))
        return original(logits, image_label, patch_label, mask, image_weight, patch_weight, dice_mask)

    monkeypatch.setattr(bcp, "mix_loss", spy)
    method.train()
    method.training_step(lab, None, StepInfo(0, 10, "pretrain"))
    assert [(w1, w2) for w1, w2, *_ in calls] == [(1.0, 1.0)]
    assert torch.equal(calls[0][2], lab.label[:2]) and torch.equal(calls[0][3], lab.label[2:])  # a outside, b in
    calls.clear()
    with torch.no_grad():  # the teacher's pseudo-labels for the unlabeled halves
        torch.manual_seed(5)
        method.training_step(lab, unl, StepInfo(0, 10, "train"))
    (w_unl, p_unl, img_unl, box_unl, mode), (w_l, p_l, img_l, box_l, _) = calls
    assert (w_unl, p_unl, w_l, p_l) == (0.5, 1.0, 1.0, 0.5) and mode == "masked"
    assert torch.equal(box_unl, lab.label[:2]) and torch.equal(img_l, lab.label[2:])  # ground truth weighted 1


def test_bcp_stages_constant_lr_and_the_hand_over_to_the_teacher():
    method = _method(bcp.BCP, pretrain_iters=7)
    stages = method.stages()
    assert [(s.name, s.iters, s.uses_unlabeled) for s in stages] == [("pretrain", 7, False), ("train", 10, True)]
    assert bcp.BCP.recipe_overrides("published") == {"lr_schedule": "constant"} == bcp.BCP.recipe_overrides(
        "cpu-small")
    assert bcp.BCPConfig().pretrain_iters == 10000 and bcp.BCP.short_recipe(bcp.BCPConfig(), 600).pretrain_iters == 200
    with torch.no_grad():
        for p in method.student.parameters():
            p.add_(1.0)
    method.begin_stage(stages[1])
    assert all(torch.equal(a, b) for a, b in zip(method.teacher.state_dict().values(),
                                                 method.student.state_dict().values()))
    method.train()
    assert method.teacher.training  # the official teacher predicts in train mode (dropout, batch statistics)


def test_bcp_teacher_is_an_ema_of_the_whole_state_including_bn_buffers_and_only_in_self_training():
    method = _method(bcp.BCP)
    bn = "encoder.0.1.running_mean" if "encoder.0.1.running_mean" in method.student.state_dict() else next(
        k for k in method.student.state_dict() if k.endswith("running_mean"))
    with torch.no_grad():
        method.student.state_dict()[bn].fill_(2.0)
        method.teacher.state_dict()[bn].fill_(1.0)
    method.after_optimizer_step(StepInfo(0, 10, "pretrain"))
    assert torch.all(method.teacher.state_dict()[bn] == 1.0)  # no teacher in the pre-train
    method.after_optimizer_step(StepInfo(0, 10, "train"))
    assert torch.allclose(method.teacher.state_dict()[bn], torch.full_like(method.teacher.state_dict()[bn], 1.01))


def test_largest_component_per_class_keeps_one_8_connected_component_per_class_and_image():
    labels = torch.zeros(2, 8, 8, dtype=torch.long)
    labels[0, 0:2, 0:2] = 1  # 4 pixels
    labels[0, 5:8, 5:8] = 1  # 9 pixels: kept
    labels[0, 2, 2] = 1  # touches the first block diagonally: 8-connected to it (5 pixels), still smaller
    labels[0, 0, 7] = 2  # class 2: a lone pixel, the only component: kept
    labels[1, 3, 3] = labels[1, 4, 4] = 3  # diagonal pair: one component with 8-connectivity, two with 4
    labels[1, 0, 0] = 3
    out = largest_component_per_class(labels, 4)
    expected = torch.zeros_like(labels)
    expected[0, 5:8, 5:8] = 1
    expected[0, 0, 7] = 2
    expected[1, 3, 3] = expected[1, 4, 4] = 3
    assert torch.equal(out, expected)
    four = largest_component_per_class(labels, 4, connectivity=4)
    assert int((four[1] == 3).sum()) == 1 and four[1, 0, 0] == 3  # ties: the first in raster order
    assert torch.equal(largest_component_per_class(torch.zeros(1, 4, 4, dtype=torch.long), 4),
                       torch.zeros(1, 4, 4, dtype=torch.long))


def test_bcp_refuses_batches_that_cannot_be_halved_and_pasted_into_each_other(cli, tiny_nnunet):
    from conftest import one_line

    data = ("--dataset", "nnunet", "--data-root", tiny_nnunet)
    code, _, err = cli("config", "--method", "bcp", *data, "--set", "train.batch_unlabeled=6")
    one_line(code, err, "train.batch_labeled=12, train.batch_unlabeled=6", "equal and even")
    code, _, err = cli("config", "--method", "abd", *data, "--set", "abd.grid=5")
    one_line(code, err, "abd.grid=5", "equal patches")


# --- ABD ----------------------------------------------------------------------------------------------------------

def _grid_inputs(size=256, grid=4):
    """Images whose 16 patches hold their patch index (view 2: 100 + index)."""
    p = size // grid
    idx = torch.arange(grid * grid).view(grid, grid).repeat_interleave(p, 0).repeat_interleave(p, 1).float()
    return idx.expand(1, 1, size, size).clone(), (100 + idx).expand(1, 1, size, size).clone(), idx.long()


def test_abd_r_displaces_64_pixel_patches_of_a_4_by_4_grid_least_confident_by_most_confident():
    x1, x2, idx = _grid_inputs()
    conf1 = torch.full((1, 256, 256), 0.5)
    conf2 = torch.full((1, 256, 256), 0.5)
    conf1[0][idx == 6] = 0.1  # b: view 1's least confident patch
    conf1[0][idx == 9] = 0.9  # a: view 1's most confident
    conf2[0][idx == 3] = 0.2  # d
    conf2[0][idx == 12] = 0.95  # c
    logits = torch.zeros(1, 4, 256, 256)
    out = abd.abd_r(conf1, conf2, x1, x2, logits, logits, torch.tensor([False]))
    assert out.shape == (2, 256, 256)
    new1, new2 = out[0], out[1]
    assert torch.all(new1[idx == 6] == 112)  # view 2's patch 12, moved to view 1's position 6 (64 x 64 pixels)
    assert torch.all(new2[idx == 3] == 9)  # view 1's patch 9 moved to view 2's position 3
    keep1, keep2 = (idx != 6), (idx != 3)
    assert torch.equal(new1[keep1], x1[0, 0][keep1]) and torch.equal(new2[keep2], x2[0, 0][keep2])
    assert int((idx == 6).sum()) == 64 * 64


def test_abd_r_kl_criterion_picks_the_top_patch_whose_class_distribution_is_closest_to_the_other_views_worst():
    x1, x2, idx = _grid_inputs()
    conf1, conf2 = torch.full((1, 256, 256), 0.5), torch.full((1, 256, 256), 0.5)
    for rank, patch in enumerate((1, 2, 4, 8)):  # view 1's four most confident patches, 1 the most
        conf1[0][idx == patch] = 0.9 - rank * 0.01
    conf1[0][idx == 15] = 0.05
    conf2[0][idx == 0] = 0.1  # view 2's least confident patch: it says class 3
    conf2[0][idx == 5] = 0.99
    logits1, logits2 = torch.zeros(1, 4, 256, 256), torch.zeros(1, 4, 256, 256)
    logits1[0, 3][idx == 8] = 5.0  # of view 1's top four, patch 8 (the 4th) says class 3 too
    logits2[0, 3][idx == 0] = 5.0
    with_kl = abd.abd_r(conf1, conf2, x1, x2, logits1, logits2, torch.tensor([True]))
    without = abd.abd_r(conf1, conf2, x1, x2, logits1, logits2, torch.tensor([False]))
    assert torch.all(with_kl[1][idx == 0] == 8) and torch.all(without[1][idx == 0] == 1)


def test_abd_strong_view_cuts_out_a_box_of_random_0_1_pixels_with_background_label_then_jitters():
    cfg = dataclasses.replace(abd.ABDConfig(), cutout_p=1.0, jitter_p=0.0)
    img = torch.full((8, 1, 64, 64), 0.5)
    lab = torch.full((8, 64, 64), 2)
    torch.manual_seed(0)
    out, out_lab = abd.abd_strong_view(img, lab, cfg)
    box = out_lab == 0
    assert box.any(dim=(1, 2)).all()  # p 1: every view has a box
    assert set(out[:, 0][box].unique().tolist()) == {0.0, 1.0} and torch.all(out[:, 0][~box] == 0.5)
    fractions = box.float().mean(dim=(1, 2))
    assert fractions.min() >= 0.01 and fractions.max() <= 0.41
    cfg = abd.ABDConfig()
    assert (cfg.cutout_p, cfg.jitter, cfg.jitter_p) == (0.5, 0.8, 1.0)  # cutout_gray(p=0.5), ColorJitter(0.8 s)
    boxes = abd.cutout_boxes(4000, 64, 0.5, "cpu", torch.Generator().manual_seed(1))
    assert abs(boxes.any(dim=(1, 2)).float().mean() - 0.5) < 0.04


def test_abd_background_dice_covers_the_whole_image_as_its_losses_py_does_and_bcp_only_the_region():
    g = torch.Generator().manual_seed(2)
    probs = torch.randn(2, 4, 16, 16, generator=g).softmax(1)
    target = torch.randint(0, 4, (2, 16, 16), generator=g)
    region = torch.zeros(2, 16, 16, dtype=torch.bool)
    region[:, :8] = True
    masked = bcp.region_dice(probs, target, region, "masked")
    unmasked = bcp.region_dice(probs, target, region, "background-unmasked")
    onehot = torch.nn.functional.one_hot(target, 4).permute(0, 3, 1, 2).float()
    m = region.float().unsqueeze(1).expand(-1, 4, -1, -1).clone()
    m[:, 0] = 1.0
    inter, denom = (probs * onehot * m).sum((0, 2, 3)), ((probs ** 2 + onehot ** 2) * m).sum((0, 2, 3))
    assert torch.allclose(unmasked, (1 - (2 * inter + 1e-10) / (denom + 1e-10)).mean())
    assert not torch.allclose(masked, unmasked)
    assert abd.ABDConfig().dice_mask == "background-unmasked" and bcp.BCPConfig().dice_mask == "masked"


def test_abd_trains_two_students_from_the_pretrain_and_evaluates_model1():
    method = _method(abd.ABD, pretrain_iters=3)
    first, second = method.stages()
    assert first.optimizers == ("model1",) and second.optimizer_from == (("model2", "model1"),)
    assert set(method.optimizer_params()) == {"model1", "model2"} and method.evaluated_model() == "model1"
    with torch.no_grad():
        for p in method.student.parameters():
            p.add_(0.5)
    method.begin_stage(second)
    for other in (method.model2, method.teacher):
        assert all(torch.equal(a, b) for a, b in zip(other.state_dict().values(), method.student.state_dict().values()))
    lab, unl = _batches()
    method.train()
    losses = method.training_step(lab, unl, StepInfo(0, 10, "train"))
    assert torch.isfinite(losses["loss"])
    assert torch.allclose(losses["loss"], losses["loss_model1"] + losses["loss_model2"])
    x = torch.rand(2, 1, 32, 32)
    method.eval()
    assert torch.equal(method.predict(x), method.student(x))
    m2 = _method(abd.ABD, evaluate="model2")
    m2.eval()
    assert torch.equal(m2.predict(x), m2.model2(x)) and m2.evaluated_model() == "model2"


def test_the_published_recipes_of_bcp_and_abd():
    for cls in (bcp.BCP, abd.ABD):
        t = TrainConfig(**{**vars(TrainConfig()), **cls.recipe_overrides("published")})
        assert (t.iters, t.batch_labeled, t.batch_unlabeled, t.lr, t.lr_schedule, t.seed, t.val_every) == (
            30000, 12, 12, 0.01, "constant", 1337, 200)
        assert cls.eval_overrides("published") == {"also_protocols": ["bcp"]}
    cfg = abd.ABDConfig()
    assert (cfg.grid, cfg.top_num, cfg.kl_p, cfg.cross_weight, cfg.u_weight, cfg.ema_decay) == (4, 4, 0.5, 1.0, 0.5,
                                                                                               0.99)
    assert np.isclose(bcp.BCPConfig().box_fraction, 2 / 3)


@pytest.mark.parametrize("method", ["bcp", "abd"])
def test_the_only_host_round_trip_of_a_step_is_the_largest_component_of_all_pseudo_labels_at_once(
        method, tiny_nnunet, tmp_path):
    """Self-training steps on the stand-in device: the pseudo-labels of every teacher forward go to the host once
    for the connected components and come back once; nothing else waits for the device."""
    from stand_in import step_on_stand_in_device as _step_on_stand_in_device

    rec = _step_on_stand_in_device(method, tiny_nnunet, tmp_path, steps=2)
    where = {e.where.split(":")[0] for e in rec.events}
    kinds = sorted(e.kind for e in rec.events)
    assert where == {"ssbench/methods/blocks/postprocess.py"}, rec.report()
    assert kinds == ["device-to-host copy"] * 2 + ["host-to-device copy"] * 2, rec.report()
