"""Small SSS methods, volumes, batches and prompts for the SSS tests."""

import numpy as np
import torch


SMALL = dict(model="sam2.1_hiera_t", init="random", pcsw_refresh=2, clip_length=3)  # short clips: cheap steps


def method(size=64, synthetic=False, **kw):
    from ssbench.methods.api import MethodContext
    from ssbench.methods.sss import SSS
    from ssbench.methods.sss.hparams import SSSConfig

    torch.manual_seed(0)
    ctx = MethodContext(1, 4, size, 10, torch.device("cpu"), synthetic, resize="bilinear")
    return SSS(SSSConfig(**{**SMALL, **kw}), ctx)


def volumes(method, n_unlabeled=4):
    rng = np.random.default_rng(0)
    label = np.zeros((5, 72, 70), np.uint8)
    label[1:4, 20:40, 20:30] = 1
    label[2:5, 40:60, 35:55] = 3
    method.attach_labeled_volumes({f"l{i}": (rng.random((5, 72, 70)).astype(np.float32), label) for i in range(2)})
    method.attach_unlabeled_volumes({f"v{i}": rng.random((5, 80, 76)).astype(np.float32) for i in range(n_unlabeled)})


def batches():
    from ssbench.methods.api import Batch

    g = torch.Generator().manual_seed(0)
    lab = Batch(torch.rand(2, 1, 64, 64, generator=g), torch.zeros(2, 64, 64, dtype=torch.long), ["l0", "l1"], [1, 3])
    unl = Batch(torch.rand(2, 1, 64, 64, generator=g), None, ["v0", "v1"], [0, 2])
    return lab, unl


def force_prompts(method, present=True):
    """The unlabeled volumes' sequence prompts, set directly: one box per class on every slice."""
    from ssbench.methods.sss.sequence import SlicePrompts

    for cid, vol in method.unlabeled.items():
        d = vol.shape[0]
        boxes = torch.tensor([[10.0, 10, 40, 40], [20, 20, 50, 50], [5, 30, 30, 60]]).expand(d, 3, 4).clone()
        points = (boxes[..., :2] + boxes[..., 2:]) / 2
        method.cache[cid] = (SlicePrompts(boxes, points, torch.full((d, 3), present)), 0)
