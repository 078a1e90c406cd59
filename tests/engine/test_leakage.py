"""No leakage into training (docs/plugins.md, "Which slices"): the batches that reach ``training_step`` and the
volumes handed to ``attach_labeled_volumes`` / ``attach_unlabeled_volumes`` (SSS's sequences and clips) come only
from the split's labeled patients and its unlabeled ones; validation and test cases never do. Checked through the
engine for every built-in method, read from the registry: a method registered later is covered without editing
this file. The check is shown to fail on a deliberately leaking stand-in of the engine's input loading.

The recorder replaces the method's training step (it records the case ids and returns a zero loss), so a run costs
the engine's data path and the method's construction, not its training."""

from __future__ import annotations

import pytest

from conftest import tiny_request
from ssbench import registry

BUILTINS = [e.name for e in registry.entries(registry.METHODS_GROUP) if e.builtin]
ITERS = 12  # more than an epoch of each pool (tiny dataset: 2 labeled cases x 4 slices, 5 unlabeled x 4; batch 2)


def _pretrained(name) -> bool:
    """Methods on a pretrained backbone (SSS's SAM-2, UniMatch V2's DINOv2) declare ``init``: built randomly
    initialised here (no weights on a machine without network), and slow-marked (large networks)."""
    return "init" in getattr(registry.method(name).Config, "__dataclass_fields__", {})


class _Enough(Exception):
    pass


def _record(monkeypatch, name):
    """Run the tiny run of method ``name`` until ITERS steps are recorded; return what reached the method."""
    from ssbench.engine.run import execute

    cls = registry.method(name)
    seen = {"labeled": set(), "unlabeled": set(), "attach_labeled": set(), "attach_unlabeled": set()}

    def step(self, labeled, unlabeled, info):
        assert labeled.label is not None and len(labeled.case_ids) == labeled.image.shape[0]
        seen["labeled"].update(labeled.case_ids)
        if unlabeled is not None:
            assert unlabeled.label is None and len(unlabeled.case_ids) == unlabeled.image.shape[0]
            seen["unlabeled"].update(unlabeled.case_ids)
        if info.stage == self.stages()[-1].name and info.iteration == ITERS - 1:
            raise _Enough  # in the last stage (the one that draws unlabeled data), before its final validation
        return {"loss": sum((p * 0).sum() for p in self.trainable_parameters())}

    def attaching(kind, original):
        def attach(self, volumes):
            seen[kind].update(volumes)
            return original(self, volumes)
        return attach

    monkeypatch.setattr(cls, "training_step", step)
    for kind in ("labeled", "unlabeled"):
        hook = f"attach_{kind}_volumes"
        monkeypatch.setattr(cls, hook, attaching(f"attach_{kind}", getattr(cls, hook)))
    return seen, execute, cls


def _run(tiny_nnunet, tmp_path, monkeypatch, name):
    seen, execute, cls = _record(monkeypatch, name)
    sets = ((f"{name}.init=random",) if _pretrained(name) else ()) + ("train.checkpoint_every=1000",
                                                                        "train.val_every=1000")
    if "pretrain_iters" in getattr(cls.Config, "__dataclass_fields__", {}):  # staged methods' convention (BCP, ABD)
        sets += (f"{name}.pretrain_iters=2",)
    with pytest.raises(_Enough):
        execute(tiny_request(tiny_nnunet, tmp_path, name, sets=sets, iters=ITERS))
    return seen, cls


def _split_cases(tiny_nnunet):
    from ssbench.datasets.nnunet import NNUNet

    ds = NNUNet(tiny_nnunet)
    split = ds.split("2", 0)
    return {part: {c for p in getattr(split, part) for c in ds.case_ids(p)}
            for part in ("labeled", "unlabeled", "val", "test")}


def check_no_leak(seen: dict, cases: dict, uses_unlabeled: bool) -> None:
    """Every case that reached the method is a labeled (labeled batches and volumes) or unlabeled (unlabeled
    batches and volumes) case of the split; and every one of them did reach it (the check is not vacuous)."""
    held_out = {c: part for part in ("val", "test") for c in cases[part]}
    for kind, allowed in (("labeled", "labeled"), ("attach_labeled", "labeled"),
                          ("unlabeled", "unlabeled"), ("attach_unlabeled", "unlabeled")):
        leaked = sorted(seen[kind] - cases[allowed])
        named = [f"{c} ({held_out.get(c, 'another pool')})" for c in leaked]
        assert not leaked, f"{kind}: {', '.join(named)}"
    assert seen["labeled"] == seen["attach_labeled"] == cases["labeled"]
    expected = cases["unlabeled"] if uses_unlabeled else set()
    assert seen["unlabeled"] == seen["attach_unlabeled"] == expected


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if _pretrained(n) else n for n in BUILTINS])
def test_only_the_splits_training_cases_reach_the_method(name, tiny_nnunet, tmp_path, monkeypatch):
    seen, cls = _run(tiny_nnunet, tmp_path, monkeypatch, name)
    check_no_leak(seen, _split_cases(tiny_nnunet), cls.uses_unlabeled)


def test_every_builtin_is_checked():
    assert {"supervised", "mean-teacher", "unimatch", "fixmatch", "sss"} <= set(BUILTINS)


@pytest.mark.parametrize("leak", ["val-into-labeled", "test-into-unlabeled"])
def test_a_leaking_engine_fails_the_check(leak, tiny_nnunet, tmp_path, monkeypatch):
    """The stand-in: the engine's input loading with validation cases slipped into the labeled pool, or test
    cases into the unlabeled one."""
    from ssbench.engine import run as run_mod
    from ssbench.engine.data import SlicePool

    original = run_mod.load_inputs

    def leaky_inputs(cfg, method_cls, dataset, split, say):
        inputs = original(cfg, method_cls, dataset, split, say)
        part, pool = ("val", "labeled") if leak == "val-into-labeled" else ("test", "unlabeled")
        extra = run_mod.load_cases(dataset, getattr(split, part), pool == "labeled")
        inputs.pools[pool] = SlicePool.from_cases(list(inputs.pools[pool].cases.values()) + extra, pool == "labeled")
        return inputs

    monkeypatch.setattr(run_mod, "load_inputs", leaky_inputs)
    seen, cls = _run(tiny_nnunet, tmp_path, monkeypatch, "mean-teacher")
    cases = _split_cases(tiny_nnunet)
    leaked = cases["val"] if leak == "val-into-labeled" else cases["test"]
    assert leaked and leaked <= seen["labeled" if leak == "val-into-labeled" else "unlabeled"]
    with pytest.raises(AssertionError, match=sorted(leaked)[0]):
        check_no_leak(seen, cases, cls.uses_unlabeled)

