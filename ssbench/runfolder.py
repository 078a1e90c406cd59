"""The run folder, its one owner: the file names, how a run folder is written (a hidden staging folder, a lock,
one rename that publishes it) and how it is read back (run info, config and its hash, completeness, per-case rows).

Every module that reads or writes a run folder goes through here; ``docs/run-folder.md`` is the schema as a spec.

    <run>/config.yaml            RunConfig.to_dict() and its hash       (CONFIG)
    <run>/run.json               status, provenance, execution, warnings (RUN_INFO)
    <run>/split.json             the patient sets and their protocol    (SPLIT)
    <run>/train_log.csv          losses, lr, validation Dice            (TRAIN_LOG)
    <run>/checkpoints/best.pt    best validation Dice; final.pt          (CHECKPOINTS, BEST, FINAL)
    <run>/predictions/best.npz   test label maps; final.npz             (PREDICTIONS)
    <run>/metrics_per_case.csv   case x class x checkpoint rows          (CASES)
    <run>/summary.json           means per checkpoint, the selection     (SUMMARY)
    <run>/evals/<empty>-<units>/ re-evaluations: CASES and SUMMARY      (EVALS)
    <run>/tensorboard/           TensorBoard event files                 (TENSORBOARD)

A folder is a finished run when, and only when, ``is_complete`` says so. A run is assembled in
``.<name>.incomplete`` beside its final place: readers ignore hidden folders.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from ssbench.atomic import make_dirs, write_csv, write_json, write_text, write_yaml
from ssbench.errors import UserError, first_line

CONFIG = "config.yaml"
RUN_INFO = "run.json"
SPLIT = "split.json"
TRAIN_LOG = "train_log.csv"
CASES = "metrics_per_case.csv"
SUMMARY = "summary.json"
CHECKPOINTS = "checkpoints"
BEST = "best.pt"
FINAL = "final.pt"
LAST = "last.pt"  # the periodic resume state, removed at publication
PREDICTIONS = "predictions"
EVALS = "evals"
TENSORBOARD = "tensorboard"  # the run's TensorBoard event files (engine.tracking writes them, ssbench.events reads)
LOCK = "LOCK"
STAGING_SUFFIX = ".incomplete"

# data fields that cannot change a number: recorded in config.yaml, left out of its hash (and of --resume's check)
UNHASHED_DATA = ("root", "device_budget_gb")
CHECKPOINT_NAMES = ("best", "final")  # the checkpoints a run evaluates on its test set, in this order
# What a finished run holds besides run.json's status 'complete' (written last): its results. The checkpoints are
# what ``ssbench eval`` re-evaluates, checked there (results shared without their weights are still results).
COMPLETE_FILES = (CONFIG, SPLIT, SUMMARY, CASES)


class Unreadable(UserError):
    """A run folder file that cannot be used; the message names the file (by its name only, or its path where the
    reader asks for it) and what is wrong."""


# ---------------------------------------------------------------------------------------------- names and places

def checkpoint_path(folder: Path, name: str) -> Path:
    """``checkpoints/<name>.pt`` ('best', 'final', 'last', '<stage>-best')."""
    return Path(folder) / CHECKPOINTS / f"{name}.pt"


def predictions_path(folder: Path, checkpoint: str) -> Path:
    return Path(folder) / PREDICTIONS / f"{checkpoint}.npz"


def evaluation_dir(folder: Path, empty: str, hd_units: str) -> Path:
    """Where ``ssbench eval`` (and ``eval.also_protocols``) write a re-evaluation under another metric policy."""
    return Path(folder) / EVALS / f"{empty}-{hd_units}"


def staging_of(final_dir: Path) -> Path:
    """The hidden folder a run is assembled in before it is published as ``final_dir``."""
    final_dir = Path(final_dir)
    return final_dir.with_name(f".{final_dir.name}{STAGING_SUFFIX}")


def is_hidden(folder: Path, root: Path | None = None) -> bool:
    """A staging folder, a replaced run moved aside, or anything inside a hidden folder (below ``root``)."""
    parts = Path(folder).relative_to(root).parts if root is not None else Path(folder).parts
    return any(p.startswith(".") and p not in (".", "..") for p in parts)


# ---------------------------------------------------------------------------------------------- reading

def read_json(path: Path, *, full_path: bool = False) -> dict:
    """A run file's JSON object; Unreadable naming the file otherwise."""
    name = str(path) if full_path else Path(path).name
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise Unreadable(f"{name}: missing") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise Unreadable(f"{name}: unreadable ({type(exc).__name__}: {first_line(exc)})") from None
    if not isinstance(data, dict):
        raise Unreadable(f"{name}: expected a mapping, got {type(data).__name__}")
    return data


def read_optional_json(path: Path) -> dict | None:
    try:
        return read_json(path)
    except Unreadable:
        return None


def read_yaml(path: Path, *, full_path: bool = False) -> dict:
    import yaml

    name = str(path) if full_path else Path(path).name
    try:
        data = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise Unreadable(f"{name}: missing") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise Unreadable(f"{name}: unreadable (malformed YAML: {type(exc).__name__}: {first_line(exc)})") from None
    if not isinstance(data, dict):
        raise Unreadable(f"{name}: expected a mapping, got {type(data).__name__}")
    return data


def read_info(folder: Path, *, full_path: bool = False) -> dict:
    return read_json(Path(folder) / RUN_INFO, full_path=full_path)


def recorded_hash(raw: dict) -> str:
    """The hash RunConfig.hash() gave when the run wrote ``raw`` (config.yaml; its hash line left out), computed from
    the file as written, so that a field added to a config class later does not make an old run look edited.
    ``ssbench eval`` and ``ssbench table`` compare it with the recorded hash: a config edited after the run is
    refused."""
    raw = {k: v for k, v in raw.items() if k != "config_hash"}
    from ssbench.fields import config_hash

    data = raw.get("data")
    d = {**raw, "data": {k: v for k, v in data.items() if k not in UNHASHED_DATA}} if isinstance(data, dict) else raw
    return config_hash(d)


def read_config(folder: Path, *, verify: bool = True, full_path: bool = False) -> tuple[dict, str | None]:
    """config.yaml as written (without its hash line) and the hash it records. ``verify``: the recorded hash must
    be the hash of what the file holds (a config edited after the run is refused)."""
    path = Path(folder) / CONFIG
    raw = read_yaml(path, full_path=full_path)
    recorded = raw.pop("config_hash", None)
    if verify and (recorded is None or recorded != recorded_hash(raw)):
        raise Unreadable(f"{path if full_path else CONFIG}: does not match its recorded config hash "
                         "(edited after the run?)")
    return raw, recorded


def is_complete(folder: Path) -> bool:
    """A finished run: run.json says 'complete' and every file a finished run holds is there. The one definition
    of "complete": publication, ``--resume``, ``ssbench eval``, the sweep and the tables all ask here."""
    folder = Path(folder)
    try:
        done = read_info(folder).get("status") == "complete"
    except Unreadable:
        return False
    return done and all((folder / f).is_file() for f in COMPLETE_FILES)


def missing_files(folder: Path, *, weights: bool = False) -> list[str]:
    """The files of a finished run that ``folder`` lacks, config.yaml first; ``weights``: its checkpoints too."""
    folder = Path(folder)
    wanted = (CONFIG, RUN_INFO, *COMPLETE_FILES[1:]) + ((f"{CHECKPOINTS}/{BEST}", f"{CHECKPOINTS}/{FINAL}") if weights else ())
    return [f for f in wanted if not (folder / f).is_file()]


def read_cases(path: Path, checkpoint: str | None = None):
    """A metrics_per_case.csv: the identity columns as text and every listed metric as a float column; Unreadable
    naming the file if a column is missing, a metric is not a number, or (``checkpoint``) it has no rows of it."""
    import pandas as pd

    from ssbench.metrics.catalog import metric_names

    path = Path(path)
    try:
        frame = pd.read_csv(path)
    except FileNotFoundError:
        raise Unreadable(f"{path.name}: missing") from None
    except (OSError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise Unreadable(f"{path.name}: unreadable ({type(exc).__name__}: {first_line(exc)})") from None
    missing = [c for c in CASE_ID_COLUMNS + metric_names() if c not in frame.columns]
    if missing:
        raise Unreadable(f"{path.name}: missing column {missing[0]!r}")
    for col in metric_names():
        values = pd.to_numeric(frame[col], errors="coerce")
        if (values.isna() & frame[col].notna()).any():
            raise Unreadable(f"{path.name}: column {col!r} holds values that are not numbers")
        frame[col] = values.astype(float)
    for col in CASE_ID_COLUMNS:
        frame[col] = frame[col].astype(str)
    if checkpoint is not None and not (frame["checkpoint"] == checkpoint).any():
        raise Unreadable(f"{path.name}: no rows for the {checkpoint!r} checkpoint")
    return frame


CASE_ID_COLUMNS = ["checkpoint", "case_id", "patient_id", "class", "status"]


# ---------------------------------------------------------------------------------------------- writing

def write_config(folder: Path, raw: dict, config_hash: str) -> None:
    """config.yaml: the hash line first, then the sections (RunConfig.to_dict())."""
    write_yaml(Path(folder) / CONFIG, {"config_hash": config_hash, **raw})


def write_info(folder: Path, info: dict) -> None:
    write_json(Path(folder) / RUN_INFO, info)


def write_split(folder: Path, sets: dict, protocol: str) -> None:
    """split.json: the patient sets (labeled, unlabeled, val, test) and the protocol that made them."""
    write_json(Path(folder) / SPLIT, {**sets, "protocol": protocol})


def write_results(folder: Path, frame, summary: dict) -> None:
    """metrics_per_case.csv and summary.json (a run's own, or a re-evaluation's under evals/)."""
    write_csv(Path(folder) / CASES, frame)
    write_json(Path(folder) / SUMMARY, summary)


def write_train_log(folder: Path, frame) -> None:
    write_csv(Path(folder) / TRAIN_LOG, frame)


class Staging:
    """The write side of one run: its hidden staging folder, the lock that keeps a second writer out, the files
    and the publication in one rename."""

    def __init__(self, final_dir: Path):
        self.final = Path(final_dir)
        self.path = staging_of(self.final)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def predictions(self) -> Path:
        return self.path / PREDICTIONS

    def finished(self) -> bool:
        """Interrupted between its last write and its publication."""
        return is_complete(self.path)

    def open(self, resume: bool) -> None:
        """Take the staging folder (a fresh one unless ``resume``) and lock it."""
        self.check_lock()
        if self.path.exists() and not resume:
            shutil.rmtree(self.path)
        make_dirs(self.path)
        write_text(self.path / LOCK, str(os.getpid()))

    def write_config(self, cfg) -> None:
        write_config(self.path, cfg.to_dict(), cfg.hash())

    def write_split(self, split) -> None:
        write_split(self.path, split.as_dict(), split.protocol)

    def write_info(self, info: dict) -> None:
        write_info(self.path, info)

    def write_results(self, frame, summary: dict) -> None:
        write_results(self.path, frame, summary)

    @staticmethod
    def recorded_config_of(folder: Path) -> dict | None:
        """The config a (staging) folder recorded, its hash under 'config_hash'; None if it recorded none yet."""
        path = Path(folder) / CONFIG
        if not path.is_file():
            return None
        raw, recorded = read_config(folder, verify=False, full_path=True)
        if recorded is None:
            raise Unreadable(f"{path}: no config_hash")
        return {**raw, "config_hash": recorded}

    def check_lock(self) -> None:
        """Refuse to touch a staging folder that a live process is writing (two runs of one config at once)."""
        lock = self.path / LOCK
        if not lock.is_file():
            return
        try:
            pid = int(lock.read_text().strip())
            os.kill(pid, 0)
        except (ValueError, ProcessLookupError, PermissionError, OSError):
            return  # a stale lock from a dead run
        if pid != os.getpid():
            raise UserError(f"{self.path}: another ssbench run (pid {pid}) is writing this run folder")

    def release_lock(self) -> None:
        lock = self.path / LOCK
        try:
            if lock.read_text().strip() == str(os.getpid()):
                lock.unlink()
        except OSError:
            pass

    def publish(self) -> None:
        """Move the finished staging folder into place in one rename. A run it replaces is moved aside first and
        deleted only once the new one is in place; the aside name is hidden and ends in '.incomplete', which no
        reader takes for a result (even if this process dies between the two renames)."""
        ckpt = self.checkpoints
        for state in [ckpt / LAST, *ckpt.glob("best-at-*.pt")]:  # the resume state is not needed any more
            state.unlink(missing_ok=True)
        for stray in self.path.rglob(".*.tmp"):  # temporary files of writes that a killed attempt never finished
            stray.unlink(missing_ok=True)
        (self.path / LOCK).unlink(missing_ok=True)
        if self.final.exists():
            trash = self.final.with_name(f".{self.final.name}.replaced-{os.getpid()}{STAGING_SUFFIX}")
            os.replace(self.final, trash)
        os.replace(self.path, self.final)
        for old in self.final.parent.glob(f".{self.final.name}.replaced-*"):
            shutil.rmtree(old, ignore_errors=True)
