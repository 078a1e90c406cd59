"""Submit a sweep's runs through submitit and record the sweep's manifest.

Each job is one ``ssbench run`` with ``--resume``: a job that Slurm preempts or times out is requeued by submitit
(``checkpoint`` below) and continues from the run's last periodic checkpoint; a failed job leaves its one-line
error in the sweep folder for ``ssbench sweep status``.

GPUs. A job gets ``gpus_per_job`` GPUs and runs that many processes (submitit tasks, one DistributedDataParallel
rank each). On this machine (``--executor local``) the GPUs are handed out by index: job k sees only its own
(``CUDA_VISIBLE_DEVICES``), and ``--parallel`` defaults to as many jobs as fit. Where GPUs exist, ``--device auto``
means CUDA inside every job: a job that cannot see its GPU fails with one line instead of training on the CPU.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import io
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ssbench.atomic import write_json, write_text
from ssbench.errors import UserError

EXECUTORS = ("local", "slurm", "debug")
SWEEPS = ".sweeps"  # under the results root; ssbench table ignores it (no run.json inside)


@dataclass(frozen=True)
class SlurmOptions:
    """How each job is booked. ``gpus_per_job``, ``timeout_min`` and ``setup`` apply to local jobs too."""

    partition: str | None = None
    gpus_per_job: int = 1
    cpus_per_job: int = 8
    timeout_min: int = 24 * 60
    array_parallelism: int = 16
    account: str | None = None
    qos: str | None = None
    mem_gb: int | None = None
    extra: tuple[str, ...] = ()  # further #SBATCH parameters, each "key=value" (e.g. constraint=a100)
    setup: tuple[str, ...] = ()  # shell lines run before each job (module load ..., source venv/bin/activate)

    def submitit_parameters(self) -> dict:
        """submitit's own fields for these options (Slurm)."""
        params = {"name": "ssbench", "timeout_min": self.timeout_min, "nodes": 1,
                  "tasks_per_node": max(1, self.gpus_per_job), "cpus_per_task": self.cpus_per_job,
                  "slurm_array_parallelism": self.array_parallelism}
        if self.gpus_per_job:
            params["gpus_per_node"] = self.gpus_per_job
        if self.partition:
            params["slurm_partition"] = self.partition
        if self.account:
            params["slurm_account"] = self.account
        if self.qos:
            params["slurm_qos"] = self.qos
        if self.mem_gb:
            params["mem_gb"] = self.mem_gb
        if self.extra:
            params["slurm_additional_parameters"] = parse_extra(self.extra)
        if self.setup:
            params["slurm_setup"] = list(self.setup)
        return params

    def sbatch_script(self, runs: int, folder: Path) -> str:
        """The sbatch script submitit writes for ``runs`` jobs, one array (``--dry-run`` prints it): submitit's
        own parameter names translated as its Slurm executor translates them."""
        from submitit.slurm.slurm import SlurmExecutor, _convert_mem, _make_sbatch_string

        names = SlurmExecutor._equivalence_dict()
        params = {}
        for key, value in self.submitit_parameters().items():
            key = key[len("slurm_"):] if key.startswith("slurm_") else names.get(key, key)
            params[key] = _convert_mem(value) if key == "mem" else value
        command = " ".join([shlex.quote(sys.executable), "-u -m submitit.core._submit", shlex.quote(str(folder))])
        if runs > 1:  # submitit submits a single run as a plain job
            params["map_count"] = runs
        return _make_sbatch_string(command=command, folder=folder, **params)


def check_scheduler(executor: str) -> None:
    """A Slurm sweep needs Slurm's commands on this machine (a login node): said in one line, before anything is
    planned or written."""
    if executor != "slurm":
        return
    missing = [c for c in ("sbatch", "srun") if shutil.which(c) is None]
    if missing:
        raise UserError(f"--executor slurm: no Slurm on this machine ({' and '.join(missing)} not on PATH); run the "
                        "sweep on a login node of the cluster, or add --dry-run to see the sbatch script and commands")


def command_line(req) -> str:
    """The ``ssbench run`` command that does what a sweep job does with ``req`` (``--dry-run`` prints it)."""
    parts = ["ssbench", "run", "--method", req.method, "--dataset", req.dataset]
    if req.data_root:
        parts += ["--data-root", str(req.data_root)]
    parts += ["--split", req.split]
    for option, value in (("--split-seed", req.split_seed), ("--seed", req.seed), ("--iters", req.iters)):
        if value is not None:
            parts += [option, str(value)]
    for item in req.sets:
        parts += ["--set", item]
    parts += ["--out", str(req.out), "--device", req.device, "--resume"]
    if req.world and req.world > 1:
        parts += ["--gpus", str(req.world)]
    return shlex.join(parts)


def job_requests(todo: list, executor: str, slurm: SlurmOptions, gpus: list[int]) -> list:
    """Where jobs have GPUs, ``--device auto`` means CUDA: never a silent CPU run."""
    if gpus or (executor == "slurm" and slurm.gpus_per_job):
        return [dataclasses.replace(p, request=dataclasses.replace(p.request, device="cuda"))
                if p.request.device == "auto" else p for p in todo]
    return todo


def dry_run(planned: list, out: Path, executor: str, slurm: SlurmOptions) -> list[str]:
    """What a sweep would submit, as text: the sbatch script (Slurm) and one command per run. Nothing is written."""
    if executor not in EXECUTORS:
        raise UserError(f"--executor {executor}: expected one of {', '.join(EXECUTORS)}")
    todo = job_requests([p for p in planned if not p.complete], executor, slurm, [])
    lines = [f"skip    {p.key} (complete)" for p in planned if p.complete]
    if executor == "slurm" and todo:
        folder = Path(out).absolute() / SWEEPS / "SWEEP-ID" / "submitit"  # the id is the time of submission
        lines += [f"# the sbatch script of the job array ({len(todo)} runs, one array task each):",
                  slurm.sbatch_script(len(todo), folder).rstrip()]
    lines.append(f"# each {'array task' if executor == 'slurm' else 'job'} runs the equivalent of:")
    lines += [f"{command_line(p.request)}  # {p.key}" for p in todo]
    lines.append("dry run: nothing submitted, nothing written")
    return lines


def parse_extra(items: tuple[str, ...]) -> dict:
    out = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise UserError(f"--slurm-param {item}: expected key=value (an sbatch option without its dashes)")
        out[key.strip().replace("-", "_")] = value.strip()
    return out


def error_file(sweep_dir: Path, key: str) -> Path:
    return sweep_dir / "errors" / (key.replace("/", "__") + ".txt")


def requeue_file(sweep_dir: Path, key: str) -> Path:
    return sweep_dir / "requeued" / (key.replace("/", "__") + ".json")


class RunJob:
    """A run of the sweep as submitit calls it, ``job(key, request)``; a requeued run resumes (submitit's
    Checkpointable protocol: ``checkpoint`` returns the same call again)."""

    def __init__(self, sweep_dir: str):
        self.sweep_dir = sweep_dir
        self._requeued = False

    def __call__(self, key: str, request) -> str:
        from ssbench.engine.run import execute

        errors = error_file(Path(self.sweep_dir), key)
        errors.unlink(missing_ok=True)
        world = _join_job_processes()
        print(f"ssbench job {key}: {world} process(es), device {request.device}, CUDA_VISIBLE_DEVICES="
              f"{os.environ.get('CUDA_VISIBLE_DEVICES', '(unset)')}", flush=True)
        try:
            return str(execute(request, console=_log_console()))
        except BaseException as exc:
            if self._requeued:  # submitit's signal handler requeued this run and exits: not a failure
                raise
            line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            write_text(errors, f"{type(exc).__name__}: {line}\n")
            raise

    def checkpoint(self, key: str, request):
        """Called by submitit on preemption or timeout: the same run again, resuming from its checkpoint. Recorded
        so that ``sweep status`` says *requeued* (submitit then ends this process with ``SystemExit``)."""
        import submitit

        self._requeued = True
        marker = requeue_file(Path(self.sweep_dir), key)
        try:
            count = json.loads(marker.read_text())["count"]
        except (OSError, ValueError, KeyError, TypeError):
            count = 0
        write_json(marker, {"count": count + 1, "time": time.time()})
        return submitit.helpers.DelayedSubmission(self, key, request)


def _join_job_processes() -> int:
    """In a job of several submitit tasks, export what torch.distributed's env:// needs (each task one rank,
    each using the GPU of its local rank among the job's); returns the number of processes."""
    import submitit

    try:
        env = submitit.JobEnvironment()
    except RuntimeError:  # not inside a submitit job (the debug executor calls in-process)
        return 1
    if env.num_tasks > 1 and "WORLD_SIZE" not in os.environ:
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    return env.num_tasks


def _log_console():
    """A job has no terminal: the engine then logs plain progress lines (to the job's log file)."""
    from rich.console import Console

    return Console(force_terminal=False)


def visible_gpus() -> list[int]:
    """The GPUs local jobs may use, by index: ``CUDA_VISIBLE_DEVICES`` where set, else every GPU torch sees."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        items = [x.strip() for x in env.split(",") if x.strip()]
        try:
            ids = [int(x) for x in items]
        except ValueError:
            raise UserError(f"CUDA_VISIBLE_DEVICES={env}: a local sweep hands GPUs to its jobs by index; set it to "
                            "indices (e.g. 0,1) or unset it") from None
        return [i for i in ids if i >= 0]
    import torch

    return list(range(torch.cuda.device_count()))


def prepare_resources(planned: list, say=print) -> None:
    """What the runs load from outside (pretrained weights), resolved once here, before any job starts: each
    distinct method config is asked once (``Method.prepare``), so that no array task downloads on its own."""
    seen = set()
    for p in planned:
        if p.complete:
            continue
        cfg, method_cls = p.plan.cfg, p.plan.method_cls
        key = (cfg.method_name, repr(cfg.method_config))
        if key in seen:
            continue
        seen.add(key)
        for line in method_cls.prepare(cfg.method_config, cfg.data.synthetic) or ():
            say(line)


def launch(planned: list, out: Path, executor: str, slurm: SlurmOptions, local_parallel: int | None,
           say=print) -> Path | None:
    """Submit the incomplete runs of ``planned``; return the sweep folder (with manifest.json), or None when
    nothing was left to run (then nothing is written)."""
    import submitit

    if executor not in EXECUTORS:
        raise UserError(f"--executor {executor}: expected one of {', '.join(EXECUTORS)}")
    todo = [p for p in planned if not p.complete]
    for p in planned:
        if p.complete:
            say(f"skip    {p.key} (complete)")
    gpus, parallel = _local_gpus(todo, executor, slurm, local_parallel)
    todo = job_requests(todo, executor, slurm, gpus)
    if not todo:
        say("nothing to run: every run of the grid is complete (nothing submitted, no manifest written)")
        return None
    prepare_resources(todo, say)
    sweep_id = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    sweep_dir = Path(out) / SWEEPS / sweep_id
    for k in range(2, 1000):  # two sweeps in one second (e.g. a grid, then its upper bound) keep their own folders
        if not sweep_dir.exists():
            break
        sweep_id = f"{sweep_id.split('.')[0]}.{k}"
        sweep_dir = Path(out) / SWEEPS / sweep_id
    manifest = {"sweep": sweep_id, "executor": executor, "created": dt.datetime.now().isoformat(timespec="seconds"),
                "slurm": asdict(slurm) if executor == "slurm" else None,
                "local": {"gpus": gpus, "gpus_per_job": slurm.gpus_per_job, "parallel": parallel}
                if executor == "local" else None,
                "runs": [{"key": p.key, "complete_before": p.complete, "job_id": None} for p in planned]}
    jobs_by_key = {}
    if executor == "slurm":  # the manifest is written once the array is submitted: a refusal leaves nothing
        try:  # sbatch's own error comes back in the one line below (submitit would print it as well)
            with contextlib.redirect_stderr(io.StringIO()):
                ex = submitit.AutoExecutor(folder=sweep_dir / "submitit", cluster="slurm")
                ex.update_parameters(**slurm.submitit_parameters())
                jobs = ex.map_array(RunJob(str(sweep_dir)), [p.key for p in todo], [p.request for p in todo])
        except (RuntimeError, OSError, ValueError, subprocess.SubprocessError) as exc:
            _discard(sweep_dir)
            detail = getattr(exc, "stderr", None) or str(exc) or type(exc).__name__
            detail = detail.decode(errors="replace") if isinstance(detail, bytes) else str(detail)
            raise UserError(f"--executor slurm: the submission failed, nothing was submitted "
                            f"({' '.join(detail.split())[:300]})") from None
        jobs_by_key = {p.key: j for p, j in zip(todo, jobs)}
        what = (f"job array {jobs[0].job_id.split('_')[0]} (at most {slurm.array_parallelism} at once)" if len(jobs) > 1
                else f"job {jobs[0].job_id}")  # submitit submits a single run as a plain job
        say(f"submitted {len(jobs)} run{'s' if len(jobs) > 1 else ''} as Slurm {what}; follow with: ssbench sweep "
            f"status {out}")
    else:  # the local executor itself: AutoExecutor does not pass on visible_gpus. The manifest is written at the
        # first job's start, and updated as each starts (for ``sweep status`` meanwhile).
        ex = (submitit.DebugExecutor if executor == "debug" else submitit.LocalExecutor)(folder=sweep_dir / "submitit")
        jobs_by_key = _run_locally(ex, sweep_dir, todo, parallel, slurm, gpus, say,
                                   on_submit=lambda key, job: _record_job(sweep_dir, manifest, key, job))
    for entry in manifest["runs"]:
        job = jobs_by_key.get(entry["key"])
        entry["job_id"] = str(job.job_id) if job is not None else None
    write_json(sweep_dir / "manifest.json", manifest)
    return sweep_dir


def _discard(sweep_dir: Path) -> None:
    """Remove what a refused submission left (submitit's pickles), and the sweeps folder if it is empty now."""
    shutil.rmtree(sweep_dir, ignore_errors=True)
    try:
        sweep_dir.parent.rmdir()
    except OSError:
        pass


def _record_job(sweep_dir: Path, manifest: dict, key: str, job) -> None:
    """A local job's id (its process) in the manifest as soon as it starts, for ``sweep status`` meanwhile."""
    for entry in manifest["runs"]:
        if entry["key"] == key:
            entry["job_id"] = str(job.job_id)
    write_json(sweep_dir / "manifest.json", manifest)


def _local_gpus(todo: list, executor: str, slurm: SlurmOptions, parallel: int | None) -> tuple[list[int], int]:
    """(GPU indices to hand out, jobs at once) of a local sweep; no GPUs for CPU runs or the debug executor."""
    if executor == "debug":
        return [], 1
    if executor != "local":
        return [], parallel or 1
    gpus = visible_gpus() if slurm.gpus_per_job and any(p.request.device != "cpu" for p in todo) else []
    if not gpus:
        if any(p.request.device == "cuda" for p in todo):
            raise UserError("--device cuda: this machine shows no GPU to the sweep (CUDA_VISIBLE_DEVICES="
                            f"{os.environ.get('CUDA_VISIBLE_DEVICES', '(unset)')})")
        return [], parallel or 1
    fit = len(gpus) // slurm.gpus_per_job
    if fit == 0:
        raise UserError(f"--gpus-per-job {slurm.gpus_per_job}: this machine has {len(gpus)} GPU(s) ({gpus})")
    if parallel is not None and parallel > fit:
        raise UserError(f"--parallel {parallel}: {len(gpus)} GPU(s) hold {fit} job(s) of {slurm.gpus_per_job} "
                        "GPU(s) at once")
    return gpus, parallel or fit


def _run_locally(ex, sweep_dir: Path, todo: list, parallel: int, options: SlurmOptions, gpus: list[int], say,
                 on_submit) -> dict:
    """Local processes (in-process for 'debug', whose jobs run when their result is asked for), at most
    ``parallel`` at once, each holding its own ``gpus_per_job`` GPUs; waits for all of them."""
    import submitit

    per_job = options.gpus_per_job if gpus else 0
    free = list(gpus)
    pending, running, jobs = list(todo), [], {}
    while pending or running:
        while pending and len(running) < max(1, parallel):
            p = pending.pop(0)
            held, free = free[:per_job], free[per_job:]
            if isinstance(ex, submitit.LocalExecutor):
                ex.update_parameters(timeout_min=options.timeout_min, gpus_per_node=per_job, visible_gpus=held,
                                     tasks_per_node=max(1, per_job), setup=list(options.setup))
            jobs[p.key] = job = ex.submit(RunJob(str(sweep_dir)), p.key, p.request)
            on_submit(p.key, job)
            running.append((p, job, held))
            say(f"start   {p.key}" + (f" on GPU {','.join(map(str, held))}" if held else ""))
        for p, job, held in list(running):
            if parallel > 1 and not job.done():
                continue
            running.remove((p, job, held))
            free += held
            try:
                job.result()
                say(f"done    {p.key}")
            except Exception:  # the run's own error line was recorded by RunJob
                err = error_file(sweep_dir, p.key)
                say(f"FAILED  {p.key}: {err.read_text().strip() if err.is_file() else 'see the job log'}")
        if running:
            time.sleep(0.5)
    return jobs
