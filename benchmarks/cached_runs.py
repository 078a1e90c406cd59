"""Runs the benchmarks reuse, and the machine their figures come from.

A run already in the results folder is reused only when its recorded config hash (config.yaml) is the hash of the
config the benchmark asks for (``ssbench.engine.describe.resolved_config``, what ``ssbench config`` prints): a run
of another length, seed or setting is never counted under the requested settings. A run that differs stops the
benchmark with the difference, unless ``rerun_stale`` replaces it.
"""

from __future__ import annotations

import platform
import time
from pathlib import Path

from ssbench import runfolder
from ssbench.engine.describe import resolved_config
from ssbench.engine.plan import run_dir_for
from ssbench.engine.run import check_resumable, execute
from ssbench.errors import UserError
from ssbench.runfolder import is_complete


def machine() -> str:
    """The hardware and software a figure was measured on, in one line (benchmarks/hardware.py)."""
    import torch

    from hardware import describe as hardware

    return f"{hardware(torch.device('cuda' if torch.cuda.is_available() else 'cpu'))}, host {platform.node()}"


def recorded(run_dir: Path) -> dict:
    """A finished run's config.yaml (with its config_hash)."""
    return runfolder.Staging.recorded_config_of(run_dir) or {}


def cached_or_run(req, rerun_stale: bool = False, say=print) -> Path:
    """The finished run of ``req``: reused when its recorded config hash is the requested one, else trained."""
    cfg = resolved_config(req)
    run_dir = run_dir_for(cfg, req.out)
    if (run_dir / runfolder.CONFIG).is_file():
        have = recorded(run_dir)
        if is_complete(run_dir) and have.get("config_hash") == cfg.hash():
            return run_dir
        if not rerun_stale:
            try:  # names the keys that differ, as --resume does
                check_resumable(run_dir, cfg)
                why = "it is not complete"
            except UserError as exc:
                why = str(exc).split("another config (", 1)[-1].split(");", 1)[0]
            raise SystemExit(f"{run_dir}: a run with other settings is there ({why}); pass --rerun-stale to "
                             "replace it, or another --out")
        req.overwrite = True
    t0 = time.time()
    execute(req)
    say(f"ran {cfg.method_name} seed {cfg.train.seed} ({cfg.train.iters} iterations) in {time.time() - t0:.0f} s "
        f"on {machine()}")
    return run_dir


def describe(runs: list[Path]) -> list[str]:
    """What the runs behind a figure recorded: their lengths, batches and input size, and where they trained."""
    configs = [recorded(r) for r in runs]
    infos = [runfolder.read_info(r) for r in runs]

    def values(get):
        return "/".join(str(v) for v in sorted({get(c) for c in configs}, key=str))

    data = configs[0]["data"]
    trained_on = sorted({f"{i.get('host')}: {i.get('device')}, torch {i['versions']['torch']} with "
                         f"{i.get('torch_threads')} threads" for i in infos})
    return [f"{data['dataset']} ({'embedded phantom' if data['synthetic'] else 'real data'}); recorded by the "
            f"{len(runs)} runs: {values(lambda c: c['train']['iters'])} iterations, recipe "
            f"{values(lambda c: c['train']['recipe'])}, batch labeled/unlabeled "
            f"{values(lambda c: (c['train']['batch_labeled'], c['train']['batch_unlabeled']))}, input size "
            f"{values(lambda c: c['data']['train_size'])}",
            f"trained on {'; '.join(trained_on)}; summarised on {machine()}"]
