"""A run folder's TensorBoard event files (``tensorboard/``, written by ``engine.tracking``): where they are and
how a reader gets the run's curves back, with tensorboard's own reader. Shared by the engine and ``ssbench table``
(which imports nothing of the engine)."""

from __future__ import annotations

from pathlib import Path

from ssbench.runfolder import TENSORBOARD as TB_FOLDER  # the run folder's owner names it


def event_files(folder: Path) -> list[Path]:
    return sorted(p for p in Path(folder).glob("events.out.tfevents.*") if p.is_file())


def read_scalars(run_dir: Path):
    """A run's tracked scalars from its TensorBoard event files (tensorboard's own reader), as a frame with one
    row per step and one column per tag (``train/loss``, ``val/dice``, ...); None without event files."""
    import pandas as pd
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    folder = Path(run_dir) / TB_FOLDER
    if not event_files(folder):
        return None
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0}, purge_orphaned_data=False)
    acc.Reload()
    columns = {t: pd.Series({e.step: e.value for e in acc.Scalars(t)}) for t in acc.Tags()["scalars"]}
    if not columns:
        return None
    frame = pd.DataFrame(columns).sort_index()
    frame.index.name = "iteration"
    return frame.reset_index()
