"""The weak augmentation's two variants: UniMatch's (the default) and SSL4MIS's since 24db034 (always one of the
two transforms). Their official draw distributions are compared by benchmarks/peer_check.py."""

import numpy as np

from ssbench.augment import draw_weak
from ssbench.engine.runconfig import TrainConfig
from ssbench.engine.data import Sampler


def _kinds(always: bool, n: int = 4000) -> dict[str, float]:
    rng = np.random.default_rng(0)
    kinds = [draw_weak(rng, always).kind for _ in range(n)]
    return {k: kinds.count(k) / n for k in ("rotflip", "rotate", "none")}


def test_the_default_leaves_a_quarter_unaugmented_and_the_ssl4mis_variant_none():
    default, always = _kinds(False), _kinds(True)
    assert abs(default["rotflip"] - 0.5) < 0.03 and abs(default["none"] - 0.25) < 0.03
    assert always["none"] == 0.0 and abs(always["rotflip"] - 0.5) < 0.03 and abs(always["rotate"] - 0.5) < 0.03


def test_the_variant_is_a_recorded_option_that_reaches_the_sampler():
    from ssbench.engine.data import SlicePool

    assert TrainConfig(augment="rotflip-or-rotate").augment == "rotflip-or-rotate"
    images = [np.random.default_rng(i).random((16, 16)).astype(np.float32) for i in range(4)]
    pool = SlicePool(images, None, [("c", i) for i in range(4)], {})
    for always, expect_none in ((True, False), (False, True)):
        sampler = Sampler(pool, 4, seed=0, size=16, weak_always=always)
        kinds = {p.kind for _ in range(100) for _, p in sampler.draw()}
        assert ("none" in kinds) == expect_none, (always, kinds)
