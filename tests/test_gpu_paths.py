"""GPU paths proved on CPU: checkpoints that resume on another device than the one that wrote them (a stand-in
device, ``meta``, plays the accelerator)."""

import dataclasses

import pytest
import torch

from conftest import tiny_request
from test_crash import RUN, killed_at


@pytest.mark.filterwarnings("ignore:for .*copying from a non-meta parameter")  # meta weights: a no-op copy
def test_a_checkpoint_resumes_on_another_device_than_the_one_that_wrote_it(tiny_nnunet, tmp_path):
    """A run checkpointed on the CPU resumes in a process whose model lives on another device. ``meta`` stands in
    for the accelerator: any state read onto it (the sampler's order, the RNG states) is unusable there, exactly
    as a CUDA tensor is for numpy and ``torch.set_rng_state``, so only a device-agnostic restore passes."""
    from ssbench.engine.run import build_config, build_method, load_inputs, resolve_hd_units
    from ssbench.engine.runtime import make_runtime
    from ssbench.engine.train import make_optimizer, make_samplers, restore_training_state

    out = tmp_path / "results"
    killed_at("train:3", tiny_nnunet, out)  # SIGKILL after the checkpoint at iteration 2
    last = out / RUN.with_name(".seed1337.incomplete") / "checkpoints" / "last.pt"
    saved = torch.load(last, weights_only=True)

    cfg, method_cls, dataset = build_config(tiny_request(tiny_nnunet, out, resume=True))
    cfg = resolve_hd_units(cfg, dataset)
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, amp="off"))  # as the run resolved them
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
