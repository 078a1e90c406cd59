"""What a run is about to do, said before its first step: method, data sets in patients, volumes and slices,
every stage with its length, the total, where it runs and in what precision, and where its results go."""

from __future__ import annotations

from pathlib import Path


def _slices(cases) -> int:
    return sum(int(c.image.shape[0]) for c in cases)


def _set(name: str, patients, cases) -> str:
    return f"{name} {len(patients)} patients / {len(cases)} volumes / {_slices(cases)} slices"


def plan_text(cfg, method, inputs, split, dataset, runtime, final_dir: Path) -> str:
    """Three lines: data, schedule, execution. ``inputs``: the loaded training and validation cases
    (``engine.run.Inputs``); the test volumes are counted, not read (they are read once, at the end)."""
    from ssbench.engine.run import dataset_tag

    test_volumes = sum(len(dataset.case_ids(p)) for p in split.test)
    unlabeled = (_set("unlabeled", split.unlabeled, inputs.unlabeled) if inputs.unlabeled
                 else f"unlabeled {len(split.unlabeled)} patients (not used by {cfg.method_name})")
    data = (f"plan: {cfg.method_name} on {dataset_tag(cfg)}, split {cfg.data.split}: "
            f"{_set('labeled', split.labeled, inputs.labeled)}; {unlabeled}; "
            f"{_set('val', split.val, inputs.val)}; test {len(split.test)} patients / {test_volumes} volumes")
    stages = list(method.stages())
    total = sum(s.iters for s in stages)
    parts = [f"{s.name} {s.iters}" + ("" if s.uses_unlabeled or not type(method).uses_unlabeled else
                                      " (labeled only)") for s in stages]
    schedule = (f"plan: {len(stages)} stage{'s' if len(stages) > 1 else ''} ({' -> '.join(parts)} iterations), "
                f"{total} iterations in all; validation every {cfg.train.val_every}"
                + (f" (every {cfg.train.val_epochs} epochs)" if cfg.train.val_every == "epoch" else " iterations")
                + f", checkpoint every {cfg.train.checkpoint_every}")
    device = str(runtime.device)
    if runtime.device.type == "cuda":
        import torch

        device += f" ({torch.cuda.get_device_name(runtime.device)})"
    execution = (f"plan: {device} x {runtime.world} process{'es' if runtime.world > 1 else ''}, "
                 f"{'bf16 autocast' if runtime.amp else 'fp32'}; results: {final_dir}")
    return "\n".join((data, schedule, execution))
