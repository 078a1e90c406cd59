"""Where a run's curves go while it trains: TensorBoard event files in the run folder (the default), W&B and MLflow
on request (``ssbench run --log tensorboard,wandb,mlflow``; ``none`` for no tracking). Recorded in run.json
("tracking"), never in the config or its hash: where curves go does not change what is trained.

The contract with the training loop:

- The engine hands over values it already holds on the host, at its log rows (``Tracker.log``) and validations
  (``Tracker.image``); nothing here reads a tensor. Each backend runs on its own worker thread behind a queue, so
  the step never waits for a backend (a slow disk, a network). ``flush`` (at checkpoints, before ``last.pt`` is
  written) waits for TensorBoard's queue only, at most ``FLUSH_TIMEOUT_S``.
- A backend that fails (package missing, disk full, no network) prints one warning line, is dropped for the rest
  of the run, and is named in run.json; training goes on.
- Resume: each step is in every backend exactly once. TensorBoard's event files are cut back to the checkpoint's
  step (``compact_events``); W&B offline and MLflow replace the interrupted attempt's run by a new one with the
  same id and name and replay the rows up to the checkpoint (``Tracker.history``, saved in ``last.pt``).
- Only rank 0 has a tracker (DDP).
"""

from __future__ import annotations

import hashlib
import os
import queue
import shutil
import sys
import threading
import time
from pathlib import Path

import numpy as np

from ssbench.errors import UserError, first_line
from ssbench.events import TB_FOLDER, event_files

BACKENDS = ("tensorboard", "wandb", "mlflow")
DEFAULT = ("tensorboard",)
FLUSH_TIMEOUT_S = 60.0
CLOSE_TIMEOUT_S = 120.0


def parse_backends(text: str | None) -> tuple[str, ...]:
    """``--log``: a comma-separated list of backends, or ``none``."""
    if text is None:
        return DEFAULT
    names = tuple(dict.fromkeys(n.strip().lower() for n in text.split(",") if n.strip()))
    if names == ("none",):
        return ()
    bad = [n for n in names if n not in BACKENDS]
    if bad or not names:
        raise UserError(f"--log {text}: unknown backend {bad[0] if bad else '(empty)'!r} "
                        f"(choose from {', '.join(BACKENDS)}, or none)")
    return names


def tag(column: str) -> str:
    """The tracked name of a train_log.csv column: ``val_dice`` -> ``val/dice``, ``elapsed_s`` ->
    ``time/elapsed_s``, every loss term, diagnostic and ``lr`` -> ``train/<column>``."""
    if column.startswith("val_"):
        return "val/" + column[4:]
    if column == "elapsed_s":
        return "time/elapsed_s"
    return "train/" + column


def row_scalars(row: dict, optimizer=None, per_class: dict | None = None) -> dict[str, float]:
    """What the engine tracks at a log row: every numeric column of the row (its train_log.csv line), the learning
    rate of each parameter group (host floats), the validation Dice of each class."""
    out = {tag(k): float(v) for k, v in row.items()
           if k not in ("iteration", "stage") and isinstance(v, (int, float)) and not isinstance(v, bool)}
    if optimizer is not None:
        for name, opt in optimizer.optimizers.items():
            for i, group in enumerate(opt.param_groups):
                out[f"lr/{name}/group{i}"] = float(group["lr"])
    for cls, value in (per_class or {}).items():
        out[f"val/dice_{cls}"] = float(value)
    return out


def overlay(image: np.ndarray, label: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    """One validation slice as an RGB uint8 picture (H, 3W): the image, the ground truth over it, the prediction
    over it (classes in ColorBrewer Set1 colours, half transparent)."""
    lo, hi = float(image.min()), float(image.max())
    gray = ((image - lo) / (hi - lo) if hi > lo else np.zeros_like(image)).astype(np.float32)
    base = np.repeat(gray[..., None], 3, axis=-1)
    colors = np.array([(228, 26, 28), (55, 126, 184), (77, 175, 74), (152, 78, 163), (255, 127, 0),
                       (255, 255, 51), (166, 86, 40), (247, 129, 191)], dtype=np.float32) / 255

    def paint(mask):
        out = base.copy()
        for c in range(1, num_classes):
            where = mask == c
            out[where] = 0.5 * out[where] + 0.5 * colors[(c - 1) % len(colors)]
        return out

    return (np.concatenate([base, paint(label), paint(pred)], axis=1) * 255).round().astype(np.uint8)


class Backend:
    """One place curves go. ``open`` is given the step the run continues from (0: a fresh start) and the scalar
    rows logged up to it (for a backend that cannot cut its own record back)."""

    name = ""
    flushes = False  # writes files a resume cuts back (TensorBoard): a checkpoint waits until they are written

    def __init__(self, folder: Path, meta: dict):
        self.folder, self.meta = folder, meta

    def open(self, step: int, history: list[dict]) -> None: ...

    def scalars(self, step: int, values: dict[str, float]) -> None: ...

    def image(self, step: int, name: str, picture: np.ndarray) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


class TensorBoard(Backend):
    name = "tensorboard"
    flushes = True

    def open(self, step, history):
        from torch.utils.tensorboard import SummaryWriter

        folder = self.folder / TB_FOLDER
        if step > 0:
            compact_events(folder, step)
        elif folder.exists():  # a fresh start inherits no curve of an earlier attempt
            shutil.rmtree(folder)
        self.writer = SummaryWriter(str(folder), flush_secs=30)
        if step == 0:
            self.writer.add_text("config", "```\n" + self.meta["config_yaml"] + "\n```", 0)
            self._hparams()

    def _hparams(self):
        # In this run's own event file (SummaryWriter.add_hparams would open a second run beside it).
        from torch.utils.tensorboard.summary import hparams

        flat = {k: v for k, v in self.meta["config_flat"].items() if isinstance(v, (bool, int, float, str))}
        for summary in hparams(flat, {"val/dice": 0.0}):
            self.writer.file_writer.add_summary(summary)

    def scalars(self, step, values):
        for k, v in values.items():
            self.writer.add_scalar(k, v, step)

    def image(self, step, name, picture):
        self.writer.add_image(name, picture, step, dataformats="HWC")

    def flush(self):
        self.writer.flush()

    def close(self):
        self.writer.close()


def compact_events(folder: Path, step: int) -> None:
    """Cut a run's TensorBoard record back to ``step`` (the checkpoint a resumed run continues from): every event
    up to it, once (an event of a tag and step seen before is dropped), in one file put in place in one rename (named
    to sort first); the others are deleted after. Killed in between, the next resume cuts again."""
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    files = event_files(folder)
    if not files:
        return
    kept, seen = [], set()
    for path in files:
        for record in RawEventFileLoader(str(path)).Load():  # as written (EventFileLoader would convert them)
            event = Event.FromString(record)
            if event.HasField("file_version") or event.step > step:
                continue
            if event.HasField("summary"):
                key = (event.step, tuple(v.tag for v in event.summary.value))
                if key in seen:
                    continue
                seen.add(key)
            kept.append(event)
    scratch = folder / ".compact"
    shutil.rmtree(scratch, ignore_errors=True)
    writer = EventFileWriter(str(scratch))
    for event in kept:
        writer.add_event(event)
    writer.close()
    (written,) = event_files(scratch)
    # A name that sorts before any file a later writer creates (readers load a folder's files in name order, and a
    # resumed process may have an older pid or the same second as the killed one): the steps stay in order.
    target = folder / COMPACTED
    os.replace(written, target)
    for path in files:
        if path != target:
            path.unlink()
    shutil.rmtree(scratch)


COMPACTED = "events.out.tfevents.0000000000.compacted"


class WandB(Backend):
    """Weights & Biases, offline unless ``WANDB_MODE`` says otherwise (``wandb sync`` uploads later). The run id
    follows from the results folder and config hash, so a resumed run is the same W&B run; sweep jobs are grouped
    by their results root."""

    name = "wandb"

    def open(self, step, history):
        import wandb

        mode = os.environ.get("WANDB_MODE", "offline")
        meta = self.meta
        if mode == "offline":  # the interrupted attempt's offline record is replaced by a replay up to the step
            for old in (self.folder / "wandb").glob(f"offline-run-*-{meta['run_id']}"):
                shutil.rmtree(old)
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "ssbench"), id=meta["run_id"],
                              name=meta["name"], group=meta["group"], job_type=meta["method"], dir=str(self.folder),
                              mode=mode, resume="allow", config=meta["config_flat"],
                              settings=wandb.Settings(console="off", silent=True, x_disable_stats=True))
        for row in history:
            self.run.log({k: v for k, v in row.items() if k != "step"}, step=row["step"])

    def scalars(self, step, values):
        self.run.log(values, step=step)

    def image(self, step, name, picture):
        import wandb

        self.run.log({name: wandb.Image(picture)}, step=step)

    def close(self):
        self.run.finish()


class MLflow(Backend):
    """MLflow: the tracking URI of ``MLFLOW_TRACKING_URI``, else a SQLite store in the run folder (``mlflow.db``;
    MLflow 3 refuses new file stores);
    one experiment per results root (a sweep). A resumed run deletes the interrupted attempt's MLflow run and
    replays the rows up to the checkpoint into a new one."""

    name = "mlflow"

    def open(self, step, history):
        import mlflow

        meta = self.meta
        uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(self.folder / 'mlflow.db').resolve()}"
        self.client = mlflow.MlflowClient(tracking_uri=uri)
        experiment = self.client.get_experiment_by_name(meta["group"])
        exp_id = experiment.experiment_id if experiment else self.client.create_experiment(meta["group"])
        for old in self.client.search_runs([exp_id], f"tags.ssbench_run_id = '{meta['run_id']}'"):
            self.client.delete_run(old.info.run_id)
        self.run_id = self.client.create_run(exp_id, run_name=meta["name"],
                                             tags={"ssbench_run_id": meta["run_id"]}).info.run_id
        for k, v in list(meta["config_flat"].items())[:100]:
            self.client.log_param(self.run_id, k, str(v)[:500])
        for row in history:
            self.scalars(row["step"], {k: v for k, v in row.items() if k != "step"})

    def scalars(self, step, values):
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k.replace("/", "."), v, now, step)
                                                    for k, v in values.items()])

    def image(self, step, name, picture):
        self.client.log_image(self.run_id, picture, key=name.replace("/", "."), step=step)

    def close(self):
        self.client.set_terminated(self.run_id)


BACKEND_CLASSES = {"tensorboard": TensorBoard, "wandb": WandB, "mlflow": MLflow}


def run_meta(cfg, final_dir: Path, out: str) -> dict:
    """What the backends name a run with: a stable id (results folder and config hash), its folder as name, its
    results root as group (a sweep's jobs share one), the resolved config flat and as YAML."""
    import yaml

    config = {"config_hash": cfg.hash(), **cfg.to_dict()}
    key = f"{Path(final_dir).resolve()}:{cfg.hash()}"
    return {"run_id": hashlib.sha256(key.encode()).hexdigest()[:16], "name": str(Path(final_dir)),
            "group": Path(out).resolve().name or "ssbench", "method": cfg.method_name,
            "config_flat": _flatten(config), "config_yaml": yaml.safe_dump(config, sort_keys=False)}


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v if isinstance(v, (bool, int, float, str)) or v is None else str(v)
    return out


def _warn_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Tracker:
    """The backends of one run (rank 0), each fed through its own worker thread (a slow network backend never
    holds up another). ``history`` holds every scalar row logged (saved in ``last.pt``), for the backends that
    replay on resume."""

    def __init__(self, names, folder: Path, meta: dict, warn=_warn_stderr, class_names=(), picture_cases=None):
        self.names = tuple(names)
        self.class_names = list(class_names)
        # The cases whose pictures may be shown: the validation cases (never a test case, even when a legacy
        # protocol selects on val+test); None: any.
        self.picture_cases = picture_cases
        self.backends = [BACKEND_CLASSES[n](Path(folder), meta) for n in self.names]
        self.warn = warn
        self.failed: dict[str, str] = {}
        self.history: list[dict] = []
        self.workers: list[tuple[Backend, queue.Queue, threading.Thread]] = []

    def record(self) -> dict:
        """run.json's "tracking": the backends asked for, and those that failed (with why)."""
        return {"backends": list(self.names), "failed": dict(self.failed)}

    def start(self, step: int = 0, history: list[dict] | None = None) -> None:
        self.history = [r for r in (history or []) if r["step"] <= step]
        for backend in self.backends:
            q: queue.Queue = queue.Queue()
            thread = threading.Thread(target=self._work, args=(backend, q), name=f"ssbench-{backend.name}",
                                      daemon=True)
            thread.start()
            q.put(("open", (step, list(self.history))))
            self.workers.append((backend, q, thread))

    def _put(self, op: str, args: tuple) -> None:
        for _, q, _ in self.workers:
            q.put((op, args))

    def log(self, step: int, values: dict[str, float]) -> None:
        self.history.append({"step": step, **values})
        self._put("scalars", (step, dict(values)))

    def image(self, step: int, name: str, picture: np.ndarray) -> None:
        self._put("image", (step, name, picture))

    def flush(self, timeout: float = FLUSH_TIMEOUT_S) -> None:
        """Wait (at most ``timeout`` in all) until each backend that writes files of its own (``Backend.flushes``:
        TensorBoard) has written what it was given: before a checkpoint, so that a resumed run finds each step up
        to it. The others replay on resume and are not waited for."""
        waits = []
        for backend, q, _ in self.workers:
            if backend.flushes:
                done = threading.Event()
                q.put(("flush", (done,)))
                waits.append(done)
        deadline = time.monotonic() + timeout
        for done in waits:
            done.wait(max(0.0, deadline - time.monotonic()))

    def close(self, timeout: float = CLOSE_TIMEOUT_S) -> None:
        self._put("close", ())
        deadline = time.monotonic() + timeout
        for _, _, thread in self.workers:
            thread.join(max(0.0, deadline - time.monotonic()))
        self.workers = []

    def _work(self, backend: Backend, q: queue.Queue) -> None:
        alive = True
        while True:
            op, args = q.get()
            if alive:
                try:
                    getattr(backend, op)(*(args if op != "flush" else ()))
                except Exception as exc:  # noqa: BLE001  (any failure of a backend: warn once, drop it)
                    alive = False
                    self.failed[backend.name] = f"{type(exc).__name__}: {first_line(exc)}"
                    self.warn(f"WARNING: tracking with {backend.name} failed during {op} "
                              f"({self.failed[backend.name]}); training goes on without it")
            if op == "flush":
                args[0].set()
            if op == "close":
                return
