"""UA-MT, URPC, CCT, ICT and CPS: the recipe facts of the SSL4MIS 2-D scripts that can be pinned without the
official code (benchmarks/peer_check.py --ssl4mis compares them with it), and each method end to end."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats

from ssbench.methods import ict as ict_module
from ssbench.methods.blocks import perturb
from ssbench.methods.api import Batch, MethodContext, StepInfo
from ssbench.methods.cct import CCT, CCTConfig
from ssbench.methods.cps import CPS, CPSConfig
from ssbench.methods.ict import ICT, ICTConfig, mix_factors
from ssbench.methods.blocks.losses import ce_dice_loss
from ssbench.methods.blocks.ramps import sigmoid_rampup
from ssbench.methods.uamt import UAMT, UAMTConfig, masked_consistency, uncertainty_threshold
from ssbench.methods.blocks.unet import UNet
from ssbench.methods.urpc import URPC, URPCConfig, pyramid, rectified_consistency

CTX = MethodContext(in_channels=1, num_classes=4, image_size=32, total_iters=30000, device=torch.device("cpu"))


def _batches(n_lab=2, n_unl=4, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    lab = Batch(torch.rand(n_lab, 1, size, size, generator=g), torch.randint(0, 4, (n_lab, size, size), generator=g))
    return lab, Batch(torch.rand(n_unl, 1, size, size, generator=g))


def test_the_network_variants_have_the_official_parameter_counts():
    """SSL4MIS net_factory('unet_urpc') and ('unet_cct') for 1 channel and 4 classes; the plain UNet's keys
    are unchanged by the options."""
    count = lambda net: sum(p.numel() for p in net.parameters())  # noqa: E731
    assert count(UNet(1, 4)) == 1_813_764
    assert count(UNet(1, 4, aux_heads=True)) == 1_831_060
    assert count(UNet(1, 4, aux_decoders=3)) == 3_713_664
    assert list(UNet(1, 4).state_dict()) == [k for k in UNet(1, 4, aux_heads=True).state_dict()
                                             if not k.startswith("aux_heads.")]


def test_the_consistency_weight_starts_at_the_first_iteration_for_every_ssl4mis_zoo_script():
    """0.1 sigmoid_rampup(iteration // 150, 200), with no start delay (unlike the Mean Teacher script)."""
    from ssbench.methods.mean_teacher import consistency_weight

    for it in (0, 149, 150, 15000, 29999):
        expected = 0.1 * sigmoid_rampup(it // 150, 200)
        assert consistency_weight(it, UAMTConfig()) == pytest.approx(expected)
        assert consistency_weight(it, ICTConfig()) == pytest.approx(expected)
        for cfg in (URPCConfig(), CCTConfig(), CPSConfig()):
            assert cfg.weight(it) == pytest.approx(expected)
    assert URPC.short_recipe(URPCConfig(), 600).rampup_step == 3


def test_ua_mt_threshold_rises_from_three_quarters_of_ln2_to_ln2_over_the_run():
    cfg = UAMTConfig()
    assert uncertainty_threshold(0, 30000, cfg) == pytest.approx((0.75 + 0.25 * math.exp(-5)) * math.log(2))
    assert uncertainty_threshold(15000, 30000, cfg) == pytest.approx((0.75 + 0.25 * math.exp(-1.25)) * math.log(2))
    assert uncertainty_threshold(30000, 30000, cfg) == pytest.approx(math.log(2))
    assert uncertainty_threshold(300, 600, cfg) == uncertainty_threshold(15000, 30000, cfg)  # over the run's length


def test_ua_mt_masked_mse_is_divided_by_twice_the_certain_pixels():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    unc = torch.rand(2, 1, 8, 8, generator=g)
    loss, mask = masked_consistency(s, t, unc, 0.5)
    dist = (s.softmax(1) - t.softmax(1)) ** 2
    keep = (unc < 0.5).float()
    assert 0 < keep.mean() < 1
    torch.testing.assert_close(loss, (dist * keep).sum() / (2 * keep.sum()))
    assert masked_consistency(s, t, unc, 0.0)[0] == 0  # nothing certain: no consistency, no NaN


def test_ua_mt_teacher_runs_eight_noisy_passes_with_clipped_noise():
    """T = 8 predictions per unlabeled slice (T/2 passes over the batch repeated twice) on inputs with
    N(0, 0.1^2) noise clipped to +-0.2, plus the teacher's own noisy pass."""
    torch.manual_seed(0)
    m = UAMT(UAMTConfig(), CTX)
    seen = []
    m.teacher.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach().clone()))
    lab, unl = _batches()
    m.train()
    m.training_step(lab, unl, StepInfo(100, 30000))
    assert [x.shape[0] for x in seen] == [4] + [8] * 4  # 1 + 4 passes: 8 noisy copies of each slice
    doubled = unl.image.repeat(2, 1, 1, 1)
    for x in seen[1:]:
        noise = x - doubled
        assert noise.abs().max() <= 0.2 + 1e-6 and noise.std() == pytest.approx(0.1, rel=0.3)
        assert (noise.abs() > 0.2 - 1e-6).any()  # clipping happens (N(0, 0.01) exceeds 0.2 in ~5% of pixels)
    assert not torch.equal(seen[1], seen[2])  # a new draw per pass


def test_urpc_consistency_matches_its_formula_and_the_unused_bottleneck_head_gets_no_gradient():
    g = torch.Generator().manual_seed(2)
    probs = [torch.randn(2, 4, 8, 8, generator=g).softmax(1) for _ in range(4)]
    mean = sum(probs) / 4
    expected = 0
    for p in probs:
        kl = (mean * (mean.log() - p.log())).sum(1, keepdim=True)
        w = torch.exp(-kl)
        expected = expected + ((mean - p) ** 2 * w).mean() / (w.mean() + 1e-8) + kl.mean()
    torch.testing.assert_close(rectified_consistency(probs), expected / 4)

    torch.manual_seed(0)
    m = URPC(URPCConfig(), CTX)
    lab, unl = _batches()
    m.train()
    out = m.training_step(lab, unl, StepInfo(3000, 30000))
    out["loss"].backward()
    assert m.net.aux_heads[0].weight.grad is None  # SSL4MIS's out_conv_dp4: built, never used
    assert all(h.weight.grad is not None for h in m.net.aux_heads[1:])
    with torch.no_grad():
        m.eval()
        outs = pyramid(m.net, unl.image, m.config, perturbed=False)
        assert all(o.shape == (4, 4, 32, 32) for o in outs)
        torch.testing.assert_close(outs[0], m.predict(unl.image))


def test_cct_auxiliary_decoders_see_perturbed_features():
    """With the main decoder's weights copied into the auxiliary ones, their outputs differ only through the
    perturbations: feature noise, dropout 0.3, feature dropout."""
    torch.manual_seed(0)
    m = CCT(CCTConfig(), CTX)
    for dec in m.net.aux_decoders:
        dec.up.load_state_dict(m.net.up.state_dict())
        dec.head.load_state_dict(m.net.head.state_dict())
    lab, unl = _batches()
    m.eval()  # BatchNorm statistics fixed; the perturbations act in any mode, as the original's
    with torch.no_grad():
        feats = m.net.encode(unl.image)
        main = m.net.decode(feats)
        for i in (1, 2, 3):
            torch.testing.assert_close(m.net.decode(feats, decoder=i), main)
        from ssbench.methods.cct import perturbed_outputs

        outs = perturbed_outputs(m.net, unl.image, m.config)
    torch.testing.assert_close(outs[0], main)
    assert all((o - main).abs().max() > 1e-4 for o in outs[1:])


def test_feature_perturbations():
    g = torch.Generator().manual_seed(3)
    x = torch.rand(3, 5, 6, 6, generator=g) + 0.1
    torch.manual_seed(0)
    y = perturb.feature_noise(x, 0.3)
    ratio = y / x - 1
    assert torch.allclose(ratio[0], ratio[1], atol=1e-5) and ratio.abs().max() <= 0.3 + 1e-5  # one map per batch
    torch.manual_seed(0)
    kept = perturb.feature_dropout(x) != 0
    att = x.mean(1, keepdim=True)
    frac = (att.flatten(1).max(1).values).view(-1, 1, 1, 1)
    lo, hi = (att < 0.7 * frac).expand_as(x), (att < 0.9 * frac).expand_as(x)
    assert torch.all(kept[lo]) and not torch.any(kept[~hi])  # positions below 0.7 max kept, above 0.9 dropped
    assert perturb.dropout(x, 0.3).eq(0).float().mean() == pytest.approx(0.3, abs=0.1)


def test_ict_mixes_pairs_with_beta_0_2_and_matches_the_mixed_teacher(monkeypatch):
    assert ICTConfig().alpha == 0.2
    torch.manual_seed(0)
    lam = mix_factors(20000, ICTConfig().alpha, "cpu").flatten().numpy()
    reference = np.random.default_rng(0).beta(0.2, 0.2, 20000).astype(np.float32)  # the script's NumPy draw
    assert stats.ks_2samp(lam, reference).pvalue > 1e-3
    assert stats.ks_2samp(lam, np.random.default_rng(0).beta(0.5, 0.5, 20000).astype(np.float32)).pvalue < 1e-6

    torch.manual_seed(0)
    m = ICT(ICTConfig(teacher_mode="eval"), CTX)
    with torch.no_grad():  # a confident teacher: mixing its softmaxes is far from mixing its logits
        m.teacher.head.weight.mul_(30), m.teacher.head.bias.mul_(30)
    lab, unl = _batches()
    fixed = torch.tensor([0.25, 0.9]).view(2, 1, 1, 1)
    m.train()
    monkeypatch.setattr(ict_module, "mix_factors", lambda n, alpha, device: fixed)
    torch.manual_seed(5)
    out = m.training_step(lab, unl, StepInfo(0, 30000))
    u0, u1 = unl.image[:2], unl.image[2:]
    torch.manual_seed(5)
    student = m.student(torch.cat([lab.image, u0 * (1 - fixed) + u1 * fixed]))
    with torch.no_grad():
        target = m.teacher(u0).softmax(1) * (1 - fixed) + m.teacher(u1).softmax(1) * fixed
    torch.testing.assert_close(out["loss_cons"], ((student[2:].softmax(1) - target) ** 2).mean().detach(),
                               rtol=1e-5, atol=0)


def test_cps_each_network_learns_from_the_others_argmax():
    torch.manual_seed(0)
    m = CPS(CPSConfig(), CTX)
    assert set(m.optimizer_params()) == {"model1", "model2"} and m.evaluated_model() == "model1"
    assert not torch.equal(m.model1.head.weight, m.model2.head.weight)  # two initialisations
    lab, unl = _batches()
    m.eval()  # deterministic networks, so that the hand computation sees the same outputs
    out = m.training_step(lab, unl, StepInfo(15000, 30000))
    x = torch.cat([lab.image, unl.image])
    with torch.no_grad():
        o1, o2 = m.model1(x), m.model2(x)
    w = 0.1 * sigmoid_rampup(100, 200)
    expected = (ce_dice_loss(o1[:2], lab.label) + w * F.cross_entropy(o1[2:], o2[2:].argmax(1))
                + ce_dice_loss(o2[:2], lab.label) + w * F.cross_entropy(o2[2:], o1[2:].argmax(1)))
    torch.testing.assert_close(out["loss"].detach(), expected)
    m2 = CPS(CPSConfig(evaluate="model2"), CTX)
    with torch.no_grad():
        m2.eval()
        torch.testing.assert_close(m2.predict(unl.image), m2.model2(unl.image))


ZOO = ["ua-mt", "urpc", "cct", "ict", "cps"]


@pytest.mark.slow
def test_each_method_runs_end_to_end_through_a_sweep_eval_and_table(cli, tiny_nnunet, tmp_path):
    """ssbench sweep (debug executor: every run in this process) of the five methods on the tiny nnU-Net-format
    dataset, ssbench sweep status, ssbench eval of a run, ssbench table over all."""
    from conftest import TINY_SETS

    out = tmp_path / "results"
    sets = [x for s in TINY_SETS for x in ("--set", s)]
    code, _, err = cli("sweep", "--methods", ",".join(ZOO), "--splits", "2", "--seeds", "1337", "--dataset",
                       "nnunet", "--data-root", tiny_nnunet, "--iters", "4", "--out", out, "--device", "cpu",
                       "--executor", "debug", "--gpus-per-job", "0", *sets)
    assert code == 0, err
    code, status, err = cli("sweep", "status", out)
    assert code == 0 and status.startswith(f"done {len(ZOO)} "), status + err
    runs = {m: out / "nnunet" / m / "2" / "seed1337" for m in ZOO}
    for method, run in runs.items():
        assert (run / "metrics_per_case.csv").is_file(), method
    assert json.loads((runs["cps"] / "run.json").read_text())["evaluated_model"] == "model1"
    code, _, err = cli("eval", runs["cps"], "--hd-units", "voxel")
    assert code == 0, err
    code, _, err = cli("table", "--results", out, "--out", tmp_path / "paper")
    assert code == 0, err
    main = (tmp_path / "paper" / "main_nnunet.md").read_text()
    for name in ("UA-MT", "URPC", "CCT", "ICT", "CPS"):
        assert name in main


def test_published_rows_name_their_source_and_map_to_registered_methods():
    from ssbench import registry
    from ssbench.report.gap import PUBLISHED_TO_OURS, read_published

    pub = read_published()
    rows = {(r.method, r.labeled, r.metric, r.selection): float(r.value) for r in pub.itertuples()}
    assert rows[("URPC", "3", "dice", "val")] == 55.87 and rows[("URPC", "7", "asd", "val")] == 1.53
    assert rows[("UA-MT", "7", "hd95", "val")] == 6.88
    assert rows[("UA-MT", "3", "dice", "last checkpoint (inferred)")] == 61.0
    assert rows[("CPS", "7", "dice", "last checkpoint (inferred)")] == 83.3
    ours = pub[pub.method.isin(["UA-MT", "URPC", "CPS"])]
    assert len(ours) == 20 and ours.source.str.startswith("reprinted").all()
    names = set(registry.names(registry.METHODS_GROUP))
    assert {PUBLISHED_TO_OURS[m] for m in ("UA-MT", "URPC", "CPS")} <= names


def test_every_registered_method_gets_its_own_colour_in_the_figures():
    from ssbench import registry
    from ssbench.report.figures import palette

    names = registry.names(registry.METHODS_GROUP)
    assert {"ua-mt", "urpc", "cct", "ict", "cps", "unimatch-v2"} <= set(names)
    colours = palette(names + [f"{n}@variant" for n in names[:3]])
    assert len(set(colours.values())) == len(colours)


def test_ict_refuses_an_unlabeled_batch_it_cannot_pair_before_anything_runs(tiny_nnunet, tmp_path):
    from conftest import tiny_request
    from ssbench.engine.plan import build_config
    from ssbench.errors import ConfigError

    with pytest.raises(ConfigError, match="train.batch_unlabeled=1: ICT"):
        build_config(tiny_request(tiny_nnunet, tmp_path, method="ict", sets=("train.batch_unlabeled=1",)))
    build_config(tiny_request(tiny_nnunet, tmp_path, method="ict", sets=("train.batch_unlabeled=3",)))


@pytest.mark.slow
def test_cps_runs_on_real_format_acdc_folders(tmp_path_factory, tmp_path, cli):
    """The raw ACDC challenge archive (written with nibabel, tests/helpers/formats.py): CPS, two networks and two
    optimizers, trains, selects model1 on val and scores the 40 test volumes in mm."""
    import pandas as pd

    from formats import write_acdc_raw
    from ssbench.datasets.acdc import ACDC

    split = ACDC.frozen_split("1")
    root = write_acdc_raw(tmp_path_factory.mktemp("acdc") / "raw",
                          sorted(split.labeled + split.unlabeled + split.val + split.test), shape_xyz=(32, 32, 3))
    out = tmp_path / "results"
    code, _, err = cli("run", "--method", "cps", "--data-root", root, "--split", "1", "--out", out, "--iters", "2",
                       "--device", "cpu", "--quiet", "--set", "data.train_size=32", "--set", "train.batch_labeled=2",
                       "--set", "train.batch_unlabeled=2", "--set", "train.val_every=2")
    assert code == 0, err
    run = out / "acdc" / "cps" / "1" / "seed1337"
    frame = pd.read_csv(run / "metrics_per_case.csv")
    assert len(frame) == 40 * 3 * 2 and (frame["hd_units"] == "mm").all()
    assert json.loads((run / "run.json").read_text())["optimizers"] == ["model1", "model2"]
