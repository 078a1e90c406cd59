"""The ``ssbench`` command line. Heavy imports (torch, the methods) happen inside the commands that need them."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

from ssbench import runfolder
from ssbench.errors import UserError, WriteError, first_line

HELP = {"help_option_names": ["-h", "--help"]}
app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, context_settings=HELP,
                  help="Reproducible semi-supervised medical image segmentation benchmarks.")
data_app = typer.Typer(no_args_is_help=True, help="Dataset utilities.", context_settings=HELP)
app.add_typer(data_app, name="data")
from ssbench.sweep.commands import sweep_app  # noqa: E402  (typer only; the sweep imports torch in its jobs)

app.add_typer(sweep_app, name="sweep")

_STATE = {"debug": False}

PLUGIN_HELP = "A method or dataset without packaging: module:attr or path/to/file.py (repeatable)."
DATA_CACHE_HELP = ("Prepared-data folder (default $SSBENCH_DATA_CACHE, else ~/.cache/ssbench/prepared); 'off' decodes "
                   "every case into memory instead.")


def _load_plugins(specs: List[str]) -> None:
    from ssbench import registry

    for spec in specs:
        registry.add_plugin(spec)


def _flags_take_no_value() -> None:
    """typer prints '<bool>' beside every flag (--resume, --quiet, --help), as if it took a value, and then
    '--resume true' is refused: a flag's type column stays empty."""
    from typer.core import TyperOption

    shown = TyperOption.display_type_rich
    if getattr(shown, "ssbench", False):
        return

    def display_type_rich(self, ctx):
        return "" if self.is_flag and self.metavar is None else shown(self, ctx)

    display_type_rich.ssbench = True
    TyperOption.display_type_rich = display_type_rich


_flags_take_no_value()


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"ssbench {version('ssbench')}")
        except PackageNotFoundError:
            typer.echo("ssbench (not installed: no version recorded)")
        raise typer.Exit()


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show tracebacks for errors."),
          show_version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                            help="Print the version and exit.")):
    _STATE["debug"] = debug


def _console():
    from rich.console import Console

    return Console(stderr=False)


@app.command()
def run(
    method: str = typer.Option(..., "--method", help="Registered method name (see `ssbench methods`)."),
    dataset: str = typer.Option("acdc", "--dataset", help="acdc, bhsd, nnunet or a plugin dataset."),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="Dataset folder; omit for the embedded phantom."),
    split: str = typer.Option("10%", "--split", help="Labeled patients: N, P% or all."),
    split_seed: Optional[int] = typer.Option(None, "--split-seed", help="Seed of the labeled draw (non-frozen splits)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Training seed (default 1337, the literature's)."),
    iters: Optional[int] = typer.Option(None, "--iters", help="Training iterations (overrides the recipe)."),
    out: Path = typer.Option(Path("results"), "--out", help="Results root folder."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    sets: List[str] = typer.Option([], "--set", help="Override a config field: section.key=value (repeatable)."),
    hd_units: Optional[str] = typer.Option(None, "--hd-units", help="mm or voxel (default: mm where spacing is known)."),
    empty_policy: Optional[str] = typer.Option(None, "--empty-policy", help="worst (default), exclude or legacy-zero."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run from its last checkpoint."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a completed run with the same config path."),
    deterministic: bool = typer.Option(False, "--deterministic", help=(
        "Deterministic GPU algorithms (slower; recorded as train.deterministic). See docs/guarantees.md.")),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
    amp: Optional[bool] = typer.Option(None, "--amp/--no-amp", help="bf16 autocast (default: on CUDA only)."),
    gpus: int = typer.Option(1, "--gpus", help="GPUs on this node: >1 relaunches under torchrun (DDP)."),
    data_cache: Optional[str] = typer.Option(None, "--data-cache", help=DATA_CACHE_HELP),
    data_workers: int = typer.Option(0, "--data-workers", min=0, help=(
        "DataLoader processes that read and augment the training batches ahead of the step (no number changes).")),
    log: str = typer.Option("tensorboard", "--log", help=(
        "Where training curves go: tensorboard, wandb, mlflow (comma-separated) or none. Recorded in run.json.")),
    plugins: List[str] = typer.Option([], "--plugin", help=PLUGIN_HELP),
):
    """Train and evaluate one method on one labeled split."""
    from ssbench.engine.plan import RunRequest
    from ssbench.engine.run import execute
    from ssbench.engine.tracking import parse_backends

    backends = parse_backends(log)

    _load_plugins(plugins)
    if gpus > 1:
        _relaunch_under_torchrun(gpus)
    if gpus < 1:
        raise UserError(f"--gpus {gpus}: must be at least 1")

    extra = []
    if hd_units is not None:
        extra.append(f"eval.hd_units={hd_units}")
    if empty_policy is not None:
        extra.append(f"eval.empty={empty_policy}")
    req = RunRequest(method=method, dataset=dataset, data_root=str(data_root) if data_root else None, split=split,
                     split_seed=split_seed, seed=seed, iters=iters, sets=tuple(extra + list(sets)), out=str(out),
                     device=device, resume=resume, overwrite=overwrite, quiet=quiet, deterministic=deterministic,
                     amp=None if amp is None else ("bf16" if amp else "off"), data_cache=data_cache,
                     execution={"data_workers": data_workers} if data_workers else None, log=backends)
    from ssbench.engine.runtime import distributed_env

    console = _console()
    run_dir = execute(req, console)
    if distributed_env()[0] == 0:  # under torchrun, rank 0 reports
        _print_summary(console, run_dir)


def _relaunch_under_torchrun(gpus: int) -> None:
    """``ssbench run --gpus N``: the same command as N DistributedDataParallel processes (torchrun)."""
    import os
    import subprocess

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UserError("--gpus: already running under torchrun; give the process count to torchrun only")
    args, skip = [], False
    for a in sys.argv[1:]:
        if skip:
            skip = False
        elif a == "--gpus":
            skip = True
        elif not a.startswith("--gpus="):
            args.append(a)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={gpus}", "-m", "ssbench",
           *args]
    sys.exit(subprocess.call(cmd))


def _print_summary(console, run_dir: Path, sub: str = "") -> None:
    from rich.table import Table

    from ssbench.metrics.catalog import metrics

    summary = runfolder.read_json(run_dir / sub / runfolder.SUMMARY, full_path=True)
    units = summary["metric_policy"]["hd_units"]
    for ckpt, block in summary["checkpoints"].items():
        table = Table(title=f"test set, {ckpt} checkpoint ({summary['test_cases']} volumes)")
        table.add_column("class", justify="left")
        for m in metrics():
            table.add_column(m.header(units), justify="right")
        table.add_column("n", justify="right")
        rows = list(block["per_class"].items()) + [("mean", {**block["mean"], "n_cases": ""})]
        for name, values in rows:
            table.add_row(name, *[_shown(values[m.name], m.scale) for m in metrics()], str(values["n_cases"]))
        console.print(table)
        if summary["metric_policy"].get("empty") == "worst" and any(
                m.get("status_counts", {}).get(k) for m in block["per_class"].values()
                for k in ("missed", "false_positive")):
            console.print(f"HD95/ASD: a structure missed (or predicted where there is none) scores that volume's "
                          f"diagonal in {units}, the 'worst' empty policy (--empty-policy; docs/guarantees.md)")
    console.print(f"results: {run_dir / sub}")


def _shown(v, scale: float) -> str:
    return "—" if v is None else f"{scale * v:.2f}"


@app.command("eval")
def eval_cmd(
    run_dir: Path = typer.Argument(..., help="A completed run folder."),
    hd_units: Optional[str] = typer.Option(None, "--hd-units", help="mm or voxel."),
    empty_policy: Optional[str] = typer.Option(None, "--empty-policy", help="worst, exclude or legacy-zero."),
    protocol: Optional[str] = typer.Option(None, "--protocol", help=(
        "a named protocol of the literature, e.g. bcp (= --empty-policy legacy-zero --hd-units voxel), or medsam2 "
        "(MedSAM-2's prompted 2-D validation; methods that take prompts: sss)")),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda: where the checkpoints are run."),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help=(
        "Where the run's data are now (default: the recorded data.root); they must be the same data.")),
    plugins: List[str] = typer.Option([], "--plugin", help=PLUGIN_HELP),
):
    """Re-evaluate a run's best and final checkpoints on its test set, e.g. under another metric policy."""
    from ssbench.engine.prompted_eval import PROMPTED
    from ssbench.engine.reeval import reevaluate, reevaluate_prompted
    from ssbench.metrics.evaluation import PROTOCOLS

    if protocol is not None:
        if protocol not in PROTOCOLS and protocol not in PROMPTED:
            raise UserError(f"--protocol {protocol}: unknown (known: {', '.join([*PROTOCOLS, *PROMPTED])})")
        if hd_units is not None or empty_policy is not None:
            raise UserError("--protocol names the empty policy and HD units itself: give it without --hd-units and "
                            "--empty-policy")
    _load_plugins(plugins)
    if protocol in PROMPTED:  # predicts again with ground-truth prompts: its own folder and summary
        sub = reevaluate_prompted(run_dir, protocol, device, str(data_root) if data_root is not None else None)
        summary = runfolder.read_json(run_dir / sub / runfolder.SUMMARY, full_path=True)
        for ckpt, v in summary["protocol"]["volume_means"].items():
            typer.echo(f"{protocol} {ckpt}: mean Dice {_shown(v['mean_dice'], 100.0)} over {v['volumes']} volumes "
                       f"({v['skipped']} without an evaluated slice, scored 0 as MedSAM-2 does)")
        typer.echo(f"results: {run_dir / sub}")
        return
    if protocol is not None:
        policy = PROTOCOLS[protocol][0]
        hd_units, empty_policy = policy.hd_units, policy.empty
    sub = reevaluate(run_dir, hd_units, empty_policy, device, str(data_root) if data_root is not None else None)
    _print_summary(_console(), run_dir, sub)


@app.command()
def split(
    dataset: str = typer.Option("acdc", "--dataset"),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="Needed unless the split is frozen (ACDC)."),
    split: str = typer.Option("10%", "--split"),
    split_seed: int = typer.Option(0, "--split-seed", min=0, help="Seed of the labeled draw (non-frozen splits)."),
    sets: List[str] = typer.Option([], "--set", help=(
        "A dataset option as the run takes it, e.g. nnunet.patient_pattern=REGEX (repeatable).")),
    as_json: bool = typer.Option(False, "--json", help="Print the patient sets as JSON."),
    plugins: List[str] = typer.Option([], "--plugin", help=PLUGIN_HELP),
):
    """Print the patient sets of a split protocol, and the protocol's choices (as a run would make them)."""
    from ssbench import registry
    from ssbench.fields import apply_override

    _load_plugins(plugins)
    cls = registry.dataset(dataset)
    if split_seed != 0 and cls.frozen_split is not None:
        raise UserError(f"--split-seed {split_seed}: the {dataset} split is frozen (the literature's patient lists); "
                        "a split seed would change nothing")
    notes: list[str] = []
    if data_root is None and cls.frozen_split is not None:
        result = cls.frozen_split(split, split_seed)
    else:
        if data_root is None:
            from ssbench.datasets import synthetic

            data_root = synthetic.embedded(dataset)
        from ssbench.datasets.base import check_split

        options = cls.Options()
        for item in sets:
            key, eq, value = (x.strip() for x in item.partition("="))
            section, _, rest = key.partition(".")
            if not eq or section != dataset or not rest:
                raise UserError(f"--set {item}: split takes the dataset's own options ({dataset}.key=value)")
            options = apply_override(options, rest, value, label=key)
        loader = cls(data_root, options)
        result = check_split(loader.split(split, split_seed), loader, read=())
        notes = loader.warnings()
    if as_json:
        typer.echo(json.dumps(result.as_dict()))
        return
    typer.echo(f"{result.protocol}")
    for note in notes:
        typer.echo(f"NOTE: {note}")
    for name, ids in result.as_dict().items():
        typer.echo(f"{name} ({len(ids)}): {' '.join(ids)}")


@app.command("config")
def config_cmd(
    method: str = typer.Option(..., "--method", help="Registered method name (see `ssbench methods`)."),
    dataset: str = typer.Option("acdc", "--dataset", help="acdc, bhsd, nnunet or a plugin dataset."),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="Dataset folder; omit for the phantom."),
    split: str = typer.Option("10%", "--split", help="Labeled patients: N, P% or all."),
    split_seed: Optional[int] = typer.Option(None, "--split-seed", help="Seed of the labeled draw."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Training seed."),
    iters: Optional[int] = typer.Option(None, "--iters", help="Training iterations."),
    sets: List[str] = typer.Option([], "--set", help="Override a config field: section.key=value (repeatable)."),
    deterministic: bool = typer.Option(False, "--deterministic", help="As `ssbench run --deterministic`."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda (decides train.amp=auto)."),
    amp: Optional[bool] = typer.Option(None, "--amp/--no-amp", help="As `ssbench run --amp/--no-amp`."),
    help_fields: bool = typer.Option(False, "--help-fields", help=(
        "List every field (the --set keys) with its value, default, what it allows and its help.")),
    plugins: List[str] = typer.Option([], "--plugin", help=PLUGIN_HELP),
):
    """Print the resolved config exactly as `ssbench run` with the same options would record it (config.yaml)."""
    from ssbench.engine.describe import describe_fields, resolved_config
    from ssbench.engine.plan import RunRequest

    _load_plugins(plugins)
    req = RunRequest(method=method, dataset=dataset, data_root=str(data_root) if data_root else None, split=split,
                     split_seed=split_seed, seed=seed, iters=iters, sets=tuple(sets), deterministic=deterministic,
                     device=device, amp=None if amp is None else ("bf16" if amp else "off"))
    cfg = resolved_config(req)
    if help_fields:
        typer.echo(describe_fields(cfg))
    else:
        import yaml

        typer.echo(yaml.safe_dump({"config_hash": cfg.hash(), **cfg.to_dict()}, sort_keys=False), nl=False)


@app.command()
def methods(plugins: List[str] = typer.Option([], "--plugin", help=PLUGIN_HELP)):
    """List the registered methods: name, distribution and version, description (built-ins and plugins, from the
    ssbench.methods entry points; nothing is imported)."""
    _list_registered("ssbench.methods", plugins)


@app.command()
def datasets(plugins: List[str] = typer.Option([], "--plugin", help=PLUGIN_HELP)):
    """List the registered dataset loaders: name, distribution and version, description."""
    _list_registered("ssbench.datasets", plugins)


def _list_registered(group: str, plugins: List[str]) -> None:
    from ssbench import registry

    _load_plugins(plugins)
    entries = registry.entries(group)
    width = max([len(e.name) for e in entries] + [12])
    origin = max([len(e.origin()) for e in entries] + [13])
    for entry in entries:
        note = registry.description(entry)
        if entry.rivals:
            note = "ERROR: claimed by " + ", ".join(e.origin() for e in [entry, *entry.rivals])
        typer.echo(f"{entry.name:{width}s}  {entry.origin():{origin}s}  {note}".rstrip())
    if registry.autoload_disabled():
        typer.echo(f"({registry.AUTOLOAD_ENV} is set: installed plugins are not listed)")


@app.command()
def table(
    results: Path = typer.Option(Path("results"), "--results", help="Results root folder."),
    out: Path = typer.Option(Path("paper"), "--out", help="Where tables, figures and provenance go."),
    reference: Optional[str] = typer.Option(None, "--reference", help=(
        "The method every other is tested against (default: the labeled-only baseline; choose it before looking "
        "at the results).")),
    checkpoint: str = typer.Option("best", "--checkpoint", help="best or final."),
    formats: str = typer.Option("md,tex,csv,html", "--format", help=(
        "Comma-separated: md, tex, csv, html (a static site in <out>/site/).")),
    plugins: List[str] = typer.Option([], "--plugin", help="A dataset plugin for the overlay figures (see run)."),
):
    """Regenerate the paper's tables, significance tests and figures from per-case results."""
    from ssbench.report.build import build

    _load_plugins(plugins)
    written = build(results, out, reference, checkpoint, [f.strip() for f in formats.split(",") if f.strip()])
    typer.echo(f"wrote {sum(len(v) for v in written.values())} files to {out}")


@data_app.command("synth")
def data_synth(
    dataset: str = typer.Option(..., "--dataset", help="acdc, bhsd or nnunet (an nnU-Net v2 raw folder)"),
    out: Path = typer.Option(..., "--out", help="Folder to write (must be empty or absent)."),
    seed: int = typer.Option(0, "--seed", min=0, max=2**32 - 1, help="Phantom seed (0 .. 2^32 - 1)."),
):
    """Write a synthetic phantom dataset in the real on-disk format."""
    from ssbench.datasets import synthetic

    if dataset not in synthetic.WRITERS:
        raise UserError(f"--dataset {dataset}: phantoms exist for {', '.join(synthetic.WRITERS)}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--out {out}: {'folder is not empty' if out.is_dir() else 'not a folder'}")
    import os
    import shutil

    staging = out.with_name(f".{out.name}.incomplete")  # renamed into place when complete: never half a phantom
    try:
        shutil.rmtree(staging, ignore_errors=True)
        synthetic.WRITERS[dataset](staging, seed=seed)
        synthetic.write_marker(staging, dataset, seed)  # read back by every run: filed and warned as a phantom
        os.replace(staging, out)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise WriteError(f"--out {out}: cannot write ({exc.strerror or exc}: {exc.filename})") from None
    typer.echo(f"wrote a synthetic {dataset} dataset to {out}")


@data_app.command("prepare")
def data_prepare(
    dataset: str = typer.Option(..., "--dataset", help="acdc, bhsd, nnunet or a plugin dataset."),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="Dataset folder; omit for the embedded phantom."),
    data_cache: Optional[str] = typer.Option(None, "--data-cache", help=DATA_CACHE_HELP),
    sets: List[str] = typer.Option([], "--set", help="A loader option as a run would set it: <dataset>.key=value."),
    jobs: int = typer.Option(1, "--jobs", min=1, help="Cases prepared at once, each by its own process."),
    plugins: List[str] = typer.Option([], "--plugin", help=PLUGIN_HELP),
):
    """Decode, check and normalise every case once into the prepared-data cache (runs then map it lazily).
    Cases already prepared are kept; those whose source files changed are prepared again."""
    from ssbench import registry
    from ssbench.fields import apply_override
    from ssbench.datasets import cache, synthetic
    from ssbench.engine.run import prepare_with_progress

    _load_plugins(plugins)
    cls = registry.dataset(dataset)
    options = cls.Options()
    for item in sets:
        key, eq, value = item.partition("=")
        section, _, rest = key.strip().partition(".")
        if not eq or section != dataset or not rest:
            raise UserError(f"--set {item}: expected {dataset}.key=value (a loader option)")
        options = apply_override(options, rest, value.strip(), label=key.strip())
    root = data_root if data_root is not None else synthetic.embedded(dataset)
    folder = cache.cache_location(data_cache)
    if folder is None:
        raise UserError("--data-cache off: nothing to prepare (give a folder, or leave the option out)")
    prepared = cache.PreparedData(cls(root, options), folder)
    console = _console()
    prepare_with_progress(prepared, cache.all_needs(prepared.dataset), console, console.print, again=True, jobs=jobs)


def main() -> None:
    """The console script: bad input of any kind, and any error a command meets, ends in one line on stderr and
    exit code 2 (Ctrl-C: 'interrupted' and 130); ``--debug`` shows the traceback instead."""
    debug = "--debug" in sys.argv[1:]
    try:
        code = app(standalone_mode=False)
        if code == 130:  # Typer turns a KeyboardInterrupt into Exit(130) and returns it; no command returns 130
            raise KeyboardInterrupt
    except UserError as exc:
        if debug:
            raise
        _fail(str(exc))
    except typer.Exit as exc:  # --help, and typer.Exit raised by a command
        sys.exit(exc.exit_code)
    except typer.Abort:
        print("ssbench: aborted", file=sys.stderr)
        sys.exit(1)
    except typer.TyperException as exc:  # usage errors: missing or unknown options, values of the wrong type
        if debug:
            raise
        message = exc.format_message().strip()
        if type(exc).__name__ == "NoArgsIsHelpError" or "\n" in message:  # a command group without arguments:
            if message:                                                    # its help (typer may print it itself)
                print(message, file=sys.stderr)
            sys.exit(exc.exit_code)
        ctx = getattr(exc, "ctx", None)
        _fail(f"{message} (see '{ctx.command_path if ctx is not None else 'ssbench'} --help')",
              getattr(exc, "exit_code", 2))
    except KeyboardInterrupt:
        print("ssbench: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:
        if debug:
            raise
        from ssbench.registry import plugin_of

        plugin = plugin_of(exc)
        if plugin is not None:
            _fail(f"{plugin} failed: {type(exc).__name__}: {first_line(exc)} (ssbench --debug ... shows the "
                  "traceback)")
        if isinstance(exc, OSError) and exc.strerror:  # the OS refused something: say what and where
            where = f"{exc.filename}: " if exc.filename else ""
            _fail(f"{where}{exc.strerror} ({type(exc).__name__})")
        _fail(f"internal error: {type(exc).__name__}: {first_line(exc)} (a bug in ssbench; `ssbench --debug ...` "
              "shows the traceback for a report)")
    sys.exit(code if isinstance(code, int) else 0)


def _fail(message: str, code: int = 2) -> None:
    print(f"ssbench: error: {' '.join(message.split())}", file=sys.stderr)
    sys.exit(code)


if __name__ == "__main__":
    main()
