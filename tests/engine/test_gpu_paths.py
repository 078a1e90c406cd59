"""GPU paths proved on CPU: checkpoints that resume on another device than the one that wrote them (a stand-in
device, ``meta``, plays the accelerator)."""

import os

import pytest
import torch

from conftest import tiny_request
from runs import RUN, killed_at
from stand_in import step_on_stand_in_device as _step_on_stand_in_device


@pytest.mark.filterwarnings("ignore:for .*copying from a non-meta parameter")  # meta weights: a no-op copy
def test_a_checkpoint_resumes_on_another_device_than_the_one_that_wrote_it(tiny_nnunet, tmp_path):
    """A run checkpointed on the CPU resumes in a process whose model lives on another device. ``meta`` stands in
    for the accelerator: any state read onto it (the sampler's order, the RNG states) is unusable there, exactly
    as a CUDA tensor is for numpy and ``torch.set_rng_state``, so only a device-agnostic restore passes."""
    from ssbench.engine.plan import build_config, resolve_where_it_runs
    from ssbench.engine.run import build_method, load_inputs
    from ssbench.engine.runtime import make_runtime
    from ssbench.engine.train import make_optimizer, make_samplers, restore_training_state

    out = tmp_path / "results"
    killed_at("train:3", tiny_nnunet, out)  # SIGKILL after the checkpoint at iteration 2
    last = out / RUN.with_name(".seed1337.incomplete") / "checkpoints" / "last.pt"
    saved = torch.load(last, weights_only=True)

    cfg, method_cls, dataset = build_config(tiny_request(tiny_nnunet, out, resume=True))
    cfg = resolve_where_it_runs(cfg, dataset, torch.device("cpu"))  # as the interrupted run resolved it
    inputs = load_inputs(cfg, method_cls, dataset, dataset.split(cfg.data.split, cfg.data.split_seed), print)
    stand_in = torch.device("meta")
    runtime = make_runtime(stand_in, "off", False, augment_on_device=False)
    method = build_method(cfg, method_cls, dataset, torch.device("cpu"), inputs).to(stand_in)
    optimizer = make_optimizer(method, cfg.train, runtime)
    samplers = make_samplers(method_cls, cfg, inputs.pools)
    torch.manual_seed(12345)  # some other RNG state, which the restore must replace

    start, best, log = restore_training_state(last, cfg, method, optimizer, samplers, runtime)

    assert start == saved["iteration"] == 2 and [r["iteration"] for r in log] == [1, 2]
    assert torch.equal(torch.get_rng_state(), saved["rng"][0][0])
    for name, sampler in samplers.items():
        state = sampler.state_dict()
        assert state["pos"] == saved["samplers"][name]["pos"]
        assert torch.equal(state["order"], saved["samplers"][name]["order"])
    momenta = [s["momentum_buffer"] for s in optimizer.state.values()]
    assert momenta and all(m.device == stand_in for m in momenta)  # placed beside their parameters


UNET_METHODS = ["supervised", "mean-teacher", "unimatch", "fixmatch", "ua-mt", "urpc", "cct", "ict", "cps",
                "unimatch-v2"]
SETS = {"unimatch-v2": ("unimatch-v2.init=random",)}  # no DINOv2 weights here (a DINOv2 ViT, not a UNet)


@pytest.mark.parametrize("method", UNET_METHODS)
def test_the_training_step_never_waits_for_the_device(method, tiny_nnunet, tmp_path):
    """No host synchronisation in a UNet method's step: the data draw (weak augmentation and resize on the device),
    the strong views and CutMix, forward, backward, optimizer, EMA, loss sums."""
    rec = _step_on_stand_in_device(method, tiny_nnunet, tmp_path, sets=SETS.get(method, ()))
    assert not rec.events, "\n" + rec.report()


def test_the_recorder_sees_each_kind_of_host_synchronisation():
    """The recorder's own control: each way a step can wait for the device is recorded, on the stand-in device."""
    from ssbench.engine.hostsync import HostSyncRecorder

    m = torch.device("meta")
    x = torch.rand(4, 8, device=m)
    with HostSyncRecorder() as rec:
        torch.ones(3).to(m)  # a tensor built on the host, copied
        torch.tensor([1.0, 2.0], device=m)  # host data straight to the device
        torch.ones(3).to(m, non_blocking=True)  # async (from pinned memory on CUDA)
        float(x.sum())  # a device value read
        if (x > 0).any():  # ... and another
            pass
        x.cpu()  # a device-to-host copy
    kinds = [(e.kind, e.blocking) for e in rec.events]
    assert kinds == [("host-to-device copy", True), ("host-to-device copy", True), ("host-to-device copy", False),
                     ("device value read", True), ("device value read", True), ("device-to-host copy", True)]
    assert all(e.where.startswith("tests/engine/test_gpu_paths.py:") for e in rec.events), rec.report()
    assert len(rec.blocking) == 5


def test_train_compile_compiles_the_networks_in_place_and_keeps_the_checkpoint_format(tiny_nnunet, tmp_path):
    """train.compile=on: each network of the method is compiled in place (nn.Module.compile), block by block where
    it has BatchNorm: the state dict, and so every checkpoint, keeps its keys; nothing else is wrapped; a UniMatch
    step, which calls the network whole and in parts (encode/decode), trains through it. (The compiled speed is
    measured by benchmarks/train_step.py --compile, against eager in the same call.)"""
    from ssbench.engine.plan import build_config
    from ssbench.engine.run import build_method
    from ssbench.engine.train import compile_networks

    cfg, method_cls, dataset = build_config(tiny_request(tiny_nnunet, tmp_path, method="mean-teacher",
                                                         sets=("train.compile=on",)))
    assert cfg.train.compile == "on"
    method = build_method(cfg, method_cls, dataset, torch.device("cpu"))
    keys = list(method.state_dict())
    compiled = compile_networks(method)
    blocks = [m for m in method.modules() if any(isinstance(c, torch.nn.BatchNorm2d) for c in m.children())]
    assert compiled == blocks and len(blocks) == 2 * 9  # student and teacher: the 9 conv blocks of each UNet
    assert all(m._compiled_call_impl is not None for m in compiled)
    assert list(method.state_dict()) == keys


@pytest.mark.slow
def test_a_compiled_unimatch_step_trains(tiny_nnunet, tmp_path, monkeypatch):
    """UniMatch calls its UNet whole and in parts (encode/decode, the feature-perturbed pass) in one step: with the
    whole network compiled, backward failed ("modified by an inplace operation": the compiled BatchNorm's running
    statistics written back under the eager call's saved tensors). One engine step, compiled, changes the weights.
    (Compiled with the aot_eager backend: the same graph capture and write-back as inductor, without generating
    and building C++ kernels, which costs half a minute on a cold CPU cache.)"""
    compile_ = torch.nn.Module.compile
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: compile_(self, **{"backend": "aot_eager", **kw}))
    from ssbench.engine.plan import build_config
    from ssbench.engine.run import build_method, load_inputs
    from ssbench.engine.runtime import make_runtime
    from ssbench.engine.train import compile_networks, make_optimizer, make_samplers, train_step
    from ssbench.methods.api import StepInfo

    cfg, method_cls, dataset = build_config(tiny_request(tiny_nnunet, tmp_path, method="unimatch",
                                                         sets=("train.compile=on",)))
    inputs = load_inputs(cfg, method_cls, dataset, dataset.split(cfg.data.split, cfg.data.split_seed),
                         lambda *a: None)
    cpu = torch.device("cpu")
    runtime = make_runtime(cpu, "off", False, augment_on_device=True)
    method = build_method(cfg, method_cls, dataset, cpu, inputs)
    optimizer = make_optimizer(method, cfg.train, runtime)
    samplers = make_samplers(method_cls, cfg, inputs.pools, runtime)
    compile_networks(method)
    before = {k: v.clone() for k, v in method.state_dict().items()}
    train_step(method, method.training_step, optimizer, samplers, runtime, StepInfo(0, cfg.train.iters), cfg.train, {})
    assert any(not torch.equal(before[k], v) for k, v in method.state_dict().items())
