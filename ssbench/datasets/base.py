"""The dataset contract shared by every loader.

A *case* is one 3-D volume (ACDC: one cardiac frame; BHSD: one CT scan) with its patient id. Arrays are
slices-first, (D, H, W), with spacing in mm in the same axis order (slice axis first), or None when the format
does not keep it (the literature's h5 files). A split assigns *patients*, never slices or frames, to sets.

A loader declares its foreground class names, its options (a dataclass: protocol choices such as the CT
window, recorded in every run's config), how it finds its cases under a root folder, and its split protocol.
Validation happens when a case is loaded, with errors that name the file; the engine checks every loader's
split (check_split: disjoint sets without duplicates, no empty val or test set, one case id per volume) and the
foreground of its labeled and val sets (check_foreground) before anything trains.
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

    # A dataset whose split protocol needs no data on disk (ACDC's frozen lists) overrides this classmethod:
    # ``ssbench split --dataset NAME`` without ``--data-root`` then prints it. None: the split needs the data.
    frozen_split: ClassVar[object] = None

    def case_files(self, case_id: str, with_label: bool = True) -> list[Path]:
        """The files ``load_case`` reads for this case: the prepared-data cache (``ssbench.datasets.cache``) checks
        their size and mtime before it uses the case's arrays. Default: none named (the cache then checks the
        case's ``meta["source"]``)."""
        return []

    def describe(self) -> dict:
        """What was detected on disk; saved in run.json."""
        return {"root": str(self.root)}

    def warnings(self) -> list[str]:
        """Protocol choices a user should see: printed at the start of a run and kept in run.json."""
        return []

    def spacing_known(self) -> bool:
        return True

    def own_name(self) -> str:
        """The dataset's own name where its files give one (nnU-Net: dataset.json's name), else ''."""
        return ""

    def identity(self) -> dict:
        """What makes these data these data, recorded and hashed with every run (so that runs on different data
        never share a hash, a results folder or a table cell): the dataset's own name (folder-safe), its classes,
        and a digest of its case list (labeled patients and the unlabeled release)."""
        import hashlib
        import json
        import re

        name = re.sub(r"[^A-Za-z0-9._-]+", "_", self.own_name()).strip("._-")[:64]
        cases = sorted(self.patients()) + sorted(self.extra_unlabeled_patients())
        text = json.dumps({"loader": self.name, "name": name, "classes": list(self.class_names), "cases": cases})
        return {"name": name, "classes": list(self.class_names), "cases": len(cases),
                "digest": hashlib.sha256(text.encode()).hexdigest()[:16]}

    def options_dict(self) -> dict:
        return dataclasses.asdict(self.options)

    # --- helpers shared by loaders ---------------------------------------------------------------------

    def check_label(self, label: np.ndarray, image_shape: tuple, path: Path, spacing=None,
                    image_spacing=None) -> np.ndarray:
        if label.shape != image_shape:
            raise DataError(f"{path}: label shape {label.shape} does not match image shape {image_shape}")
        # nnU-Net refuses the same mismatch (np.allclose, its verify_dataset_integrity): a label drawn on another
        # grid than its image's would be scored in the wrong millimetres
        if spacing is not None and image_spacing is not None and not np.allclose(spacing, image_spacing):
            raise DataError(f"{path}: label spacing {_mm(spacing)} differs from its image's {_mm(image_spacing)} (mm, "
                            "slice axis first)")
        if not np.all(np.isfinite(label)) or np.any(label != np.round(label)):
            raise DataError(f"{path}: label holds non-integer values")
        values = np.unique(label)
        bad = [v for v in values if v < 0 or v > len(self.class_names)]
        if bad:
            raise DataError(
                f"{path}: label values {[int(b) for b in bad]} outside the dataset's classes 0..{len(self.class_names)}"
            )
        return label.astype(np.uint8)


def read_text(path: Path) -> str:
    """A metadata file's text (Info.cfg, dataset.json): UTF-8 with or without a byte-order mark (editors on Windows
    write one), a DataError naming the file otherwise."""
    try:
        return Path(path).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None


SETS = ("labeled", "unlabeled", "val", "test")
# Which sets must not share a patient: every pair, but an unlabeled set may hold the unlabeled release only
# (never a labeled, val or test patient) — so all four are pairwise disjoint.


def check_split(split: Split, dataset: "Dataset", read: tuple[str, ...] = ("labeled", "val", "test")) -> Split:
    """The protocol's consistency, whichever loader (built-in or plugin) made the split: each set free of
    duplicates, the four sets pairwise disjoint, labeled, val and test non-empty, and every volume of the sets the
    run ``read``s a case id of its own. Called by the engine before any volume is read; the message names the
    loader and its root."""
    where = f"dataset {dataset.name} at {dataset.root}"
    sets = {name: list(getattr(split, name)) for name in SETS}
    for name, ids in sets.items():
        seen: set = set()
        for pid in ids:
            if pid in seen:
                raise DataError(f"{where}: patient {pid} is twice in the {name} set")
            seen.add(pid)
    for i, a in enumerate(SETS):
        for b in SETS[i + 1:]:
            both = sorted(set(sets[a]) & set(sets[b]))
            if both:
                raise DataError(f"{where}: patient {both[0]} is in both the {a} and the {b} set"
                                + (f" ({len(both)} patients in all)" if len(both) > 1 else ""))
    for name in ("labeled", "val", "test"):
        if not sets[name]:
            raise DataError(f"{where}: the {name} set is empty ({split.protocol})")
    owner: dict[str, str] = {}
    for name in read:
        for pid in sets[name]:
            for cid in dataset.case_ids(pid):
                if cid in owner:
                    raise DataError(f"{where}: case {cid} is twice in the split (patients {owner[cid]} and {pid}): "
                                    "one volume would be counted twice")
                owner[cid] = pid
    return split


def check_foreground(cases: list[Case], set_name: str) -> None:
    """A labeled or val set must hold foreground somewhere: without it training learns background only and
    model selection has no Dice to select on."""
    if cases and not any(c.label is not None and bool(np.any(c.label)) for c in cases):
        names = ", ".join(c.case_id for c in cases[:3]) + (", ..." if len(cases) > 3 else "")
        raise DataError(f"the {set_name} set holds no foreground label in any of its {len(cases)} volumes "
                        f"({names}; e.g. {cases[0].meta.get('source') or cases[0].case_id})")


def check_case(case: Case, num_classes: int) -> Case:
    """The contract of a loaded case, whichever loader (built-in or plugin) made it: a non-empty (D, H, W) numeric
    image of finite values, and a label of the same shape with values 0..num_classes - 1. The engine checks every
    case it loads; the message names the case's source file."""
    where = case.meta.get("source") or f"case {case.case_id}"
    image = case.image
    if not isinstance(image, np.ndarray) or image.ndim != 3 or 0 in image.shape:
        raise DataError(f"{where}: the image must be a non-empty D x H x W array, got {_shape(image)}")
    if not np.issubdtype(image.dtype, np.number) or np.issubdtype(image.dtype, np.complexfloating):
        raise DataError(f"{where}: the image holds {image.dtype} values, not real numbers")
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


def _mm(spacing) -> str:
    return "(" + ", ".join(f"{float(v):g}" for v in spacing) + ")"


def _shape(a) -> str:
    return f"shape {a.shape}" if isinstance(a, np.ndarray) else type(a).__name__


def minmax(volume: np.ndarray) -> np.ndarray:
    """Per-volume min-max normalisation to [0, 1] (the literature's ACDC preprocessing)."""
    volume = volume.astype(np.float64)  # float32 overflows on (hi - lo) for huge finite values
    lo, hi = float(volume.min()), float(volume.max())
    if hi <= lo:
        return np.zeros(volume.shape, np.float32)
    return ((volume - lo) / (hi - lo)).astype(np.float32)
