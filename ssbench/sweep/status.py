"""``ssbench sweep status RESULTS``: each run of a sweep is done, running, requeued, failed, queued or missing.

The run folders say what finished (a completed run) and what a job reported (its one-line error, a requeue).
What a job could not report — killed by the scheduler for memory, a node failure, cancelled — comes from the
scheduler: Slurm's accounting (``sacct``, through submitit) for a Slurm sweep, the job's process for a local one.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from ssbench.errors import UserError
from ssbench.runfolder import is_complete
from ssbench.sweep.launch import SWEEPS, error_file, requeue_file

STATES = ("done", "running", "requeued", "failed", "queued", "missing")
# Slurm states of a job that has ended without a result of its own (sacct's State column; 'CANCELLED by N' too)
SLURM_ENDED = ("FAILED", "OUT_OF_MEMORY", "NODE_FAIL", "CANCELLED", "BOOT_FAIL", "DEADLINE", "TIMEOUT",
               "PREEMPTED", "COMPLETED", "REVOKED")
SLURM_WAITING = ("PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "SUSPENDED")


def scheduler_states(manifest: dict, sweep_dir: Path) -> dict[str, str]:
    """job id -> the scheduler's state of that job ('' where it cannot be asked)."""
    ids = [r["job_id"] for r in manifest["runs"] if r.get("job_id")]
    if not ids:
        return {}
    if manifest.get("executor") == "slurm":
        from submitit.slurm.slurm import SlurmInfoWatcher

        watcher = SlurmInfoWatcher(delay_s=0)  # one sacct call for the whole array
        for jid in ids:
            watcher.register_job(jid)
        watcher.update()
        return {jid: watcher.get_state(jid, mode="cache") for jid in ids}
    if manifest.get("executor") == "local":
        return {jid: "RUNNING" if _alive(jid) else "ENDED" for jid in ids}
    return {}


def _alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError, PermissionError, OSError):
        return False
    return True


def run_state(results: Path, sweep_dir: Path, entry: dict, scheduler: str = "") -> tuple[str, str]:
    """(state, detail) of one run of a sweep manifest; ``scheduler``: its job's state there, if known."""
    run_dir = results / entry["key"]
    if is_complete(run_dir):
        return "done", ""
    err = error_file(sweep_dir, entry["key"])
    if err.is_file():
        return "failed", err.read_text().strip()
    job = entry.get("job_id")
    state = (scheduler or "").upper()
    if state.startswith(SLURM_ENDED):
        return "failed", f"the scheduler ended job {job}: {scheduler} (no result from the run itself)"
    if state == "ENDED":
        return "failed", f"job process {job} ended without finishing the run or reporting an error"
    staging = run_dir.with_name(f".{run_dir.name}.incomplete")
    last_write = max((p.stat().st_mtime for p in staging.rglob("*")), default=staging.stat().st_mtime) \
        if staging.is_dir() else None
    requeued = _requeues(sweep_dir, entry["key"])
    if requeued and (state.startswith(SLURM_WAITING) or last_write is None or last_write <= requeued["time"]):
        return "requeued", f"requeued {requeued['count']} time(s), resumes from its last checkpoint"
    if last_write is not None and not state.startswith(SLURM_WAITING):
        times = f", requeued {requeued['count']} time(s)" if requeued else ""
        return "running", f"last write {(time.time() - last_write) / 60:.0f} min ago{times}"
    if job:
        return "queued", f"job {job}" + (f" ({scheduler})" if scheduler else "")
    return "missing", ""


def _requeues(sweep_dir: Path, key: str) -> dict | None:
    try:
        return json.loads(requeue_file(sweep_dir, key).read_text())
    except (OSError, ValueError):
        return None


def read_manifest(path: Path) -> dict:
    """A sweep's manifest.json: an object whose 'runs' list holds one object with a 'key' per run."""
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:  # UnicodeDecodeError is a ValueError
        raise UserError(f"{path}: unreadable ({type(exc).__name__}: {str(exc)[:200]})") from None
    runs = manifest.get("runs") if isinstance(manifest, dict) else None
    if not isinstance(runs, list) or not all(isinstance(r, dict) and isinstance(r.get("key"), str) for r in runs):
        raise UserError(f"{path}: not a sweep manifest (expected an object with a 'runs' list of {{'key': ...}})")
    return manifest


def status(results: Path, sweep: str | None = None) -> list[dict]:
    """Rows (key, state, detail) of the newest sweep under ``results`` (or the named one)."""
    root = Path(results) / SWEEPS
    sweeps = sorted(p.name for p in root.iterdir() if (p / "manifest.json").is_file()) if root.is_dir() else []
    if not sweeps:
        raise UserError(f"{results}: no sweep found (no {SWEEPS}/*/manifest.json)")
    name = sweep or sweeps[-1]
    if name not in sweeps:
        raise UserError(f"--sweep {name}: not found under {root} (found: {', '.join(sweeps)})")
    sweep_dir = root / name
    manifest = read_manifest(sweep_dir / "manifest.json")
    pending = [r for r in manifest["runs"] if not is_complete(Path(results) / r["key"])]
    states = scheduler_states({**manifest, "runs": pending}, sweep_dir)
    rows = []
    for entry in manifest["runs"]:
        state, detail = run_state(Path(results), sweep_dir, entry, states.get(entry.get("job_id") or "", ""))
        rows.append({"key": entry["key"], "state": state, "detail": detail})
    return rows
