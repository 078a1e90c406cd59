"""SSS: PCSW on hand-made stacks, DFE equations, official checkpoints of models sam2 itself built, one training
step, and honest evaluation (prompts from the model, never from labels)."""

import inspect

import numpy as np
import pytest
import torch

from ssbench.errors import UserError
from ssbench.methods.sss.dfe import DFE, DFEBlock
from ssbench.methods.sss.pcsw import continuity, pcsw, window_lengths


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
    assert prompt.point == (8.5, 7.0)


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
    assert prompt.point == pytest.approx((xs.mean(), ys.mean()))
    empty = pcsw(_stack(h=20, w=30))
    assert empty.source == "empty" and empty.box == (0.0, 0.0, 29.0, 19.0) and empty.point == (14.5, 9.5)


def test_connectivity_switch_changes_the_decision():
    p = _stack(s=4, h=10, w=10)
    for z in range(4):  # a staircase: consecutive slices touch only along a diagonal
        p[z, z * 2 : z * 2 + 2, z * 2 : z * 2 + 2] = 0.9
    assert pcsw(p, connectivity=26).source == "window"
    assert pcsw(p, connectivity=6).source == "largest-slice"


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
    out = DFE(mode=mode)(feats, strong)
    assert [o.shape for o in out] == [f.shape for f in feats]
    if mode == "add":
        block = DFE(mode="add").blocks[0]
        zero = torch.zeros_like(strong[0])
        assert not torch.equal(block(feats[0], strong[0]), strong[0])
        assert block(zero, zero).shape == zero.shape


# --- SAM-2 and the method -------------------------------------------------------------------------------------

SMALL = dict(model="sam2.1_hiera_t", image_size=64, init="random", pcsw_refresh=2)


def _method(**kw):
    from ssbench.methods.api import MethodContext
    from ssbench.methods.sss import SSS
    from ssbench.methods.sss.method import SSSConfig

    torch.manual_seed(0)
    ctx = MethodContext(1, 4, 64, 10, torch.device("cpu"))
    return SSS(SSSConfig(**{**SMALL, **kw}), ctx)


@pytest.mark.slow
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


def test_random_init_is_loud():
    method = _method()
    assert method.warnings and "randomly initialised" in method.warnings[0]


def _batches(case_ids):
    from ssbench.methods.api import Batch

    g = torch.Generator().manual_seed(0)
    label = torch.zeros(2, 64, 64, dtype=torch.long)
    label[:, 20:40, 20:30] = 1
    label[:, 20:40, 32:44] = 3
    lab = Batch(torch.rand(2, 1, 64, 64, generator=g), label)
    unl = Batch(torch.rand(4, 1, 64, 64, generator=g), None, case_ids, [0, 1, 0, 1])
    return lab, unl


@pytest.mark.slow
@pytest.mark.parametrize("variant", [dict(conf_thresh=0.5), dict(teacher="released", dfe_mode="replace", pcsw=False),
                                     dict(dfe=False, point_prompt=True, conf_thresh=0.5)])
def test_one_training_step_changes_the_weights(variant):
    from ssbench.methods.api import StepInfo

    method = _method(**variant)
    volumes = {f"v{i}": np.random.default_rng(i).random((5, 64, 64)).astype(np.float32) for i in range(4)}
    method.attach_unlabeled_volumes(volumes)
    lab, unl = _batches(["v0", "v1", "v2", "v3"])
    named = {n: p for n, p in method.named_parameters() if p.ndim > 1}
    before = {n: p.clone() for n, p in named.items()}
    opt = torch.optim.SGD(method.trainable_parameters(), lr=1e-2)
    method.train()
    losses = method.training_step(lab, unl, StepInfo(0, 10))
    assert torch.isfinite(losses["loss"]) and {"loss_x", "loss_s1", "loss_s2"} <= set(losses)
    opt.zero_grad()
    losses["loss"].backward()
    opt.step()
    method.after_optimizer_step(StepInfo(0, 10))
    learned = {n for n, p in named.items() if p.grad is not None and p.grad.abs().sum() > 0}
    # the image encoder, the coarse head and (when on) DFE all learn; everything with a gradient moved
    for prefix in ("student.sam.image_encoder.", "student.coarse.") + (("dfe.",) if method.dfe else ()):
        group = {n for n in named if n.startswith(prefix)}
        assert group and group <= learned, sorted(group - learned)[:3]
    assert all(not torch.equal(before[n], named[n]) for n in learned)
    if method.teacher is not None:  # the EMA teacher moved towards the student and got no gradient
        assert all(p.grad is None for p in method.teacher.parameters())
    if method.config.pcsw:
        assert set(method.cache) == {"v0", "v1", "v2", "v3"}  # one prompt set per volume
        state = method.state_dict()
        fresh = _method(**variant)
        fresh.load_state_dict(state)
        assert set(fresh.cache) == set(method.cache)  # the prompt cache travels with the checkpoint


@pytest.mark.slow
def test_evaluation_prompts_come_from_the_model_only():
    method = _method()
    params = inspect.signature(method.predict_volume).parameters
    assert list(params) == ["slices", "batch"]  # no label can be passed in
    method.eval()
    out = method.predict_volume(torch.rand(5, 1, 64, 64))
    assert out.shape == (5, 4, 64, 64)
    torch.testing.assert_close(out.sum(1), torch.ones(5, 64, 64))
    resized = method.predict_volume(torch.rand(3, 1, 128, 128))  # any engine size: back to the input grid
    assert resized.shape == (3, 4, 128, 128)


def test_sam2_is_imported_only_by_sss():
    import subprocess
    import sys

    code = ("import sys, ssbench.cli, ssbench.engine.run, ssbench.methods.unimatch, ssbench.methods.sss; "
            "print('sam2' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


@pytest.mark.slow
def test_sss_end_to_end_run_and_reevaluation(tmp_path, acdc_phantom, cli):
    """A tiny SSS run through the engine (random init is allowed on the phantom, loudly), then `ssbench eval`."""
    import json

    import pandas as pd

    from ssbench.engine.run import RunRequest, execute

    sets = ("data.train_size=32", "sss.image_size=64", "train.val_every=1", "train.batch_labeled=1",
            "train.batch_unlabeled=1", "train.eval_batch=32")
    run = execute(RunRequest(method="sss", split="1", iters=1, sets=sets, out=str(tmp_path), device="cpu",
                             quiet=True))
    info = json.loads((run / "run.json").read_text())
    assert any("RANDOMLY INITIALISED" in w for w in info["warnings"])
    frame = pd.read_csv(run / "metrics_per_case.csv")
    assert len(frame) == 40 * 3 * 2
    assert run.parent.parent.name == "sss@image_size=64"  # set away from the recipe: its own folder
    code, _, err = cli("eval", run, "--hd-units", "voxel", "--device", "cpu")
    assert code == 0, err
    assert (run / "evals" / "worst-voxel" / "summary.json").is_file()


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
    assert crop.box(torch.tensor([0.0, 0.0, 5.0, 5.0]), size).tolist() == [0.0, 0.0, 63.0, 63.0]  # cropped away


@pytest.mark.slow
def test_point_prompts_at_test_time():
    for pcsw_on in (True, False):
        method = _method(point_prompt=True, pcsw=pcsw_on)
        method.eval()
        assert method.predict_volume(torch.rand(4, 1, 64, 64)).shape == (4, 4, 64, 64)
