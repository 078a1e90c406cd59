"""Atomic file writing. A reader never sees a half-written file: write to a temporary sibling, then rename.

A write that fails (no permission, a full disk) raises WriteError naming the file, and leaves neither the
temporary file nor a partial ``path`` behind.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from ssbench.errors import WriteError


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename."""
    path = Path(path)
    tmp_path = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp_path = Path(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp creates 0600; results are meant to be shared
        yield tmp_path
        with open(tmp_path, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
    except OSError as exc:
        raise WriteError(f"{path}: cannot write ({exc.strerror or exc})") from exc
    finally:
        if tmp_path is not None and tmp_path.exists():
            tmp_path.unlink()


def make_dirs(path: str | os.PathLike) -> Path:
    """``mkdir -p`` with a WriteError naming the folder."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WriteError(f"{path}: cannot create the folder ({exc.strerror or exc})") from exc
    return path


def snapshot(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """``dst`` becomes a copy of ``src`` as it is now: a hard link where possible (files written through this
    module are replaced, never changed in place, so the link keeps the old content), else a copy."""
    with atomic_path(dst) as tmp:
        tmp.unlink()
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)


def write_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n")


def write_yaml(path, data: Any) -> None:
    import yaml

    write_text(path, yaml.safe_dump(data, sort_keys=False))


def write_csv(path, frame) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def torch_save(path, obj) -> None:
    """torch.save, atomically. torch's C++ writer reports a failed write (a full disk, an I/O error) as a
    RuntimeError without the OS error; writing through a file object that keeps the OSError it met, the error
    raised is the OS's, and atomic_path names the file."""
    import torch

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            writer = _KeepsOSError(fh)
            try:
                torch.save(obj, writer)
            except RuntimeError as exc:
                if writer.error is not None:
                    raise writer.error from exc
                from ssbench.errors import first_line

                raise WriteError(f"{path}: cannot write (torch.save: {first_line(exc)})") from exc


class _KeepsOSError:
    """A binary file for torch.save that remembers the OSError a write raised (torch swallows it)."""

    def __init__(self, fh):
        self.fh, self.error = fh, None

    def write(self, data) -> int:
        try:
            return self.fh.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.fh.flush()


def _json_default(o):
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
