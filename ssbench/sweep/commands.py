"""The ``ssbench sweep`` commands (registered in ``ssbench.cli``); heavy imports happen inside them."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import List, Optional

import typer

from ssbench.errors import UserError

sweep_app = typer.Typer(help="Run a grid of methods x splits x seeds (x datasets) through submitit.",
                        context_settings={"help_option_names": ["-h", "--help"]})


@sweep_app.callback(invoke_without_command=True)
def sweep(
    ctx: typer.Context,
    methods: Optional[str] = typer.Option(None, "--methods", help="Comma-separated method names."),
    splits: Optional[str] = typer.Option(None, "--splits", help="Comma-separated splits, e.g. 5%,10%."),
    seeds: Optional[str] = typer.Option(None, "--seeds", help="Comma-separated training seeds, e.g. 0,1,2."),
    split_seeds: Optional[str] = typer.Option(None, "--split-seeds", help=(
        "Comma-separated seeds of the labeled draw, e.g. 0,1,2 (datasets without a frozen split; each its own "
        "folder, -splitN, and its own table row).")),
    dataset: str = typer.Option("acdc", "--dataset", help="Dataset of the grid (or the datasets of --grid)."),
    data_root: List[str] = typer.Option([], "--data-root", help="PATH, or NAME=PATH per dataset; none: phantom."),
    grid: Optional[str] = typer.Option(None, "--grid", help="A grid shipped with ssbench: paper or zoo."),
    sets: List[str] = typer.Option([], "--set", help="Override a config field in every run (repeatable)."),
    iters: Optional[int] = typer.Option(None, "--iters", help="Training iterations of every run."),
    out: Path = typer.Option(Path("results"), "--out", help="Results root folder."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda (inside each job)."),
    executor: str = typer.Option("local", "--executor", help="local, slurm or debug."),
    parallel: Optional[int] = typer.Option(None, "--parallel", help=(
        "local: runs at once (default: as many as the GPUs hold at --gpus-per-job each; 1 without GPUs).")),
    slurm_partition: Optional[str] = typer.Option(None, "--slurm-partition", help=(
        "Slurm: the partition to submit to (#SBATCH --partition; default: the cluster's).")),
    slurm_account: Optional[str] = typer.Option(None, "--slurm-account", help="Slurm: account to charge."),
    slurm_qos: Optional[str] = typer.Option(None, "--slurm-qos", help="Slurm: quality of service."),
    mem_gb: Optional[int] = typer.Option(None, "--mem-gb", help="Slurm: memory per job, in GB."),
    slurm_param: List[str] = typer.Option([], "--slurm-param", help=(
        "Slurm: another #SBATCH parameter as key=value, e.g. constraint=a100 (repeatable).")),
    setup: List[str] = typer.Option([], "--setup", help=(
        "A shell line run before each job, e.g. 'source .venv/bin/activate' (repeatable; Slurm and local).")),
    gpus_per_job: int = typer.Option(1, "--gpus-per-job", help=(
        "GPUs per run. On Slurm a job books N GPUs on one node as --gpus-per-node=N with --ntasks-per-node=N: one "
        "DDP process per GPU (its folder gets -ddpN when N > 1); 0: CPU jobs.")),
    cpus_per_job: int = typer.Option(8, "--cpus-per-job", help=(
        "CPU cores per process (Slurm: --cpus-per-task), for the data loading.")),
    timeout_min: int = typer.Option(24 * 60, "--timeout-min", help="Per job; Slurm requeues a timed-out run."),
    array_parallelism: int = typer.Option(16, "--array-parallelism", help="Slurm: array tasks at once."),
    dry: bool = typer.Option(False, "--dry-run", help=(
        "Print the sbatch script (Slurm) and each run's command; submit and write nothing.")),
    log: str = typer.Option("tensorboard", "--log", help=(
        "Where every run's curves go: tensorboard, wandb, mlflow (comma-separated) or none (as `ssbench run`).")),
):
    """Run every (method, split, seed) of a grid; completed runs are skipped; `ssbench sweep status RESULTS`."""
    if ctx.invoked_subcommand is not None:
        return
    from ssbench.engine.tracking import parse_backends

    backends = parse_backends(log)
    from ssbench.sweep.grid import Grid, load_grid, parse_list, parse_roots, plan
    from ssbench.sweep.launch import SlurmOptions, check_scheduler, dry_run, launch

    if grid is not None:
        if methods or splits or seeds:
            raise UserError("--grid: give either a grid or --methods/--splits/--seeds, not both")
        g = load_grid(grid)
    else:
        missing = [o for o, v in (("--methods", methods), ("--splits", splits), ("--seeds", seeds)) if not v]
        if missing:
            raise UserError(f"{missing[0]}: required (or --grid NAME)")
        g = Grid(parse_list("--methods", methods), parse_list("--splits", splits), parse_list("--seeds", seeds, int),
                 (dataset,))
    if split_seeds is not None:
        g = dataclasses.replace(g, split_seeds=parse_list("--split-seeds", split_seeds, int))
    for option, value in (("--parallel", 1 if parallel is None else parallel), ("--timeout-min", timeout_min),
                          ("--array-parallelism", array_parallelism), ("--cpus-per-job", cpus_per_job),
                          ("--mem-gb", 1 if mem_gb is None else mem_gb)):
        if value < 1:
            raise UserError(f"{option} {value}: must be at least 1")
    if gpus_per_job < 0:
        raise UserError(f"--gpus-per-job {gpus_per_job}: must be 0 (CPU jobs) or more")
    if gpus_per_job == 0 and device == "cuda":
        raise UserError("--gpus-per-job 0: CPU jobs, but --device cuda")
    slurm = SlurmOptions(slurm_partition, gpus_per_job, cpus_per_job, timeout_min, array_parallelism, slurm_account,
                         slurm_qos, mem_gb, tuple(slurm_param), tuple(setup))
    slurm.submitit_parameters()  # a malformed --slurm-param stops here, before anything is planned
    if not dry:
        check_scheduler(executor)  # no Slurm here: one line, before anything is planned or written
    planned = plan(g, parse_roots(data_root, g.datasets), tuple(sets), iters, out,
                   "cpu" if gpus_per_job == 0 else device, world=max(1, gpus_per_job))
    for p in planned:  # tracking is no part of a run's config: set on the requests, after planning
        p.request.log = backends
    typer.echo(f"sweep of {len(planned)} runs ({sum(p.complete for p in planned)} already complete)")
    if dry:
        for line in dry_run(planned, out, executor, slurm):
            typer.echo(line)
        return
    sweep_dir = launch(planned, out, executor, slurm, parallel, say=typer.echo)
    if sweep_dir is not None:
        typer.echo(f"manifest: {sweep_dir / 'manifest.json'}")


@sweep_app.command("status")
def status_cmd(
    results: Path = typer.Argument(..., help="The results root a sweep wrote to."),
    sweep: Optional[str] = typer.Option(None, "--sweep", help="Sweep id (default: the newest)."),
):
    """Done / running / requeued / failed / queued / missing for every run of a sweep."""
    from ssbench.sweep.status import STATES, status

    rows = status(results, sweep)
    counts = {s: sum(r["state"] == s for r in rows) for s in STATES}
    typer.echo("  ".join(f"{s} {n}" for s, n in counts.items()))
    for r in rows:
        if r["state"] != "done":
            typer.echo(f"{r['state']:8s} {r['key']}" + (f"  {r['detail']}" if r["detail"] else ""))
