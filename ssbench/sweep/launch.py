"""Submit a sweep's runs through submitit and record the sweep's manifest.

Each job is one ``ssbench run`` with ``--resume``: a job that Slurm preempts or times out is requeued by submitit
(``checkpoint`` below) and continues from the run's last periodic checkpoint; a failed job leaves its one-line
error in the sweep folder for ``ssbench sweep status``.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ssbench.atomic import write_json, write_text
from ssbench.errors import UserError

EXECUTORS = ("local", "slurm", "debug")
SWEEPS = ".sweeps"  # under the results root; ssbench table ignores it (no run.json inside)


@dataclass(frozen=True)
class SlurmOptions:
    partition: str | None = None
    gpus_per_job: int = 1
    cpus_per_job: int = 8
    timeout_min: int = 24 * 60
    array_parallelism: int = 16


def error_file(sweep_dir: Path, key: str) -> Path:
    return sweep_dir / "errors" / (key.replace("/", "__") + ".txt")


class RunJob:
    """A run of the sweep as submitit calls it, ``job(key, request)``; a requeued run resumes (submitit's
    Checkpointable protocol: ``checkpoint`` returns the same call again)."""

    def __init__(self, sweep_dir: str):
        self.sweep_dir = sweep_dir

    def __call__(self, key: str, request) -> str:
        from ssbench.engine.run import execute

        errors = error_file(Path(self.sweep_dir), key)
        errors.unlink(missing_ok=True)
        try:
            return str(execute(request, console=_log_console()))
        except BaseException as exc:  # record the one line, then let submitit see the failure
            line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            write_text(errors, f"{type(exc).__name__}: {line}\n")
            raise

    def checkpoint(self, key: str, request):
        """Called by submitit on preemption or timeout: the same run again, resuming from its checkpoint."""
        import submitit

        return submitit.helpers.DelayedSubmission(self, key, request)


def _log_console():
    """A job has no terminal: the engine then logs plain progress lines (to the job's log file)."""
    from rich.console import Console

    return Console(force_terminal=False)


def launch(planned: list, out: Path, executor: str, slurm: SlurmOptions, local_parallel: int, say=print) -> Path:
    """Submit the incomplete runs of ``planned``; return the sweep folder (with manifest.json)."""
    import submitit

    if executor not in EXECUTORS:
        raise UserError(f"--executor {executor}: expected one of {', '.join(EXECUTORS)}")
    todo = [p for p in planned if not p.complete]
    for p in planned:
        if p.complete:
            say(f"skip    {p.key} (complete)")
    sweep_id = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    sweep_dir = Path(out) / SWEEPS / sweep_id
    manifest = {"sweep": sweep_id, "executor": executor, "created": dt.datetime.now().isoformat(timespec="seconds"),
                "slurm": asdict(slurm) if executor == "slurm" else None,
                "runs": [{"key": p.key, "complete_before": p.complete, "job_id": None} for p in planned]}
    write_json(sweep_dir / "manifest.json", manifest)
    if not todo:
        say("nothing to run: every run of the grid is complete")
        return sweep_dir
    jobs_by_key = {}
    if executor == "slurm":
        ex = submitit.AutoExecutor(folder=sweep_dir / "submitit", cluster="slurm")
        params = {"name": "ssbench", "timeout_min": slurm.timeout_min, "gpus_per_node": slurm.gpus_per_job,
                  "cpus_per_task": slurm.cpus_per_job, "tasks_per_node": 1, "nodes": 1,
                  "slurm_array_parallelism": slurm.array_parallelism}
        if slurm.partition:
            params["slurm_partition"] = slurm.partition
        ex.update_parameters(**params)
        jobs = ex.map_array(RunJob(str(sweep_dir)), [p.key for p in todo], [p.request for p in todo])
        jobs_by_key = {p.key: j for p, j in zip(todo, jobs)}
        say(f"submitted {len(jobs)} runs as Slurm job array {jobs[0].job_id.split('_')[0]} "
            f"(at most {slurm.array_parallelism} at once); follow with: ssbench sweep status {out}")
    else:
        ex = submitit.AutoExecutor(folder=sweep_dir / "submitit", cluster="debug" if executor == "debug" else "local")
        if executor == "local":
            ex.update_parameters(timeout_min=slurm.timeout_min)
        jobs_by_key = _run_locally(ex, sweep_dir, todo, 1 if executor == "debug" else local_parallel, say)
    for entry in manifest["runs"]:
        job = jobs_by_key.get(entry["key"])
        entry["job_id"] = str(job.job_id) if job is not None else None
    write_json(sweep_dir / "manifest.json", manifest)
    return sweep_dir


def _run_locally(ex, sweep_dir: Path, todo: list, parallel: int, say) -> dict:
    """Local processes (in-process for 'debug', whose jobs run when their result is asked for), at most
    ``parallel`` at once; waits for all of them."""
    pending, running, jobs = list(todo), [], {}
    while pending or running:
        while pending and len(running) < max(1, parallel):
            p = pending.pop(0)
            jobs[p.key] = job = ex.submit(RunJob(str(sweep_dir)), p.key, p.request)
            running.append((p, job))
            say(f"start   {p.key}")
        for p, job in list(running):
            if parallel > 1 and not job.done():
                continue
            running.remove((p, job))
            try:
                job.result()
                say(f"done    {p.key}")
            except Exception:  # the run's own error line was recorded by RunJob
                err = error_file(sweep_dir, p.key)
                say(f"FAILED  {p.key}: {err.read_text().strip() if err.is_file() else 'see the job log'}")
        if running:
            time.sleep(0.5)
    return jobs
