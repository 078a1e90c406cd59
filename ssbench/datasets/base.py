"""The dataset contract shared by every loader.

A *case* is one 3-D volume (ACDC: one cardiac frame; BHSD: one CT scan) with its patient id. Arrays are
slices-first, (D, H, W), with spacing in mm in the same axis order (slice axis first), or None when the format
does not keep it (the literature's h5 files). A split assigns *patients*, never slices or frames, to sets.

A loader declares its foreground class names, its options (a dataclass: protocol choices such as the CT
window, recorded in every run's config), how it finds its cases under a root folder, and its split protocol.
Validation happens when a case is loaded, with errors that name the file.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

from ssbench.errors import DataError


@dataclass
class Case:
    case_id: str
    patient_id: str
    image: np.ndarray  # (D, H, W) float32, normalised by the dataset's recorded intensity protocol
    label: np.ndarray | None  # (D, H, W) uint8 class indices, None for unlabeled cases
    spacing: tuple[float, float, float] | None  # mm, slice axis first; None when the format discards it
    meta: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Split:
    """Patient ids per set, in the protocol's order."""

    labeled: tuple[str, ...]
    unlabeled: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]
    protocol: str  # a sentence saying how the sets were made

    def as_dict(self) -> dict:
        return {
            "labeled": list(self.labeled),
            "unlabeled": list(self.unlabeled),
            "val": list(self.val),
            "test": list(self.test),
        }


@dataclass(frozen=True)
class NoOptions:
    """A dataset without options."""


class Dataset(ABC):
    """Base class of every dataset loader (built-in or plugin)."""

    name: ClassVar[str]
    class_names: ClassVar[tuple[str, ...]]  # foreground classes, label values 1..K
    Options: ClassVar[type] = NoOptions
    # Default training resolution and resize order, recorded in the run config.
    train_size: ClassVar[int] = 256

    def __init__(self, root: str | Path, options=None):
        self.root = Path(root)
        self.options = options if options is not None else self.Options()
        if not self.root.exists():
            raise DataError(f"{self.root}: data root does not exist")
        if not self.root.is_dir():
            raise DataError(f"{self.root}: data root is not a folder")

    @property
    def num_classes(self) -> int:
        """Number of output channels including background."""
        return len(self.class_names) + 1

    @abstractmethod
    def patients(self) -> list[str]:
        """Labeled patients, in a deterministic order."""

    def extra_unlabeled_patients(self) -> list[str]:
        """Patients that have images but no labels at all (e.g. BHSD's unlabeled release)."""
        return []

    @abstractmethod
    def case_ids(self, patient_id: str) -> list[str]:
        """The volumes of one patient."""

    @abstractmethod
    def load_case(self, case_id: str, with_label: bool = True) -> Case:
        """Read and validate one volume; raise DataError naming the file on any problem."""

    @abstractmethod
    def split(self, spec: str, seed: int) -> Split:
        """Resolve ``--split`` (and ``--split-seed``) to patient sets."""

    def describe(self) -> dict:
        """What was detected on disk; saved in run.json."""
        return {"root": str(self.root)}

    def warnings(self) -> list[str]:
        """Protocol choices a user should see: printed at the start of a run and kept in run.json."""
        return []

    def spacing_known(self) -> bool:
        return True

    def options_dict(self) -> dict:
        return dataclasses.asdict(self.options)

    # --- helpers shared by loaders ---------------------------------------------------------------------

    def check_label(self, label: np.ndarray, image_shape: tuple, path: Path) -> np.ndarray:
        if label.shape != image_shape:
            raise DataError(f"{path}: label shape {label.shape} does not match image shape {image_shape}")
        if not np.all(np.isfinite(label)) or np.any(label != np.round(label)):
            raise DataError(f"{path}: label holds non-integer values")
        values = np.unique(label)
        bad = [v for v in values if v < 0 or v > len(self.class_names)]
        if bad:
            raise DataError(
                f"{path}: label values {[int(b) for b in bad]} outside the dataset's classes 0..{len(self.class_names)}"
            )
        return label.astype(np.uint8)


def check_case(case: Case, num_classes: int) -> Case:
    """The contract of a loaded case, whichever loader (built-in or plugin) made it: a non-empty (D, H, W) numeric
    image of finite values, and a label of the same shape with values 0..num_classes - 1. The engine checks every
    case it loads; the message names the case's source file."""
    where = case.meta.get("source") or f"case {case.case_id}"
    image = case.image
    if not isinstance(image, np.ndarray) or image.ndim != 3 or 0 in image.shape:
        raise DataError(f"{where}: the image must be a non-empty D x H x W array, got {_shape(image)}")
    if not np.issubdtype(image.dtype, np.number):
        raise DataError(f"{where}: the image holds {image.dtype} values, not numbers")
    bad = int(image.size - np.count_nonzero(np.isfinite(image)))
    if bad:
        raise DataError(f"{where}: the image holds {bad} non-finite values (NaN or infinity)")
    label = case.label
    if label is not None:
        if not isinstance(label, np.ndarray) or label.shape != image.shape:
            raise DataError(f"{where}: label {_shape(label)} does not match image shape {image.shape}")
        if not np.issubdtype(label.dtype, np.integer):
            raise DataError(f"{where}: the label holds {label.dtype} values, not class indices")
        lo, hi = int(label.min()), int(label.max())
        if lo < 0 or hi >= num_classes:
            raise DataError(f"{where}: label values {lo}..{hi} outside the dataset's classes 0..{num_classes - 1}")
    return case


def _shape(a) -> str:
    return f"shape {a.shape}" if isinstance(a, np.ndarray) else type(a).__name__


def minmax(volume: np.ndarray) -> np.ndarray:
    """Per-volume min-max normalisation to [0, 1] (the literature's ACDC preprocessing)."""
    volume = volume.astype(np.float32)
    lo, hi = float(volume.min()), float(volume.max())
    if hi <= lo:
        return np.zeros_like(volume)
    return (volume - lo) / (hi - lo)
