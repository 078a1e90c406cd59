"""A method's training step on the ``meta`` stand-in device, under HostSyncRecorder."""

import os

import torch

from conftest import tiny_request


def step_on_stand_in_device(method_name, tiny_nnunet, tmp_path, steps=2, sets=(), setup=None):
    """``steps`` engine training steps of ``method_name`` (tiny run, data on the device) on the ``meta`` stand-in
    device, recorded by ``HostSyncRecorder``; ``setup(method)`` runs before the recording."""
    from ssbench.engine.hostsync import HostSyncRecorder
    from ssbench.engine.plan import build_config
    from ssbench.engine.run import build_method, load_inputs
    from ssbench.engine.runtime import make_runtime
    from ssbench.engine.train import make_optimizer, make_samplers, train_step
    from ssbench.methods.api import StepInfo

    cfg, method_cls, dataset = build_config(tiny_request(tiny_nnunet, tmp_path, method=method_name, sets=sets))
    inputs = load_inputs(cfg, method_cls, dataset, dataset.split(cfg.data.split, cfg.data.split_seed),
                         lambda *a: None)
    device = torch.device(os.environ.get("SSBENCH_HOSTSYNC_DEVICE", "meta"))  # benchmarks/gpu_check.sh: cuda
    runtime = make_runtime(device, "off", False, augment_on_device=True)
    method = build_method(cfg, method_cls, dataset, torch.device("cpu"), inputs).to(device)
    optimizer = make_optimizer(method, cfg.train, runtime)
    samplers = make_samplers(method_cls, cfg, inputs.pools, runtime)
    if setup is not None:
        setup(method)
    sums = {}
    with HostSyncRecorder() as rec:
        for it in range(steps):
            train_step(method, method.training_step, optimizer, samplers, runtime, StepInfo(it, cfg.train.iters),
                       cfg.train, sums)
    assert sums  # the losses, summed where they were computed
    return rec
