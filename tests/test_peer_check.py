"""The peer check (benchmarks/peer_check.py) must be able to fail: its comparisons run here against stand-ins that
differ from ssbench in known ways (the official code itself is not available offline; the check's output against
it is in the issue notes and reproducible with the command in the README)."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ssbench.methods.strong import cutmix_box
from ssbench.methods.unet import UNet

SPEC = importlib.util.spec_from_file_location("peer_check", Path(__file__).parents[1] / "benchmarks" / "peer_check.py")
peer = importlib.util.module_from_spec(SPEC)
sys.modules["peer_check"] = peer  # dataclasses look their module up there
SPEC.loader.exec_module(peer)


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

    assert all(i.ok for i in peer.check_cutmix(Same, 3000, size=64))
    verdicts = {i.name: i.ok for i in peer.check_cutmix(Smaller, 3000, size=64)}
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
    exec(compile(peer._statements_between(fn, "a", "b"), "x", "exec"), ns)
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
    assert all(i.ok for i in peer.check_unet_variants(_variants()))
    verdicts = {i.name: i.ok for i in peer.check_unet_variants(_variants(noise_range=0.5))}
    assert not verdicts["SSL4MIS UNet_URPC: train outputs with their perturbations, same draws"]
    assert verdicts["SSL4MIS UNet_URPC: eval outputs"] and verdicts["SSL4MIS UNet_CCT: train outputs with their "
                                                                    "perturbations, same draws"]
