"""SSS: PCSW on hand-made stacks, DFE equations, official checkpoints of models sam2 itself built, training steps,
the input protocol, and `ssbench eval` of an SSS run on non-synthetic data without any network. The sequence
mechanics (prompts, memory, absence) are in test_sss_sequence.py."""

import numpy as np
import pytest
import torch

from conftest import one_line
from ssbench.errors import UserError
from ssbench.methods.sss.dfe import DFE, DFEBlock
from ssbench.methods.sss.pcsw import component, continuity, largest_slice, pcsw, slice_boxes, window_lengths
from sss_parts import SMALL, batches as _batches, force_prompts as _force_prompts, method as _method
from sss_parts import volumes as _volumes

pytestmark = pytest.mark.usefixtures("sam2_once")  # SAM-2 built once per session (conftest)


# --- PCSW ---------------------------------------------------------------------------------------------------

def _stack(s=9, h=20, w=20):
    return np.zeros((s, h, w), np.float32)


def test_window_order():
    assert window_lengths(9) == [3, 4]  # middle of [3, 4] upward
    assert window_lengths(12) == [5, 6]  # [4, 6] -> 5, 6
    assert window_lengths(3) == [2, 3]  # [2, 3]
    assert window_lengths(2) == [2]  # no window longer than the stack


def test_continuity_score_and_connectivity():
    win = np.zeros((2, 6, 6), bool)
    win[0, 1:3, 1:3] = True  # 4 voxels
    win[1, 3:5, 3:5] = True  # 4 voxels, touching the first only diagonally across slices
    six = np.asarray([[[0, 0, 0], [0, 1, 0], [0, 0, 0]], [[0, 1, 0], [1, 1, 1], [0, 1, 0]],
                      [[0, 0, 0], [0, 1, 0], [0, 0, 0]]], bool)
    c6, comp6 = continuity(win, six)
    assert c6 == pytest.approx(0.5) and comp6.sum() == 4
    c26, comp26 = continuity(win, np.ones((3, 3, 3), bool))
    assert c26 == pytest.approx(1.0) and comp26.sum() == 8
    assert continuity(np.zeros((2, 3, 3), bool), six) == (0.0, None)


def test_first_continuous_window_wins_with_its_largest_slice():
    p = _stack()
    p[2:6, 5:10, 6:12] = 0.9  # a continuous object over slices 2..5
    p[4, 4:11, 5:14] = 0.9  # ... largest on slice 4
    p[0, 15:19, 15:19] = 0.9  # a small separate blob on slice 0
    prompt = pcsw(p)
    assert prompt.source == "window"
    # windows of 3 from slice 0: [0,3) holds the blob (16 voxels) and the object (2 slices x 30): C = 60/76 < 0.8;
    # [1,4) holds only the object -> the first hit
    assert prompt.window == (1, 4)
    assert prompt.slice_index in (2, 3)
    assert prompt.box == (6.0, 5.0, 11.0, 9.0)  # x_min, y_min, x_max, y_max of the component on that slice
    assert prompt.point == (8.0, 7.0)  # the structure's pixel nearest to the box centre (8.5, 7), first of a tie


def test_pcsw_point_lies_on_a_ring():
    """A myocardium-like ring: the box centre lies in the hole (the left ventricle); the point is on the ring."""
    p = _stack(s=4)
    yy, xx = np.mgrid[:20, :20]
    ring = ((yy - 10) ** 2 + (xx - 10) ** 2 <= 36) & ((yy - 10) ** 2 + (xx - 10) ** 2 >= 9)
    p[:, ring] = 0.9
    for prompt in (pcsw(p), pcsw(p, threshold=1.01)):  # a window hit and the largest-slice fallback
        x, y = prompt.point
        assert ring[int(y), int(x)] and prompt.point != (10.0, 10.0), prompt


def test_threshold_controls_the_hit():
    p = _stack()
    p[:, 2:6, 2:6] = 0.9  # continuous everywhere ...
    p[::2, 12:16, 12:16] = 0.9  # ... with a disconnected second object on every other slice
    assert pcsw(p, threshold=0.8).source == "largest-slice"  # C = 0.5..0.67 everywhere
    assert pcsw(p, threshold=0.5).source == "window"


def test_fallback_largest_slice_and_empty():
    p = _stack()
    # scattered, never continuous: isolated voxels on alternating slices
    rng = np.random.default_rng(0)
    for z in range(0, 9, 2):
        ys, xs = rng.integers(0, 20, 6), rng.integers(0, 20, 6)
        p[z, ys, xs] = 0.9
    p[4, 0:3, 0:5] = 0.9  # slice 4 has the largest raw area
    prompt = pcsw(p, threshold=1.01)
    assert prompt.source == "largest-slice" and prompt.slice_index == 4
    ys, xs = np.nonzero(p[4] > 0.5)
    assert prompt.box == (xs.min(), ys.min(), xs.max(), ys.max())
    nearest = np.argmin((xs - xs.mean()) ** 2 + (ys - ys.mean()) ** 2)  # the foreground pixel nearest the centroid
    assert prompt.point == (xs[nearest], ys[nearest])
    empty = pcsw(_stack(h=20, w=30))
    assert empty.source == "empty" and empty.box == (0.0, 0.0, 29.0, 19.0) and empty.point == (14.5, 9.5)


def test_connectivity_switch_changes_the_decision():
    p = _stack(s=4, h=10, w=10)
    for z in range(4):  # a staircase: consecutive slices touch only along a diagonal
        p[z, z * 2 : z * 2 + 2, z * 2 : z * 2 + 2] = 0.9
    assert pcsw(p, connectivity=26).source == "window"
    assert pcsw(p, connectivity=6).source == "largest-slice"


def test_component_is_the_whole_stack_extent_of_what_pcsw_found():
    p = _stack()
    p[1:6, 4:8, 4:8] = 0.9  # one object over slices 1..5
    p[7, 14:18, 14:18] = 0.9  # a separate blob
    prompt = pcsw(p)
    assert prompt.window is not None and prompt.window[1] - prompt.window[0] < 5  # the window sees part of it
    comp = component(p, prompt)
    assert set(slice_boxes(comp)) == {1, 2, 3, 4, 5}  # ... the component spans all of it, not the blob
    assert slice_boxes(comp)[3] == (4.0, 4.0, 7.0, 7.0)
    assert largest_slice(_stack()).source == "empty" and not component(_stack(), largest_slice(_stack())).any()


# --- DFE ----------------------------------------------------------------------------------------------------

def test_dfe_on_identical_views_has_no_dissimilarity_term():
    torch.manual_seed(0)
    block = DFEBlock(64, mode="replace")
    x = torch.randn(2, 64, 8, 8)
    adj, s = block.enhance(x, x)
    torch.testing.assert_close(s, torch.ones(2))
    f1 = block.align(block.proj(x))
    mlp = block.mlp(f1.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    torch.testing.assert_close(adj, mlp, atol=1e-5, rtol=1e-5)  # w MLP(F1) + (1 - w) MLP(F1) + 0


def test_dfe_equations_on_different_views():
    torch.manual_seed(1)
    block = DFEBlock(256, mode="replace")
    weak, strong = torch.randn(2, 256, 4, 4), torch.randn(2, 256, 4, 4)
    adj, s = block.enhance(weak, strong)
    f1, f2 = block.align(weak), block.align(strong)  # P is the identity at 256 channels
    s_ref = torch.nn.functional.cosine_similarity(f1.mean((2, 3)), f2.mean((2, 3)))
    w = torch.sigmoid(s_ref).view(2, 1, 1, 1)
    m = lambda f: block.mlp(f.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # noqa: E731
    expected = w * m(f1) + (1 - w) * m(f2) + (1 - s_ref).view(2, 1, 1, 1) * (f2 - f1)
    torch.testing.assert_close(s, s_ref)
    torch.testing.assert_close(adj, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", ["add", "replace"])
def test_dfe_shapes_at_every_scale(mode):
    size = 64
    feats = [torch.randn(2, 32, size // 4, size // 4), torch.randn(2, 64, size // 8, size // 8),
             torch.randn(2, 256, size // 16, size // 16)]
    strong = [f + 0.1 * torch.randn_like(f) for f in feats]
    dfe = DFE(mode=mode)
    out = dfe(feats, strong)
    assert [o.shape for o in out] == [f.shape for f in feats]
    for block, w, s, o in zip(dfe.blocks, feats, strong, out):
        adj = block.back(block.enhance(w, s)[0])  # F_adj, brought back to the level's width
        # add (the paper's figure): the strong features plus F_adj; replace (the released code): F_adj alone
        torch.testing.assert_close(o, s + adj if mode == "add" else adj)


# --- SAM-2 and the method -------------------------------------------------------------------------------------


def test_official_checkpoint_round_trip(tmp_path):
    from ssbench.methods.sss import sam2_net

    sam = sam2_net.build("sam2.1_hiera_t", 64, torch.device("cpu"))
    path = tmp_path / "sam2.1_hiera_tiny.pt"
    sam2_net.save_official(sam, path)
    assert set(torch.load(path, weights_only=True)) == {"model"}
    method = _method(checkpoint=str(path), init="pretrained")
    for key, value in sam.state_dict().items():
        torch.testing.assert_close(method.student.sam.state_dict()[key], value)
    assert not method.warnings
    # a checkpoint of another model is refused with the model and file named
    with pytest.raises(UserError, match=r"sss.checkpoint .*sam2.1_hiera_tiny.pt: does not fit model sam2.1_hiera_s"):
        _method(model="sam2.1_hiera_s", checkpoint=str(path), init="pretrained")
    bad = tmp_path / "bad.pt"
    torch.save({"weights": {}}, bad)
    with pytest.raises(UserError, match="no 'model' key"):
        _method(checkpoint=str(bad), init="pretrained")


def test_missing_pretrained_weights_offline_is_a_clear_error(tmp_path, monkeypatch):
    from ssbench.methods.sss import sam2_net

    def offline(url, dst, progress=True):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(UserError, match=r"cannot download .*sam2.1_hiera_tiny.pt.*put sam2.1_hiera_tiny.pt at"):
        _method(init="pretrained", cache_dir=str(tmp_path))
    assert not any(tmp_path.iterdir())
    assert sam2_net.MODELS["sam2_hiera_s"][1] == "sam2_hiera_small.pt"


def test_random_init_is_loud_and_input_size_is_checked():
    method = _method()
    assert method.warnings and "randomly initialised" in method.warnings[0]
    assert method.student.sam.image_size == 64  # SAM-2 is built at the run's data.train_size
    with pytest.raises(UserError, match="data.train_size 48: SSS needs a multiple of 32"):
        _method(size=48)


def test_input_protocol_is_sams_own():
    from ssbench.methods.sss import SSS

    assert SSS.data_overrides("published") == {"train_size": 1024, "train_resize": "bilinear",
                                               "inference_resize": "bilinear"}
    assert SSS.data_overrides("cpu-small")["train_size"] == 96
    from ssbench.methods.supervised import Supervised

    assert Supervised.data_overrides("published") == {}  # the UNet methods keep 256 / order 0


@pytest.mark.parametrize("variant", [
    dict(conf_thresh=0.5),
    pytest.param(dict(teacher="released", dfe_mode="replace", pcsw=False), marks=pytest.mark.slow),
    pytest.param(dict(dfe=False, point_prompt=True, conf_thresh=0.5), marks=pytest.mark.slow),
    pytest.param(dict(memory=False, cutmix="ignore-pasted", cutmix_p=1.0, conf_thresh=0.5), marks=pytest.mark.slow),
])
def test_one_training_step_changes_the_weights(variant):
    from ssbench.methods.api import StepInfo

    method = _method(pcsw_refresh=1000, **variant)
    _volumes(method)
    _force_prompts(method)
    with torch.no_grad():  # the object-score heads say "present": masks are decoded and supervised
        for net in filter(None, (method.student, method.teacher)):
            net.sam.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.fill_(5.0)
    lab, unl = _batches()
    named = {n: p for n, p in method.named_parameters() if p.ndim > 1}
    before = {n: p.clone() for n, p in named.items()}
    opt = torch.optim.SGD(method.trainable_parameters(), lr=1e-2)
    method.train()
    losses = method.training_step(lab, unl, StepInfo(0, 10))
    assert torch.isfinite(losses["loss"])
    assert {"loss_x", "loss_mask", "loss_iou", "loss_presence", "loss_coarse", "loss_s1", "loss_s2"} <= set(losses)
    assert {f"u_{what}_c{c}" for what in ("slots", "valid", "fg") for c in (1, 2, 3)} <= set(losses)
    assert [float(losses[f"u_slots_c{c}"]) for c in (1, 2, 3)] == [2.0, 2.0, 2.0]  # 2 slices, every class prompted
    assert losses["loss_s1"] > 0 and losses["loss_mask"] > 0  # both branches are supervised
    opt.zero_grad()
    losses["loss"].backward()
    opt.step()
    method.after_optimizer_step(StepInfo(0, 10))
    learned = {n for n, p in named.items() if p.grad is not None and p.grad.abs().sum() > 0}
    groups = ["student.sam.image_encoder.", "student.coarse.", "student.sam.sam_mask_decoder."]
    groups += ["dfe."] if method.dfe else []
    groups += ["student.sam.memory_attention."] if method.config.memory else []
    for prefix in groups:
        group = {n for n in named if n.startswith(prefix)}
        assert group and group & learned, prefix
    if not method.config.memory:  # single slices: SAM-2's memory is not used, so not trained
        assert not {n for n in learned if n.startswith("student.sam.memory_attention.")}
    # everything with a gradient moved (the memory fuser's layer-scaled convs start at 1e-6: their updates are
    # below float32 resolution on the first step)
    assert all(not torch.equal(before[n], named[n]) for n in learned if named[n].grad.abs().max() > 1e-6)
    if method.teacher is not None:  # the EMA teacher got no gradient
        assert all(p.grad is None for p in method.teacher.parameters())


def test_unlabeled_slices_without_the_structure_get_no_loss():
    """The sequence found every class absent on the unlabeled slices: no pseudo-label, no unlabeled loss."""
    from ssbench.methods.api import StepInfo

    method = _method(pcsw_refresh=1000)
    _volumes(method)
    _force_prompts(method, present=False)
    lab, unl = _batches()
    method.train()
    losses = method.training_step(lab, unl, StepInfo(0, 10))
    assert losses["loss_s1"] == 0 and losses["loss_s2"] == 0 and losses["conf_ratio"] == 0
    assert all(losses[f"u_slots_c{c}"] == 0 and losses[f"u_fg_c{c}"] == 0 for c in (1, 2, 3))  # inactive, visibly


def test_activity_cannot_read_high_when_no_foreground_is_confident():
    """The teacher confidently says background around an unconfident foreground: nothing of the structure is
    taught, and conf_ratio says 0 (the fraction of all confident pixels, its old definition, read ~0.9 here)."""
    from ssbench.methods.sss.consistency import activity

    n, k, s = 2, 3, 16
    probs = torch.full((n * k, s, s), 0.01)  # background, confident
    probs[:, 4:8, 4:8] = 0.7  # foreground (pseudo-label 1), not confident at 0.95
    pseudo, pixels = probs > 0.5, torch.maximum(probs, 1 - probs) >= 0.95
    slots = torch.tensor([True, False, False, True, True, False])  # image 0: class 1; image 1: classes 1, 2
    there, presences = torch.ones(n * k, dtype=torch.bool), slots.clone()
    out = activity(pseudo, pixels, there, presences, slots, n, k)
    assert pixels[slots].float().mean() > 0.9  # what conf_ratio used to report
    assert float(out["conf_ratio"]) == 0 and all(float(out[f"u_fg_c{c}"]) == 0 for c in (1, 2, 3))
    assert [float(out[f"u_slots_c{c}"]) for c in (1, 2, 3)] == [2.0, 1.0, 0.0]
    assert [float(out[f"u_valid_c{c}"]) for c in (1, 2, 3)] == [1.0, 1.0, 0.0]
    probs[:, 4:8, 4:8] = 0.99  # now confident: taught, and said so
    probs[4, 8:12, 4:8] = 0.99  # image 1, class 2: twice the foreground
    pseudo, pixels = probs > 0.5, torch.maximum(probs, 1 - probs) >= 0.95
    out = activity(pseudo, pixels, there, presences, slots, n, k)
    assert float(out["conf_ratio"]) == 1 and float(out["u_fg_c1"]) == pytest.approx(16 / 256)
    assert float(out["u_fg_c2"]) == pytest.approx(32 / 256) and float(out["u_fg_c3"]) == 0  # per class


def test_predict_treats_a_batch_as_separate_slices():
    """The Method API's predict takes slices that need not be one volume: each is decoded as its own; a volume's
    slices go through predict_volume."""
    method = _method()
    with torch.no_grad():
        method.student.sam.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.fill_(20.0)
        method.student.coarse.fuse[-1].bias.copy_(torch.tensor([-5.0, 5.0, -5.0, -5.0]))  # class 1 everywhere
    method.eval()
    x = torch.rand(3, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    together = method.predict(x)
    for i in range(3):
        torch.testing.assert_close(together[i : i + 1], method.predict_volume(x[i : i + 1]))
    assert not torch.equal(together, method.predict_volume(x))  # a volume is propagated through memory


def test_video_predictor_postprocessing_is_a_recorded_option():
    """sss.postprocess (on: SAM-2's video predictor, as MedSAM-2 builds it): the stability fallback in the mask
    decoder and holes up to 8 low-resolution pixels filled (8-connected background components, as SAM-2's kernel)."""
    from ssbench.methods.sss.sam2_net import fill_holes

    on, off = _method(), _method(postprocess=False)
    assert on.student.sam.sam_mask_decoder.dynamic_multimask_via_stability and on.fill_hole_area == 8
    assert not off.student.sam.sam_mask_decoder.dynamic_multimask_via_stability and off.fill_hole_area == 0
    logits = torch.full((1, 1, 12, 12), 5.0)
    logits[0, 0, 6:8, 1:3] = -1.0  # a hole of 4 pixels: filled
    logits[0, 0, 8:11, 6:9] = -1.0  # a hole of 9 pixels: kept
    logits[0, 0, 0:3, 0:6] = -1.0  # a background region of 18 pixels ...
    logits[0, 0, 3, 6] = -1.0  # ... and a pixel touching it diagonally: 8-connected to it, so not a hole
    filled = fill_holes(logits, 8)
    assert (filled[0, 0, 6:8, 1:3] == 0.1).all() and (filled[0, 0, 8:11, 6:9] == -1.0).all()
    assert filled[0, 0, 3, 6] == -1.0 and (filled > 0).sum() == 144 - 9 - 18 - 1
    assert torch.equal(fill_holes(torch.full((1, 1, 4, 4), -1024.0), 8), torch.full((1, 1, 4, 4), -1024.0))


def test_point_prompts_in_training_lie_on_the_structure():
    """point_prompt: the labeled clip's point is on its ground truth; the unlabeled slice's point is the one its
    sequence gave, moved through the weak crop; without point_prompt no positive point reaches SAM-2."""
    from ssbench.methods.api import StepInfo

    seen = []
    for point_prompt in (True, False):
        method = _method(pcsw_refresh=1000, point_prompt=point_prompt)
        _volumes(method)
        _force_prompts(method)
        hook = method.student.sam.sam_prompt_encoder.register_forward_pre_hook(
            lambda m, a, kw: seen.append((point_prompt, kw["points"][0].clone(), kw["points"][1].clone())),
            with_kwargs=True)
        lab, unl = _batches()
        method.train()
        torch.manual_seed(5)
        clip = method._labeled_clips(lab)
        method.training_step(lab, unl, StepInfo(0, 10))
        hook.remove()
        if point_prompt:
            for i in range(2):
                for c in (1, 3):  # present on the clip's first slice
                    x, y = clip.points[i, c - 1].long().tolist()
                    if (clip.labels[i, 0] == c).any():
                        assert clip.labels[i, 0, y, x] == c
    with_points = [labels for on, _, labels in seen if on and (labels >= 0).any()]
    without = [labels for on, _, labels in seen if not on and (labels >= 0).any()]
    assert with_points and all(labels[:, 2].eq(1).all() for labels in with_points)
    assert without and all(labels.shape[1] == 2 and not labels.eq(1).any() for labels in without)


def test_sam2_is_imported_only_by_sss():
    import subprocess
    import sys

    code = ("import sys, ssbench.cli, ssbench.engine.run, ssbench.methods.unimatch, ssbench.methods.sss; "
            "print('sam2' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_pseudo_label_prompts_travel_with_the_checkpoint():
    method = _method(pcsw_refresh=1000)
    _volumes(method)
    _force_prompts(method)
    method.cache["v1"][0].present[2, 1] = False
    fresh = _method()
    fresh.load_state_dict(method.state_dict())
    assert set(fresh.cache) == set(method.cache)
    for cid, (entry, stamp) in method.cache.items():
        got, got_stamp = fresh.cache[cid]
        assert got_stamp == stamp and torch.equal(got.boxes, entry.boxes) and torch.equal(got.present, entry.present)


def test_unlabeled_volume_prompts_from_native_slices_of_any_shape():
    """The sequence of an unlabeled volume is computed at the input size from its native slices, whatever their
    shape (a native width equal to the input size with another height once crashed SAM-2's encoder)."""
    method = _method()
    method.attach_unlabeled_volumes({"v": np.random.default_rng(0).random((5, 80, 64)).astype(np.float32)})
    prompts = method._slice_prompts("v", 0, torch.device("cpu"))
    assert prompts.boxes.shape == (5, 3, 4) and prompts.present.shape == (5, 3)
    assert method.cache["v"][1] == 0 and method._slice_prompts("v", 1, torch.device("cpu")) is prompts  # cached


@pytest.mark.slow
def test_sss_run_on_real_format_data_and_offline_reevaluation(tmp_path, bhsd_phantom, cli, monkeypatch):
    """An SSS run on data given by --data-root (data.synthetic false: the published recipe and input protocol)
    whose pretrained checkpoint is downloaded by the run: config.yaml records the downloaded file's SHA-256. Then
    `ssbench eval` with the network gone and no SAM-2 checkpoint anywhere: it rebuilds SSS from the run's own
    checkpoint and reproduces the run's per-case metrics."""
    import shutil

    import pandas as pd
    import yaml

    from ssbench.engine.plan import RunRequest
    from ssbench.engine.run import execute
    from ssbench.methods.sss import sam2_net

    official = tmp_path / "official.pt"
    sam2_net.save_official(sam2_net.build("sam2.1_hiera_t", 64, torch.device("cpu")), official)
    data = shutil.copytree(bhsd_phantom, tmp_path / "bhsd")
    (data / "PHANTOM.json").unlink()  # not marked as ssbench's phantom: read as real data
    bhsd_phantom = data
    monkeypatch.setenv("SSBENCH_CACHE", str(tmp_path / "cache"))  # no checkpoint there: the run downloads it
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda url, dst, progress=True: shutil.copy(official, dst))
    sets = ("sss.model=sam2.1_hiera_t", "data.train_size=64", "train.batch_labeled=1", "train.batch_unlabeled=1",
            "train.eval_batch=32", "sss.clip_length=3")
    run = execute(RunRequest(method="sss", dataset="bhsd", data_root=str(bhsd_phantom), split="10%", iters=1,
                             sets=sets, out=str(tmp_path), device="cpu", quiet=True))
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["data"]["synthetic"] is False and cfg["train"]["recipe"] == "published"
    assert cfg["data"]["train_resize"] == "bilinear" and cfg["data"]["inference_resize"] == "bilinear"
    assert "image_size" not in cfg["sss"] and cfg["sss"]["memory"] is True
    assert cfg["sss"]["init"] == "pretrained" and cfg["sss"]["checkpoint_sha256"] == sam2_net.checkpoint_sha256(official)
    assert run.parent.parent.name == "sss@model=sam2.1_hiera_t,clip_length=3"  # the hash names no folder
    frame = pd.read_csv(run / "metrics_per_case.csv")
    assert len(frame) == 20 * 5 * 2  # test volumes x classes x checkpoints
    log = pd.read_csv(run / "train_log.csv")
    assert {"conf_ratio", "u_slots_c1", "u_valid_c5", "u_fg_c3", "loss_iou"} <= set(log.columns)
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: (_ for _ in ()).throw(OSError("offline")))
    shutil.rmtree(tmp_path / "cache")
    code, _, err = cli("eval", run, "--hd-units", "voxel", "--device", "cpu")
    assert code == 0, err
    again = pd.read_csv(run / "evals" / "worst-voxel" / "metrics_per_case.csv")
    assert len(again) == len(frame)
    key = ["checkpoint", "case_id", "class"]
    merged = frame.merge(again, on=key, suffixes=("", "_eval"))
    bad = merged[merged["dice"].ne(merged["dice_eval"]) & ~(merged["dice"].isna() & merged["dice_eval"].isna())]
    assert bad.empty, bad.head(8).to_string()  # the same predictions, rebuilt offline


def _sss_config(*sets):
    from ssbench.engine.plan import RunRequest, build_config, run_dir_for

    cfg, _, _ = build_config(RunRequest(method="sss", sets=sets))
    return cfg, run_dir_for(cfg, "results")


def test_a_random_fallback_is_recorded_as_random(acdc_phantom, tmp_path, monkeypatch):
    """On the embedded phantom a missing checkpoint falls back to random weights: the config says so, with its
    own hash and folder; with the checkpoint in the cache the run is pretrained and records the file's SHA-256."""
    import hashlib

    monkeypatch.setenv("SSBENCH_CACHE", str(tmp_path))
    (tmp_path / acdc_phantom.name).symlink_to(acdc_phantom)  # the same phantom, in a cache without SAM-2 weights
    fallback, folder = _sss_config()
    assert fallback.method_config.init == "random" and fallback.method_config.checkpoint_sha256 is None
    assert folder.parent.parent.name == "sss@init=random"
    assert fallback.to_dict()["sss"]["init"] == "random"
    explicit, same = _sss_config("sss.init=random")  # the same training as asking for random weights
    assert explicit.hash() == fallback.hash() and same == folder
    ckpt = tmp_path / "sam2" / "sam2.1_hiera_tiny.pt"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"stand-in for the official file")
    pretrained, plain = _sss_config()
    sha = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert pretrained.method_config.init == "pretrained" and pretrained.method_config.checkpoint_sha256 == sha
    assert plain.parent.parent.name == "sss" and pretrained.hash() != fallback.hash()
    assert pretrained.to_dict()["sss"]["checkpoint_sha256"] == sha
    with pytest.raises(UserError, match=f"sss.checkpoint_sha256 abc: the checkpoint .*has SHA-256 {sha}"):
        _sss_config("sss.checkpoint_sha256=abc")
    ckpt.write_bytes(b"another file")  # another checkpoint: another hash, the same folder
    other, again = _sss_config()
    assert other.hash() != pretrained.hash() and again == plain


def test_fallback_warning_names_the_missing_checkpoint(tmp_path):
    method = _method(cache_dir=str(tmp_path), synthetic=True)
    assert "randomly initialised (sss.init=random)" in method.warnings[0]
    assert str(tmp_path / "sam2.1_hiera_tiny.pt") in method.warnings[0]


def test_settings_sss_does_not_use_are_not_recorded_and_refused(acdc_phantom, cli):
    """SSS augments its own inputs and trains with AdamW: train.augment and train.momentum do not act, so its
    config leaves them out (and --set refuses them); a method that uses them records them."""
    from ssbench.engine.plan import RunRequest, build_config

    cfg, _ = _sss_config()
    assert "augment" not in cfg.to_dict()["train"] and "momentum" not in cfg.to_dict()["train"]
    sup, _, _ = build_config(RunRequest(method="supervised"))
    assert {"augment", "momentum"} <= set(sup.to_dict()["train"])
    code, _, err = cli("config", "--method", "sss", "--set", "train.momentum=0.5")
    one_line(code, err, "--set train.momentum", "does not act in a sss run")
    code, _, err = cli("config", "--method", "sss", "--set", "train.augment=none")
    one_line(code, err, "--set train.augment", "does not act in a sss run")
    code, out, err = cli("config", "--method", "sss", "--set", "train.optimizer=sgd", "--set", "train.momentum=0.5")
    assert code == 0 and "momentum: 0.5" in out and "augment" not in out, err


def test_an_untrained_coarse_head_is_refused(acdc_phantom, cli):
    code, _, err = cli("config", "--method", "sss", "--set", "sss.train_coarse_head=false")
    one_line(code, err, "sss.train_coarse_head=false", "PCSW prompts from the coarse head")


@pytest.mark.parametrize("flip", [False, True])
def test_prompt_boxes_follow_the_weak_crop(flip):
    """A box computed on the un-augmented slice frames the same pixels after crop, resize and flip."""
    from ssbench.methods.sss.geometry import Crop, mask_box

    size = 64
    mask = torch.zeros(1, size, size)
    mask[0, 20:36, 24:44] = 1
    box = mask_box(mask[0] > 0)
    crop = Crop(y0=8, x0=12, h=48, w=48, flip=flip)
    moved = crop.image(mask, size, mode="nearest")[0] > 0
    expected = mask_box(moved)
    torch.testing.assert_close(crop.box(box, size), expected, atol=2.0, rtol=0)
    point = torch.tensor([30.0, 25.0])  # x, y inside the mask
    p = crop.point(point, size).round().long()
    assert moved[p[1], p[0]]
    assert crop.box(torch.tensor([0.0, 0.0, 5.0, 5.0]), size) is None  # cropped away: the structure is not there


def test_sss_training_step_waits_for_the_device_only_where_listed(tiny_nnunet, tmp_path):
    """SSS's step on the stand-in device (tests/engine/test_gpu_paths.py): labeled clips resized, cropped and prompted on
    the device, the unlabeled prompts cached there, losses as weighted means. What remains is SAM-2's own memory
    read, which builds the object pointers' temporal positions on the host (sam2_base.py ``torch.tensor(pos_list)
    .to(device, non_blocking=True)``) once per propagated slice of a labeled clip: clip length - 1 per step. The
    prompts' re-propagation (every sss.pcsw_refresh iterations per unlabeled volume) is outside this record: the
    cache is filled first."""
    from ssbench.methods.sss.sequence import SlicePrompts
    from stand_in import step_on_stand_in_device as _step_on_stand_in_device

    def fill_cache(method):
        for cid, vol in method.unlabeled.items():
            d, device = vol.shape[0], method.student.sam.maskmem_tpos_enc.device
            boxes = torch.tensor([[4.0, 4, 20, 20], [8, 8, 24, 24], [2, 12, 14, 28]]).expand(d, 3, 4).to(device)
            method.cache[cid] = (SlicePrompts(boxes, boxes[..., :2], torch.ones(d, 3, dtype=torch.bool).to(device)), 0)

    sets = ("sss.model=sam2.1_hiera_t", "sss.init=random", "sss.clip_length=3", "sss.pcsw_refresh=1000")
    rec = _step_on_stand_in_device("sss", tiny_nnunet, tmp_path, steps=2, sets=sets, setup=fill_cache)
    expected = "host-to-device copy (aten._to_copy.default, non_blocking)"
    assert [str(e).split(" at ")[0] for e in rec.events] == [expected] * 2 * (3 - 1), "\n" + rec.report()


def test_unlabeled_mask_loss_has_no_dice_against_an_empty_confident_target():
    """An all-background confident pseudo-label teaches BCE only (soft Dice against it would read ~1, saturated);
    BCE is summed over the confident pixels and divided by every counted pixel (UniMatch V2's normalisation)."""
    import torch.nn.functional as F

    from ssbench.methods.sss.losses import unlabeled_mask_losses

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 1, 16, 16, generator=g) - 2
    target = torch.zeros(2, 16, 16, dtype=torch.bool)
    target[1, 4:10, 4:10] = True
    confident = torch.ones_like(target)
    confident[:, :, :8] = False  # half of each image unconfident
    confident[1, 4:10, 4:10] = True  # image 1's foreground confident
    counted = torch.ones_like(target)
    loss, active = unlabeled_mask_losses(logits, target, confident, counted)
    assert active.tolist() == [False, True]
    bce = F.binary_cross_entropy_with_logits(logits[:, 0], target.float(), reduction="none")
    expected0 = float((bce[0] * confident[0]).sum() / 256)  # over the counted pixels, not the confident ones
    assert float(loss[0, 0]) == pytest.approx(expected0, rel=1e-5)  # BCE only: no Dice term
    assert float(loss[1, 0]) > float((bce[1] * confident[1]).sum() / 256) + 0.5  # Dice acts on a real target
    counted[:, :4] = False  # ignored (pasted) pixels leave the denominator
    loss, _ = unlabeled_mask_losses(logits, target, confident & counted, counted)
    assert float(loss[0, 0]) == pytest.approx(float((bce[0] * (confident & counted)[0]).sum() / 192), rel=1e-5)


def test_the_log_tells_an_inactive_dice_from_a_saturated_one():
    """Every slot prompted, no confident foreground: the step says the Dice term is inactive (u_dice_s1 = 0) beside
    the loss, so a small or large loss_s1 is read against what acted (the loss itself: the test above)."""
    from ssbench.methods.api import StepInfo

    method = _method(pcsw_refresh=1000)
    _volumes(method)
    _force_prompts(method)
    with torch.no_grad():
        for net in filter(None, (method.student, method.teacher)):
            net.sam.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.fill_(5.0)
    lab, unl = _batches()
    method.train()
    losses = method.training_step(lab, unl, StepInfo(0, 10))
    assert float(losses["u_dice_s1"]) == 0 and float(losses["u_dice_s2"]) == 0
    assert all(float(losses[f"u_fg_c{c}"]) == 0 for c in (1, 2, 3))
    assert float(losses["loss_s1"]) > 0  # the branch acted (BCE and presence)


def test_frozen_encoders_and_per_module_learning_rates():
    """sss.train_image_encoder / train_prompt_encoder = false: frozen (no gradient, not in the optimizer), the
    decoder's projections of the high-resolution levels still trained; the memory modules and the mask decoder get
    their own rate through the engine's parameter groups (MedSAM-2: memory 1e-8 at lr 1e-4)."""
    from types import SimpleNamespace

    from ssbench.engine.train import make_optimizer
    from ssbench.methods.api import StepInfo

    method = _method(pcsw_refresh=1000, train_image_encoder=False, train_prompt_encoder=False,
                     lr_scale_memory=1e-4, lr_scale_decoder=2.0)
    _volumes(method)
    _force_prompts(method)
    lab, unl = _batches()
    method.train()
    method.training_step(lab, unl, StepInfo(0, 10))["loss"].backward()
    sam = method.student.sam
    assert all(p.grad is None for p in sam.image_encoder.parameters())
    assert all(p.grad is None for p in sam.sam_prompt_encoder.parameters())
    assert sam.sam_mask_decoder.conv_s0.weight.grad is not None  # a decoder part, applied after the encoder
    t = SimpleNamespace(optimizer="adamw", lr=1e-4, weight_decay=0.0)
    opt = make_optimizer(method, t, SimpleNamespace(device=torch.device("cpu")))
    rates = {}
    for g in opt.param_groups:
        for p in g["params"]:
            rates[id(p)] = g["lr"]
    assert id(sam.image_encoder.trunk.patch_embed.proj.weight) not in rates
    assert rates[id(sam.memory_attention.layers[0].self_attn.q_proj.weight)] == pytest.approx(1e-8)
    assert rates[id(sam.obj_ptr_proj.layers[0].weight)] == pytest.approx(1e-8)
    assert rates[id(sam.sam_mask_decoder.conv_s0.weight)] == pytest.approx(2e-4)
    assert rates[id(method.student.coarse.fuse[0].weight)] == pytest.approx(1e-4)


def test_activation_checkpointing_gives_the_same_gradients():
    """sss.activation_checkpointing = encoder recomputes each encode in backward: the same loss and gradients."""
    grads = []
    for mode in ("off", "encoder"):
        method = _method(activation_checkpointing=mode)
        method.train()
        x = torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(0))
        f = method.student.encode(x)
        (sum(m.square().mean() for m in f.maps)).backward()
        grads.append(method.student.sam.image_encoder.trunk.patch_embed.proj.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])


def test_compile_is_refused_for_sss(cli):
    """SSS never calls its networks' __call__: train.compile=on would compile nothing that runs, so it is refused."""
    code, _, err = cli("config", "--method", "sss", "--set", "train.compile=on")
    one_line(code, err, "train.compile=on", "sss")
