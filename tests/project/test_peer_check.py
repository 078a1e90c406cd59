"""The peer check (benchmarks/peer_check.py) must be able to fail: its comparisons run here against stand-ins that
differ from ssbench in known ways (the official code itself is not available offline; the check's output against
it is in the issue notes and reproducible with the command in the README)."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ssbench.methods.blocks.strong import cutmix_box
from ssbench.methods.blocks.unet import UNet

sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))
from peercheck import common as peer  # noqa: E402
from peercheck import ssl4mis, unimatch  # noqa: E402


def test_unet_check_passes_on_the_same_network_and_fails_on_transposed_up_sampling():
    assert all(i.ok for i in peer.check_unet("self", lambda c, k: UNet(c, k)))
    items = peer.check_unet("transpose", lambda c, k: UNet(c, k, upsampling="transpose"))
    assert not items[0].ok and "1,944,324" in items[0].detail


@pytest.mark.slow
def test_cutmix_check_detects_a_shifted_distribution():
    class Same:
        @staticmethod
        def obtain_cutmix_box(size, p=0.5):
            return cutmix_box(size, torch.Generator().manual_seed(int(np.random.randint(1 << 30))), p=p).float()

    class Smaller:  # boxes of 2-20 % instead of 2-40 % of the image
        @staticmethod
        def obtain_cutmix_box(size, p=0.5):
            g = torch.Generator().manual_seed(int(np.random.randint(1 << 30)))
            return cutmix_box(size, g, p=p, area=(0.02, 0.2)).float()

    assert all(i.ok for i in unimatch.check_cutmix(Same, 3000, size=64))
    verdicts = {i.name: i.ok for i in unimatch.check_cutmix(Smaller, 3000, size=64)}
    assert not verdicts["CutMix: area distribution (two-sample KS)"]


def test_script_functions_and_defaults_are_read_without_running_the_script(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(
        "import argparse\nparser = argparse.ArgumentParser()\n"
        "parser.add_argument('--ema_decay', type=float, default=0.99)\n"
        "parser.add_argument('--consistency', type=float, default=0.1)\n"
        "raise SystemExit('the script body must not run')\n"
        "def weight(epoch):\n    return args.consistency * epoch\n"
    )
    assert peer.script_defaults(script) == {"ema_decay": 0.99, "consistency": 0.1}
    ns = {"args": type("A", (), {"consistency": 0.5})}
    assert peer.script_functions(script, ["weight"], ns)["weight"](4) == 2.0


def test_classes_loop_statements_and_lr_schedules_are_read_from_a_scripts_syntax_tree(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(
        "import torch\nraise SystemExit('the script body must not run')\n"
        "class Counter:\n    def __init__(self):\n        self.n = 0\n"
        "def train(p1, p2):\n    for it in range(3):\n        a = p1 * 2\n        b = a + p2\n        c = b - 1\n"
        "        for g in opt.param_groups:\n            g['lr'] = 0.1\n"
    )
    assert peer.script_classes(script, ["Counter"], {})["Counter"]().n == 0
    fn = peer.function_source(script, "train")
    ns = {"p1": 3, "p2": 4}
    exec(compile(peer.statements_between(fn, "a", "b"), "x", "exec"), ns)
    assert (ns["a"], ns["b"], "c" in ns) == (6, 10, False)
    assert peer.sets_lr(fn)
    script.write_text("def train(opt):\n    lr = 0.1\n")
    assert not peer.sets_lr(peer.function_source(script, "train"))


def test_a_wrapped_unet_is_compared_on_its_encoder_and_decoder_and_a_transposed_one_differs():
    class Wrapped(torch.nn.Module):  # as BCP's UNet_2d: the UNet's weights first, then unused heads
        def __init__(self, upsampling="bilinear"):
            super().__init__()
            self.encoder = UNet(1, 4, upsampling=upsampling)
            self.projection_head = torch.nn.Linear(16, 32)

        def forward(self, x):
            return self.encoder(x)

    same = peer.check_unet_subset("wrapped", lambda: Wrapped())
    assert all(i.ok for i in same) and "projection_head" in same[0].detail
    assert not peer.check_unet_subset("transposed", lambda: Wrapped("transpose"))[0].ok


def test_loop_statements_run_a_training_loops_statements_as_written(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(
        "raise SystemExit('the script body must not run')\n"
        "for epoch in range(3):\n"
        "    for i, batch in enumerate(loader):\n"
        "        x = batch * 2\n"
        "        writer.add_scalar('x', x)\n"
        "        y = x + 1\n"
        "        optimizer.zero_grad()\n"
    )
    ns = {"batch": 3}
    exec(peer.loop_statements(script, "x = batch", "y =", skip=("writer.",)), ns)
    assert ns["y"] == 7
    with pytest.raises(SystemExit, match="no statement block"):
        peer.loop_statements(script, "z =", "y =")


def _variants(noise_range=0.3):
    """Stand-ins for SSL4MIS's UNet_URPC / UNet_CCT: ours, optionally with another feature-noise range."""
    import types

    from ssbench.methods.cct import CCTConfig, perturbed_outputs
    from ssbench.methods.urpc import URPCConfig, pyramid

    class URPCNet(torch.nn.Module):
        def __init__(self, c, k):
            super().__init__()
            self.net = UNet(c, k, aux_heads=True)

        def forward(self, x):
            return tuple(pyramid(self.net, x, URPCConfig(noise_range=noise_range), self.training))

    class CCTNet(torch.nn.Module):
        def __init__(self, c, k):
            super().__init__()
            self.net = UNet(c, k, aux_decoders=3)

        def forward(self, x):
            return tuple(perturbed_outputs(self.net, x, CCTConfig())) if self.training else (self.net(x),)

    return types.SimpleNamespace(UNet_URPC=URPCNet, UNet_CCT=CCTNet)


def test_the_network_variant_check_passes_on_ours_and_fails_on_another_perturbation():
    assert all(i.ok for i in ssl4mis.check_unet_variants(_variants()))
    verdicts = {i.name: i.ok for i in ssl4mis.check_unet_variants(_variants(noise_range=0.5))}
    assert not verdicts["SSL4MIS UNet_URPC: train outputs with their perturbations, same draws"]
    assert verdicts["SSL4MIS UNet_URPC: eval outputs"] and verdicts["SSL4MIS UNet_CCT: train outputs with their "
                                                                    "perturbations, same draws"]


# --- step items: a stand-in checkout whose Mean Teacher loop is written in the SSL4MIS script's form -------------

_MT_SCRIPT = '''import argparse
parser = argparse.ArgumentParser()
parser.add_argument('--max_iterations', type=int, default=30000)
parser.add_argument('--labeled_bs', type=int, default=4)
parser.add_argument('--consistency', type=float, default=0.1)
parser.add_argument('--consistency_rampup', type=float, default=200.0)
raise SystemExit('the script body must not run')
def get_current_consistency_weight(epoch):
    return args.consistency * ramps.sigmoid_rampup(epoch, args.consistency_rampup)
for epoch_num in range(10):
    for i_batch, sampled_batch in enumerate(loader):
        volume_batch, label_batch = sampled_batch['image'], sampled_batch['label']
        unlabeled_volume_batch = volume_batch[args.labeled_bs:]
        noise = torch.clamp(torch.randn_like(unlabeled_volume_batch) * 0.1, -0.2, 0.2)
        ema_inputs = unlabeled_volume_batch + noise
        outputs = model(volume_batch)
        outputs_soft = torch.softmax(outputs, dim=1)
        with torch.no_grad():
            ema_output_soft = torch.softmax(ema_model(ema_inputs), dim=1)
        loss_ce = ce_loss(outputs[:args.labeled_bs], label_batch[:args.labeled_bs].long())
        loss_dice = dice_loss(outputs_soft[:args.labeled_bs], label_batch[:args.labeled_bs].unsqueeze(1))
        supervised_loss = 0.5 * (loss_dice + loss_ce)
        consistency_weight = get_current_consistency_weight(iter_num // 150)
        if iter_num < 1000:
            consistency_loss = 0.0
        else:
            consistency_loss = torch.mean((outputs_soft[args.labeled_bs:] - ema_output_soft) ** 2)
        loss = supervised_loss + consistency_weight * consistency_loss
        optimizer.zero_grad()
'''


@pytest.fixture
def mean_teacher_checkout(tmp_path):
    """networks/unet.py, utils/ramps.py and utils/losses.py as thin stand-ins over ssbench's own pieces (their
    parity with SSL4MIS has items of its own), and the loop above."""
    (tmp_path / "networks").mkdir()
    (tmp_path / "utils").mkdir()
    (tmp_path / "networks" / "unet.py").write_text("from ssbench.methods.blocks.unet import UNet\n")
    (tmp_path / "utils" / "ramps.py").write_text("from ssbench.methods.blocks.ramps import sigmoid_rampup\n")
    (tmp_path / "utils" / "losses.py").write_text(
        "import torch\nfrom ssbench.methods.blocks.losses import dice_loss\n"
        "class DiceLoss(torch.nn.Module):\n    def __init__(self, n):\n        super().__init__()\n"
        "    def forward(self, probs, target):\n        return dice_loss(probs, target[:, 0].long())\n")
    (tmp_path / "train_mean_teacher_2D.py").write_text(_MT_SCRIPT)
    return tmp_path


def _mean_teacher_items(code):
    unet = peer.load_file(code / "networks" / "unet.py", "standin_unet")
    spec = next(s for s in ssl4mis.step_specs(unet) if s[0] == "Mean Teacher")
    return {i.name.split("iteration ")[1].split(" ")[0]: i for i in ssl4mis.check_ssl4mis_steps(code, [spec])}


@pytest.mark.slow
def test_a_step_item_is_equal_on_the_same_loop_and_different_with_a_term_scaled_or_two_weights_swapped(
        mean_teacher_checkout, monkeypatch):
    from ssbench.methods import mean_teacher
    from ssbench.methods.blocks import losses

    items = _mean_teacher_items(mean_teacher_checkout)
    assert list(items) == ["0", "15000", "29999"] and all(i.ok for i in items.values()), items
    assert "unlabeled gradients" in items["29999"].detail

    real_weight = mean_teacher.consistency_weight  # the unlabeled term 10 % too heavy: caught from the ramp on
    monkeypatch.setattr(mean_teacher, "consistency_weight", lambda it, cfg: 1.1 * real_weight(it, cfg))
    items = _mean_teacher_items(mean_teacher_checkout)
    assert items["0"].ok and not items["15000"].ok and not items["29999"].ok
    assert "weight x unlabeled" in items["29999"].detail
    monkeypatch.undo()

    def swapped(logits, target):  # CE and Dice weighted 0.4 / 0.6 instead of 0.5 / 0.5
        return 0.4 * torch.nn.functional.cross_entropy(logits, target) + 0.6 * losses.dice_loss(logits.softmax(1),
                                                                                               target)

    monkeypatch.setattr(mean_teacher, "ce_dice_loss", swapped)
    assert not any(i.ok for i in _mean_teacher_items(mean_teacher_checkout).values())


@pytest.mark.slow
def test_a_step_item_sees_an_unlabeled_gradient_that_differs_where_the_values_agree(mean_teacher_checkout,
                                                                                   monkeypatch):
    """The unlabeled rows of the student's output pass their gradient at half strength: every value the same,
    only the unlabeled part of the gradient differs."""
    from ssbench.methods import mean_teacher

    real = mean_teacher.MeanTeacher.training_step

    def half_gradient(self, labeled, unlabeled, step):
        forward, n = self.student.forward, labeled.image.shape[0]

        def halved(x):
            y = forward(x)
            return torch.cat([y[:n], 0.5 * y[n:] + 0.5 * y[n:].detach()])

        self.student.forward = halved
        try:
            return real(self, labeled, unlabeled, step)
        finally:
            del self.student.forward

    monkeypatch.setattr(mean_teacher.MeanTeacher, "training_step", half_gradient)
    items = _mean_teacher_items(mean_teacher_checkout)
    item = items["29999"]
    assert not item.ok and "unlabeled gradients 0.5 of" in item.detail, item
    total = item.detail.split("; total ")[1].split(";")[0].split(" vs ")
    assert total[0] == total[1]  # the same value on both sides


@pytest.mark.slow
def test_the_threshold_draw_item_reads_the_production_draws_and_sees_another_range():
    import types

    def official(low, high):
        def feature_dropout(x):  # SSL4MIS's FeatureDropout, as a stand-in with a given range
            attention = torch.mean(x, dim=1, keepdim=True)
            peak = attention.view(x.size(0), -1).max(1, keepdim=True)[0]
            threshold = (peak * np.random.uniform(low, high)).view(x.size(0), 1, 1, 1).expand_as(attention)
            return x * (attention < threshold).float()
        return types.SimpleNamespace(FeatureDropout=feature_dropout)

    assert ssl4mis.check_threshold_draw(official(0.7, 0.9), 3000).ok
    assert not ssl4mis.check_threshold_draw(official(0.6, 0.9), 3000).ok


def test_the_weak_augmentation_item_sees_the_variant_that_never_leaves_a_slice_unaugmented():
    from ssbench.augment import weak

    rng = np.random.default_rng(7)  # a stand-in for an official loader: ssbench's default variant

    def theirs(image):
        return weak(image, None, rng)[0]

    assert peer.check_weak("stand-in", theirs, 2000).ok
    item = peer.check_weak("stand-in", theirs, 2000, always=True)
    assert not item.ok and "left unchanged: ours 0.0" in item.detail


@pytest.mark.slow
def test_the_cutmix_draw_items_see_other_box_centres_and_a_fixed_partner():
    import types

    from peercheck import admt
    from ssbench.methods import admt as ours

    def official(low_fraction=8, shuffle=True):  # AD-MT's cut_mix as a stand-in: its draws, ssbench's paste
        def cut_mix(image, target, conf):
            b, _, h, w = image.shape
            perm = torch.randperm(b) if shuffle else torch.roll(torch.arange(b), 1)
            lam = torch.tensor(np.random.beta(4, 4), dtype=torch.float32)
            cx = torch.from_numpy(np.random.randint(size=[b], low=int(h / low_fraction), high=h))
            cy = torch.from_numpy(np.random.randint(size=[b], low=int(w / low_fraction), high=w))
            return ours.apply_cutmix(ours.CutMixParams(perm, lam, cx, cy), image, target, conf)
        return types.SimpleNamespace(cut_mix=cut_mix)

    assert all(i.ok for i in admt.check_cutmix_draws(official(), 2400, size=64))
    verdicts = {i.name.split(": ")[1]: i.ok for i in admt.check_cutmix_draws(official(low_fraction=2), 2400, size=64)}
    assert not verdicts["box first row (two-sample KS)"], verdicts
    verdicts = {i.name.split(": ")[1]: i.ok for i in admt.check_cutmix_draws(official(shuffle=False), 2400, size=64)}
    assert not verdicts["partner offsets perm[i] - i mod 12 (chi-square)"], verdicts


def test_step_item_judges_each_term_the_gradients_and_the_unlabeled_part_with_its_own_tolerance():
    w1, w2 = torch.nn.Parameter(torch.tensor([1.0, 2.0])), torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    x = torch.tensor([3.0, 4.0])

    def side(w, u_scale=1.0):
        sup = (w * x).sum()
        unl = 0.05 * u_scale * (w ** 2).sum()  # a small unlabeled part: 1 % of the gradient
        return sup, sup + unl

    (s1, t1), (_, t2) = side(w1), side(w2)
    assert peer.step_item("same", [("sup", s1, s1)], (t1, [w1]), (t2, [w2]), s1).ok
    (_, t3) = side(w2, 1.001)  # the unlabeled part 0.1 % off: within 5e-3 of its own largest gradient
    item = peer.step_item("near", [], (t1, [w1]), (t3, [w2]), s1)
    assert item.ok and "unlabeled gradients 0.001" in item.detail, item
    (_, t4) = side(w2, 1.02)  # 2 % off
    assert not peer.step_item("far", [], (t1, [w1]), (t4, [w2]), s1).ok
    assert not peer.step_item("term", [("sup", s1, s1 * 1.001)], (t1, [w1]), (t2, [w2])).ok
    assert peer.step_item("loose", [("sup", s1, s1 * 1.001)], (t1, [w1]), (t2, [w2]), tol_scale=100).ok
