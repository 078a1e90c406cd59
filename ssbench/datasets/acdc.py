"""ACDC (cardiac cine MRI): the raw challenge archive and the literature's preprocessed h5 layout.

Which layout is present is detected from the root: ``training/patientNNN/Info.cfg`` (raw archive; the root may
also be the ``training`` folder itself) or ``data/patientNNN_frameNN.h5`` (SSL4MIS/UniMatch preprocessing).
Patients are not discovered by scanning: the frozen literature protocol names them, and a missing one is an error.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from ssbench.datasets.base import Case, Dataset, Split, minmax, read_text
from ssbench.datasets.nifti import read_nifti
from ssbench.errors import DataError
from ssbench.splits import labeled_count

# The split every semi-supervised ACDC paper uses (SSL4MIS lists): the order decides which patients are labeled.
TRAIN_ORDER = tuple(
    f"patient{n}"
    for n in (
        "099 038 050 100 058 021 049 020 072 040 060 089 004 056 098 096 031 018 094 047 048 055 097 074 043 041 063 "
        "037 095 054 026 088 032 069 006 071 012 073 061 017 025 010 057 029 051 005 036 046 062 034 076 092 070 077 "
        "067 003 091 016 014 044 042 090 053 027 035 086 023 009 079 015"
    ).split()
)
VAL = tuple(f"patient{n}" for n in "002 019 028 030 039 045 078 082 085 087".split())
TEST = tuple(
    f"patient{n}" for n in "001 007 008 011 013 022 024 033 052 059 064 065 066 068 075 080 081 083 084 093".split()
)
# The literature's names for its labeled sets: 3 patients are called "5%", 7 are called "10%".
NAMED_SPLITS = {"5%": 3, "10%": 7}


@dataclass(frozen=True)
class ACDCOptions:
    intensity: Literal["minmax-volume"] = "minmax-volume"  # the literature's per-volume min-max to [0, 1]


class ACDC(Dataset):
    name = "acdc"
    class_names = ("RV", "Myo", "LV")
    Options = ACDCOptions
    train_size = 256

    def __init__(self, root, options=None):
        super().__init__(root, options)
        if (self.root / "training").is_dir():
            self.layout, self.base = "raw", self.root / "training"
        elif (self.root / "data").is_dir() and any((self.root / "data").glob("patient*.h5")):
            self.layout, self.base = "h5", self.root / "data"
        elif any(self.root.glob("patient*/Info.cfg")):
            self.layout, self.base = "raw", self.root
        else:
            raise DataError(
                f"{self.root}: no ACDC data found (expected training/patientNNN/ of the raw archive, "
                "or data/patientNNN_frameNN.h5 of the preprocessed layout)"
            )
        self._frames: dict[str, dict[str, int]] = {}

    # --- protocol ---------------------------------------------------------------------------------------

    @classmethod
    def frozen_split(cls, spec: str, seed: int = 0) -> Split:
        """The literature's split; needs no data. ``seed`` is ignored: the labeled set is frozen."""
        n = labeled_count(spec, len(TRAIN_ORDER), NAMED_SPLITS)
        return Split(
            labeled=TRAIN_ORDER[:n],
            unlabeled=TRAIN_ORDER[n:],
            val=VAL,
            test=TEST,
            protocol=(
                f"ACDC literature protocol (SSL4MIS lists): 70/10/20 patients; labeled = first {n} patients of the "
                "train order; both ED and ES frames of each patient"
            ),
        )

    def split(self, spec: str, seed: int) -> Split:
        return self.frozen_split(spec, seed)

    def patients(self) -> list[str]:
        return sorted(TRAIN_ORDER + VAL + TEST)

    def describe(self) -> dict:
        return {"root": str(self.root), "layout": self.layout, "intensity": self.options.intensity}

    def spacing_known(self) -> bool:
        return self.layout == "raw"

    # --- cases ------------------------------------------------------------------------------------------

    def case_ids(self, patient_id: str) -> list[str]:
        if self.layout == "raw":
            frames = self._read_info(patient_id)
            return [f"{patient_id}_frame{frames['ED']:02d}", f"{patient_id}_frame{frames['ES']:02d}"]
        ids = [f"{patient_id}_frame01", f"{patient_id}_frame02"]
        for cid in ids:
            if not (self.base / f"{cid}.h5").is_file() and not self._slice_files(cid):
                raise DataError(f"{self.base / (cid + '.h5')}: missing volume file")
        return ids

    def load_case(self, case_id: str, with_label: bool = True) -> Case:
        patient_id = case_id.split("_")[0]
        if self.layout == "raw":
            return self._load_raw(case_id, patient_id, with_label)
        return self._load_h5(case_id, patient_id, with_label)

    def case_files(self, case_id: str, with_label: bool = True) -> list[Path]:
        patient_id = case_id.split("_")[0]
        if self.layout == "raw":
            folder = self.base / patient_id
            return [folder / "Info.cfg", folder / f"{case_id}.nii.gz"] + \
                ([folder / f"{case_id}_gt.nii.gz"] if with_label else [])
        path = self.base / f"{case_id}.h5"
        return [path] if path.is_file() else sorted(self._slice_files(case_id))

    def _read_info(self, patient_id: str) -> dict[str, int]:
        if patient_id in self._frames:
            return self._frames[patient_id]
        folder = self.base / patient_id
        info = folder / "Info.cfg"
        if not folder.is_dir():
            raise DataError(f"{folder}: missing patient folder")
        if not info.is_file():
            raise DataError(f"{info}: missing Info.cfg")
        values = {}
        for line in read_text(info).splitlines():
            if ":" in line:
                key, _, value = line.partition(":")
                values[key.strip()] = value.strip()
        frames = {}
        for key in ("ED", "ES"):
            try:
                value = float(values[key])
                if not value.is_integer() or not 1 <= value <= 9999:  # also an overflow ('1e999': inf)
                    raise ValueError(value)
                frames[key] = int(value)
            except (KeyError, ValueError, OverflowError):
                raise DataError(f"{info}: no valid '{key}: <frame>' line (a frame number 1..9999)") from None
        if frames["ED"] == frames["ES"]:  # one volume would be scored twice, as ED and as ES
            raise DataError(f"{info}: ED and ES name the same frame ({frames['ED']})")
        frames["group"] = values.get("Group", "")
        self._frames[patient_id] = frames
        return frames

    def _load_raw(self, case_id: str, patient_id: str, with_label: bool) -> Case:
        frames = self._read_info(patient_id)
        frame = int(case_id.rsplit("frame", 1)[1])
        phase = "ED" if frame == frames["ED"] else "ES"
        image_path = self.base / patient_id / f"{case_id}.nii.gz"
        image, spacing, _ = read_nifti(image_path, "image")
        label = None
        if with_label:
            label_path = self.base / patient_id / f"{case_id}_gt.nii.gz"
            raw_label, label_spacing, _ = read_nifti(label_path, "label")
            label = self.check_label(raw_label, image.shape, label_path, label_spacing, spacing)
        return Case(
            case_id=case_id,
            patient_id=patient_id,
            image=minmax(image),
            label=label,
            spacing=spacing,
            meta={"phase": phase, "group": frames["group"], "source": str(image_path)},
        )

    def _slice_files(self, case_id: str) -> list[Path]:
        files = list((self.base / "slices").glob(f"{case_id}_slice_*.h5"))
        for f in files:
            if not f.stem.rsplit("_", 1)[1].isdigit():
                raise DataError(f"{f}: not a slice file of {case_id} (expected {case_id}_slice_<index>.h5)")
        files.sort(key=lambda p: int(p.stem.rsplit("_", 1)[1]))
        if [int(p.stem.rsplit("_", 1)[1]) for p in files] != list(range(len(files))):
            raise DataError(f"{self.base / 'slices'}: the slices of {case_id} are not numbered 0..{len(files) - 1}")
        return files

    def _load_h5(self, case_id: str, patient_id: str, with_label: bool) -> Case:
        import h5py

        path = self.base / f"{case_id}.h5"
        try:
            if path.is_file():
                with h5py.File(path, "r") as fh:
                    image = _h5_array(fh, "image", path)
                    raw_label = _h5_array(fh, "label", path) if with_label else None
            else:  # train volumes may exist only as slices (check the files on disk, not the list)
                files = self._slice_files(case_id)
                if not files:
                    raise DataError(f"{path}: missing volume file (and no slices under {self.base / 'slices'})")
                images, labels = [], []
                for f in files:
                    with h5py.File(f, "r") as fh:
                        images.append(_h5_array(fh, "image", f))
                        labels.append(_h5_array(fh, "label", f) if with_label else None)
                image = np.stack(images)
                raw_label = np.stack(labels) if with_label else None
                path = files[0]
        except (OSError, ValueError, TypeError) as exc:  # not an HDF5 file, truncated, or an entry of another kind
            raise DataError(f"{path}: cannot read h5 ({type(exc).__name__}: {exc})".splitlines()[0]) from None
        if image.ndim != 3:
            raise DataError(f"{path}: 'image' must be D x H x W, got shape {image.shape}")
        if 0 in image.shape:
            raise DataError(f"{path}: 'image' is empty (shape {image.shape})")
        label = self.check_label(raw_label, image.shape, path) if with_label else None
        phase = "ED" if case_id.endswith("frame01") else "ES"
        return Case(case_id, patient_id, minmax(image), label, None, {"phase": phase, "source": str(path)})


def _h5_array(fh, key: str, path: Path) -> np.ndarray:
    if key not in fh:
        raise DataError(f"{path}: no '{key}' dataset")
    data = np.asarray(fh[key][()])
    if not np.issubdtype(data.dtype, np.number):
        raise DataError(f"{path}: '{key}' holds {data.dtype} values, not numbers")
    return data
