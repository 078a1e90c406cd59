"""Orchestrate ``ssbench table``: collect runs, build every table, write md/tex/csv, figures and provenance."""

from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path

import pandas as pd

from ssbench.atomic import write_csv, write_json, write_text
from ssbench.errors import UserError
from ssbench.report import figures
from ssbench.report.collect import collect
from ssbench.report.render import to_latex, to_markdown
from ssbench.report.tables import (ablation_table, gap_table, group, main_table, per_class_table, significance)

FORMATS = ("md", "tex", "csv")


def published_path() -> Path:
    return Path(str(resources.files("ssbench.report") / "published.csv"))


def build(results: Path, out: Path, reference: str | None, checkpoint: str, formats: list[str], say=print) -> dict:
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise UserError(f"--format {','.join(formats)}: unknown format {bad[0]!r} (choose from {', '.join(FORMATS)})")
    if checkpoint not in ("best", "final"):
        raise UserError(f"--checkpoint {checkpoint}: expected best or final")
    if not Path(results).is_dir():
        raise UserError(f"--results {results}: folder does not exist")
    runs, skipped = collect(results)
    for s in skipped:
        say(f"skipped {s.path}: {s.reason}")
    if not runs:
        raise UserError(f"--results {results}: no completed runs found")
    by_dataset = group(runs)  # raises on mixed protocols, naming the runs
    for r in runs:
        say(f"used    {r.path} ({r.method}, {r.labeled} labeled, seed {r.seed}, config {r.config_hash})")
    missing = _missing_reasons(skipped)
    written: dict[str, list[str]] = {}
    out.mkdir(parents=True, exist_ok=True)

    def emit(stem: str, table, frame: pd.DataFrame | None, provenance: dict | None = None):
        paths = []
        if "md" in formats:
            write_text(out / f"{stem}.md", to_markdown(table))
            paths.append(f"{stem}.md")
        if "tex" in formats:
            write_text(out / f"{stem}.tex", to_latex(table))
            paths.append(f"{stem}.tex")
        if "csv" in formats and frame is not None:
            write_csv(out / f"{stem}.csv", frame)
            paths.append(f"{stem}.csv")
        if provenance is not None:
            write_json(out / f"{stem}.provenance.json", provenance)
            paths.append(f"{stem}.provenance.json")
        written[stem] = paths

    for dataset, cells in sorted(by_dataset.items()):
        sig = significance(cells, checkpoint, reference)
        table, frame, prov = main_table(dataset, cells, checkpoint, sig, missing.get(dataset, {}))
        emit(f"main_{dataset}", table, frame, {"checkpoint": checkpoint, "cells": prov,
                                               "skipped": [{"run": str(s.path), "reason": s.reason} for s in skipped]})
        if not sig.empty and "csv" in formats:
            write_csv(out / f"significance_{dataset}.csv", sig)
            written[f"significance_{dataset}"] = [f"significance_{dataset}.csv"]
        for n in sorted({n for _, n in cells}):
            t, f = per_class_table(dataset, cells, checkpoint, n)
            emit(f"perclass_{dataset}_{n}labeled", t, f, {"cells": {f"{m} | {k} labeled": [str(r.path) for r in
                                                                                        c.runs]
                                                                  for (m, k), c in cells.items() if k == n}})
        ablation = ablation_table(dataset, cells, checkpoint)
        if ablation is not None:
            emit(f"ablation_sss_{dataset}", ablation, None)
        fig_dir = out / "figures"
        files = figures.dice_boxes(dataset, cells, checkpoint, fig_dir)
        files += figures.learning_curves(dataset, cells, fig_dir)
        overlay, why = figures.overlays(dataset, cells, checkpoint, fig_dir)
        if why:
            say(why)
        written[f"figures_{dataset}"] = [str(p.relative_to(out)) for p in files + overlay]

    published = pd.read_csv(published_path())
    shutil.copyfile(published_path(), out / "published.csv")
    gap, gap_frame = gap_table(by_dataset, published, checkpoint)
    emit("reproduction_gap", gap, gap_frame)
    write_json(out / "index.json", {"results": str(results), "checkpoint": checkpoint, "files": written,
                                    "runs_used": len(runs), "runs_skipped": len(skipped)})
    return written


def _missing_reasons(skipped) -> dict:
    """dataset -> (method, labeled) -> reason, for cells whose only runs were skipped (e.g. incomplete)."""
    out: dict = {}
    for s in skipped:
        parts = s.path.parts
        if len(parts) >= 4:
            dataset, method, split = parts[-4], parts[-3], parts[-2]
            labeled = int(split) if split.isdigit() else None
            if labeled is not None:
                out.setdefault(dataset, {})[(method, labeled)] = f"run {s.path.name} skipped: {s.reason}"
    return out
