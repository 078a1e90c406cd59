"""BHSD (brain-hemorrhage head CT): the labeled release, its dataset.json split, and the unlabeled volumes.

Layout: ``images/X.nii.gz`` and ``ground truths/X.nii.gz`` (same file name), optional ``dataset.json``
(nnU-Net v1 style: ``training`` pairs and ``test`` images, mapped to the release's files by file name) and an
optional ``unlabeled/`` folder (any depth, e.g. ``anybleed/`` and ``nobleed/``) of images without masks.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field

from ssbench.datasets.base import Case, Dataset, Split, read_text
from ssbench.datasets.ct import to_hounsfield, window
from ssbench.datasets.nifti import read_nifti
from ssbench.errors import DataError
from ssbench.splits import draw_labeled, holdout

LABEL_DIR = "ground truths"


@dataclass(frozen=True)
class BHSDOptions:
    # No official window exists. [-50, 200] HU keeps the whole range of fresh blood (40-90 HU) with contrast
    # to brain and CSF; W80/L40 (0-80 HU) is the other common choice.
    window: tuple[float, float] = (-50.0, 200.0)
    # 'auto' detects raw stored values (minimum >= 0) vs Hounsfield units per volume and records it per case.
    storage: Literal["auto", "hu", "stored"] = "auto"
    val_fraction: Annotated[float, Field(
        gt=0, lt=1, description="val cases: a fixed draw from the training list, independent of --split-seed")] = 0.1


class BHSD(Dataset):
    name = "bhsd"
    class_names = ("EDH", "IPH", "IVH", "SAH", "SDH")
    Options = BHSDOptions
    train_size = 256

    def __init__(self, root, options=None):
        super().__init__(root, options)
        self.image_dir = self.root / "images"
        self.label_dir = self.root / LABEL_DIR
        if not self.image_dir.is_dir():
            raise DataError(f"{self.image_dir}: missing (expected BHSD's images/ and '{LABEL_DIR}/' folders)")
        if not self.label_dir.is_dir():
            raise DataError(f"{self.label_dir}: missing label folder")
        lo, hi = self.options.window
        if not hi > lo:
            raise DataError(f"bhsd.window {self.options.window}: the upper bound must exceed the lower")
        self.train_list, self.test_list = self._official_lists()
        self._unlabeled = self._unlabeled_files()

    def _official_lists(self) -> tuple[list[str] | None, list[str] | None]:
        path = self.root / "dataset.json"
        if not path.is_file():
            return None, None
        try:
            spec = json.loads(read_text(path))
            train = [_stem(e["image"] if isinstance(e, dict) else e) for e in spec["training"]]
            test = [_stem(e["image"] if isinstance(e, dict) else e) for e in spec.get("test", [])]
        except (ValueError, KeyError, TypeError) as exc:
            raise DataError(f"{path}: not a valid dataset.json ({type(exc).__name__}: {exc})") from None
        for name, ids in (("training", train), ("test", test)):
            twice = sorted({c for c in ids if ids.count(c) > 1})
            if twice:
                raise DataError(f"{path}: {twice[0]} is twice in the {name} list")
        both = sorted(set(train) & set(test))
        if both:  # the model would be tested on cases it trained on
            raise DataError(f"{path}: {both[0]} is in both the training and the test list"
                            + (f" ({len(both)} cases in all)" if len(both) > 1 else ""))
        for cid in train + test:
            if not (self.image_dir / f"{cid}.nii.gz").is_file():
                raise DataError(f"{path}: lists {cid}, but {self.image_dir / (cid + '.nii.gz')} is missing")
        return train, test

    def _unlabeled_files(self) -> dict[str, Path]:
        folder = self.root / "unlabeled"
        if not folder.is_dir():
            return {}
        return {_stem(p.name): p for p in sorted(folder.rglob("*.nii.gz"))}

    def patients(self) -> list[str]:
        if self.train_list is not None:
            return sorted(self.train_list + self.test_list)
        return sorted(_stem(p.name) for p in self.image_dir.glob("*.nii.gz"))

    def extra_unlabeled_patients(self) -> list[str]:
        return list(self._unlabeled)

    def case_ids(self, patient_id: str) -> list[str]:
        # One scan per id: the record does not say which part of the file name identifies the patient.
        return [patient_id]

    def split(self, spec: str, seed: int) -> Split:
        if self.test_list is not None:
            train_pool, val, _ = holdout(self.train_list, self.options.val_fraction, 0.0)
            test = sorted(self.test_list)
            rule = "test = dataset.json's test list"
        else:
            train_pool, val, test = holdout(self.patients(), self.options.val_fraction, 0.2)
            rule = "no dataset.json: test = a fixed 20% draw"
        labeled, unlabeled = draw_labeled(train_pool, spec, seed)
        return Split(
            labeled=tuple(labeled),
            unlabeled=tuple(unlabeled) + tuple(self.extra_unlabeled_patients()),
            val=tuple(val),
            test=tuple(test),
            protocol=(
                f"BHSD: {rule}; val = a fixed {self.options.val_fraction:.0%} draw of the training list; "
                f"labeled = {len(labeled)} volumes drawn with split seed {seed}; unlabeled = the rest of the "
                "training list plus the unlabeled release"
            ),
        )

    def describe(self) -> dict:
        return {
            "root": str(self.root),
            "dataset_json": self.train_list is not None,
            "labeled_volumes": len(self.patients()),
            "unlabeled_volumes": len(self._unlabeled),
            "window_hu": list(self.options.window),
            "storage": self.options.storage,
        }

    def case_files(self, case_id: str, with_label: bool = True) -> list[Path]:
        if case_id in self._unlabeled:
            return [self._unlabeled[case_id]]
        return [self.image_dir / f"{case_id}.nii.gz"] + ([self.label_dir / f"{case_id}.nii.gz"] if with_label else [])

    def load_case(self, case_id: str, with_label: bool = True) -> Case:
        if case_id in self._unlabeled:
            image_path, has_label = self._unlabeled[case_id], False
        else:
            image_path, has_label = self.image_dir / f"{case_id}.nii.gz", True
        raw, spacing, facts = read_nifti(image_path, "image")
        hu, storage = to_hounsfield(raw, self.options.storage)
        label = None
        if with_label:
            if not has_label:
                raise DataError(f"{image_path}: an unlabeled volume was asked for its label")
            label_path = self.label_dir / f"{case_id}.nii.gz"
            raw_label, label_spacing, _ = read_nifti(label_path, "label")
            label = self.check_label(raw_label, raw.shape, label_path, label_spacing, spacing)
        return Case(
            case_id=case_id,
            patient_id=case_id,
            image=window(hu, *self.options.window),
            label=label,
            spacing=spacing,
            meta={"storage": storage, "source": str(image_path), **facts},
        )


def _stem(name: str) -> str:
    name = Path(name).name
    for ext in (".nii.gz", ".nii"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return name
