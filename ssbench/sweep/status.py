"""``ssbench sweep status RESULTS``: each run of a sweep is done, running, failed, queued or missing."""

from __future__ import annotations

import json
import time
from pathlib import Path

from ssbench.errors import UserError
from ssbench.sweep.grid import is_complete
from ssbench.sweep.launch import SWEEPS, error_file

STATES = ("done", "running", "failed", "queued", "missing")


def run_state(results: Path, sweep_dir: Path, entry: dict) -> tuple[str, str]:
    """(state, detail) of one run of a sweep manifest."""
    run_dir = results / entry["key"]
    if is_complete(run_dir):
        return "done", ""
    err = error_file(sweep_dir, entry["key"])
    if err.is_file():
        return "failed", err.read_text().strip()
    staging = run_dir.with_name(f".{run_dir.name}.incomplete")
    if staging.is_dir():
        age = time.time() - max((p.stat().st_mtime for p in staging.rglob("*")), default=staging.stat().st_mtime)
        return "running", f"last write {age / 60:.0f} min ago"
    if entry.get("job_id"):
        return "queued", f"job {entry['job_id']}"
    return "missing", ""


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
    try:
        manifest = json.loads((sweep_dir / "manifest.json").read_text())
    except ValueError as exc:
        raise UserError(f"{sweep_dir / 'manifest.json'}: unreadable ({exc})") from None
    rows = []
    for entry in manifest["runs"]:
        state, detail = run_state(Path(results), sweep_dir, entry)
        rows.append({"key": entry["key"], "state": state, "detail": detail})
    return rows
