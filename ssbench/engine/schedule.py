"""How long a run trains when its length is given in epochs: the pool whose passes make an epoch and the
iterations one pass takes (UniMatch's ``len(trainloader_u)``). Read by the plan and by the training loop."""

from __future__ import annotations


def epoch_pool(method_cls, cfg) -> str:
    """The pool whose passes make an epoch: the unlabeled slices for methods that use them (UniMatch's
    ``len(trainloader_u)``), the labeled ones otherwise."""
    return "unlabeled" if method_cls.uses_unlabeled and cfg.train.batch_unlabeled > 0 else "labeled"


def iters_per_epoch(method_cls, cfg, pools) -> int:
    pool = epoch_pool(method_cls, cfg)
    batch = cfg.train.batch_unlabeled if pool == "unlabeled" else cfg.train.batch_labeled
    return max(1, len(pools[pool]) // batch)
