"""A sweep's grid: which runs, and where each one's results folder is."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

from ssbench.errors import UserError
from ssbench.runfolder import is_complete


@dataclass(frozen=True)
class Grid:
    methods: tuple[str, ...]
    splits: tuple[str, ...]
    seeds: tuple[int, ...]
    datasets: tuple[str, ...] = ("acdc",)
    split_seeds: tuple[int | None, ...] = (None,)  # seeds of the labeled draw (None: the config's, 0)

    @property
    def size(self) -> int:
        return len(self.methods) * len(self.splits) * len(self.seeds) * len(self.datasets) * len(self.split_seeds)


def shipped_grids() -> list[str]:
    return sorted(p.name[: -len(".yaml")] for p in resources.files("ssbench.sweep.grids").iterdir()
                  if p.name.endswith(".yaml"))


def load_grid(name: str) -> Grid:
    """A grid file shipped with the package (``--grid paper``, ``--grid zoo``); unknown keys are errors.
    ``methods: builtin`` lists every built-in method."""
    if name not in shipped_grids():
        raise UserError(f"--grid {name}: unknown grid (shipped: {', '.join(shipped_grids())})")
    data = yaml.safe_load((resources.files("ssbench.sweep.grids") / f"{name}.yaml").read_text())
    fields = {f.name for f in dataclasses.fields(Grid)}
    unknown = set(data) - fields
    if unknown:
        raise UserError(f"grid {name}: unknown key {sorted(unknown)[0]!r} (known: {', '.join(sorted(fields))})")
    if data.get("methods") == "builtin":  # every method the ssbench distribution registers itself
        from ssbench import registry

        data["methods"] = [e.name for e in registry.entries(registry.METHODS_GROUP) if e.builtin]
    return Grid(**{k: tuple(v) for k, v in data.items()})


def parse_list(option: str, text: str, kind=str) -> tuple:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise UserError(f"{option} {text!r}: expected a comma-separated list")
    try:
        return tuple(kind(t) for t in items)
    except ValueError:
        raise UserError(f"{option} {text!r}: expected a comma-separated list of {kind.__name__}s") from None


def parse_roots(values: list[str], datasets: tuple[str, ...]) -> dict[str, str | None]:
    """``--data-root PATH`` (one dataset) or ``--data-root NAME=PATH`` (several); missing = the phantom."""
    roots: dict[str, str | None] = {d: None for d in datasets}
    for v in values:
        name, eq, path = v.partition("=")
        if not eq:
            if len(datasets) != 1:
                raise UserError(f"--data-root {v}: the grid has datasets {', '.join(datasets)}; use NAME=PATH")
            name, path = datasets[0], v
        if name not in roots:
            raise UserError(f"--data-root {v}: {name!r} is not a dataset of this grid ({', '.join(datasets)})")
        roots[name] = path
    return roots


@dataclass
class PlannedRun:
    key: str  # the run folder relative to the results root: dataset/method/split/seedN
    run_dir: Path
    request: object  # ssbench.engine.plan.RunRequest
    complete: bool
    plan: object = None  # its ssbench.engine.plan.Plan (config and method class), resolved once


def plan(grid: Grid, roots: dict, sets: tuple[str, ...], iters: int | None, out: Path, device: str,
         world: int = 1) -> list[PlannedRun]:
    """Resolve every run's config and results folder (fails fast on a bad name, key or data root, before
    anything is submitted) and mark the runs that are already complete. ``world``: processes per run (a run of
    several is a DDP run, in its own folder)."""
    from ssbench.engine.plan import RunRequest, plan as plan_run

    planned = []
    for dataset in grid.datasets:
        for method in grid.methods:
            for split in grid.splits:
                for split_seed in grid.split_seeds:
                    for seed in grid.seeds:
                        req = RunRequest(method=method, dataset=dataset, data_root=roots.get(dataset), split=split,
                                         split_seed=split_seed, seed=seed, iters=iters, sets=sets, out=str(out),
                                         device=device, resume=True, world=world)
                        p = plan_run(req, device=None)
                        planned.append(PlannedRun(str(p.run_dir.relative_to(out)), p.run_dir, req,
                                                  is_complete(p.run_dir), p))
    return planned

