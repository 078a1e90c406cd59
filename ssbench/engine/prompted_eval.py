"""Named protocols that predict again with ground-truth prompts (``medsam2``: ``metrics/medsam2.py``), for methods
that take prompts (``Method.predict_prompted``). Written to ``evals/<protocol>/`` of the run, its summary's metric
policy naming the protocol (``eval.protocol``), so that ``ssbench table`` never pools these rows with the
benchmark's own: a prompted 2-D Dice is another task."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ssbench.errors import UserError

PROMPTED = ("medsam2",)  # metrics/medsam2.py (imported when used: torch)


def check_promptable(method_cls, protocol: str) -> None:
    if getattr(method_cls, "predict_prompted", None) is None:
        raise UserError(f"protocol {protocol} (eval.also_protocols, ssbench eval --protocol): method "
                        f"{method_cls.name!r} takes no prompts (it needs "
                        "predict_prompted: sss)")


def evaluate_prompted(method, cases, dataset, cfg, device, run_dir: Path, protocol: str,
                      config_hash: str | None = None) -> str:
    """Score the run's best and final checkpoints under ``protocol`` into ``evals/<protocol>/``; returns it."""
    import numpy as np
    import pandas as pd
    import torch
    import torch.nn.functional as F

    from ssbench import runfolder
    from ssbench.engine import checkpoint
    from ssbench.engine.evaluate import summary_of
    from ssbench.metrics import medsam2
    from ssbench.metrics.catalog import metrics
    from ssbench.resize import resize_volume

    check_promptable(type(method), protocol)
    names = {i + 1: n for i, n in enumerate(dataset.class_names)}
    size, k = cfg.data.train_size, len(names)
    rows, volumes = [], {}
    others = {m.name: np.nan for m in metrics() if m.name not in ("dice", "jaccard")}  # MedSAM-2 scores overlap only
    for ckpt in runfolder.CHECKPOINT_NAMES:
        path = runfolder.checkpoint_path(run_dir, ckpt)
        checkpoint.load_weights(method, checkpoint.load(path, config_hash or cfg.hash()), path)
        method.eval()
        scores = []
        for case in cases:
            x = torch.from_numpy(resize_volume(case.image, size, cfg.data.inference_resize))[:, None].to(device)
            # MedSAM-2 resizes each label with PIL's nearest neighbour (pixel centres): nearest-exact
            lab = F.interpolate(torch.from_numpy(np.ascontiguousarray(case.label))[None].float(), size=(size, size),
                                mode="nearest-exact")[0].long().to(device)
            with torch.no_grad():
                per_class, evaluated = medsam2.evaluate_volume(method.predict_prompted, x, lab, k)
            scores.append(float(np.mean([d for d, _ in per_class.values()])) if per_class else 0.0)
            for c, name in names.items():
                d, j = per_class.get(c, (np.nan, np.nan))
                rows.append({"checkpoint": ckpt, "case_id": case.case_id, "patient_id": case.patient_id,
                             "class": name, "class_id": c, "status": "ok" if c in per_class else "absent",
                             "dice": d, "jaccard": j, **others, "evaluated": evaluated,
                             "protocol": protocol})
        volumes[ckpt] = {"mean_dice": float(np.mean(scores)) if scores else None,  # MedSAM-2's number
                         "volumes": len(scores), "skipped": int(sum(not e for e in _evaluated(rows, ckpt)))}
    frame = pd.DataFrame(rows)
    sub = Path(run_dir) / runfolder.EVALS / protocol
    summary = summary_of(frame, cfg, protocol={"name": protocol, "description": medsam2.DESCRIPTION,
                                               "volume_means": volumes})
    summary["metric_policy"] = {**dataclasses.asdict(cfg.eval), "protocol": protocol}  # never pooled (module doc)
    runfolder.write_results(sub, frame, summary)
    return str(sub.relative_to(run_dir))


def _evaluated(rows: list[dict], ckpt: str) -> list[bool]:
    seen = {}
    for r in rows:
        if r["checkpoint"] == ckpt:
            seen[r["case_id"]] = r["evaluated"]
    return list(seen.values())
