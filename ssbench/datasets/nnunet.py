"""Any nnU-Net raw dataset (v1 or v2 dataset.json): the path for new data.

``imagesTr/{case}_0000{ending}`` with ``labelsTr/{case}{ending}`` are the labeled cases; ``imagesTs/`` images
without labels join the unlabeled pool. Only the first channel is used. Val and test are fixed seeded draws
from the labeled cases (independent of --split-seed); the labeled set is a seeded draw from the rest.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Annotated, Literal

import numpy as np
from pydantic import Field

from ssbench.datasets.base import Case, Dataset, Split, minmax, read_text
from ssbench.datasets.ct import to_hounsfield, window
from ssbench.datasets.nifti import read_nifti
from ssbench.errors import DataError
from ssbench.splits import draw_labeled, holdout


@dataclass(frozen=True)
class NNUNetOptions:
    intensity: Annotated[Literal["minmax-volume", "percentile-volume", "ct-window"], Field(
        description="per-volume min-max, min-max within the 0.5-99.5 percentiles, or a CT window")
    ] = "percentile-volume"
    window: tuple[float, float] = (-50.0, 200.0)  # HU, used by ct-window
    val_fraction: Annotated[float, Field(gt=0, lt=1, description="val cases: a fixed draw of the labeled cases")] = 0.1
    test_fraction: Annotated[float, Field(
        ge=0, lt=1, description="test cases: a fixed draw of the labeled cases")] = 0.2


class NNUNet(Dataset):
    name = "nnunet"
    class_names: tuple[str, ...] = ()
    Options = NNUNetOptions
    train_size = 256

    def __init__(self, root, options=None):
        super().__init__(root, options)
        path = self.root / "dataset.json"
        if not path.is_file():
            raise DataError(f"{path}: missing (an nnU-Net raw dataset needs dataset.json)")
        try:
            spec = json.loads(read_text(path))
            labels = spec["labels"]
            # v2: {"background": 0, "tumor": 1}; v1: {"0": "background", "1": "tumor"}
            v2 = not all(isinstance(v, str) for v in labels.values())
            if v2:  # every value a label value: an integer (1.5, true or a region list is not one)
                bad = next((k for k, v in labels.items() if isinstance(v, bool) or not isinstance(v, int)), None)
                if bad is not None:
                    raise DataError(f"{path}: labels: {bad!r} has the value {labels[bad]!r}, not an integer label "
                                    "value (region-based labels are not supported)")
            pairs = {int(v): k for k, v in labels.items()} if v2 else {int(k): v for k, v in labels.items()}
        except (ValueError, KeyError, TypeError, AttributeError) as exc:  # UnicodeDecodeError: a ValueError
            raise DataError(f"{path}: not a valid dataset.json ({type(exc).__name__}: {exc})") from None
        if sorted(pairs) != list(range(len(pairs))) or 0 not in pairs:
            raise DataError(f"{path}: labels must be consecutive integers from 0, got {sorted(pairs)}")
        self.class_names = tuple(pairs[i] for i in range(1, len(pairs)))
        self._name = spec.get("name") if isinstance(spec.get("name"), str) else ""
        lo, hi = self.options.window
        if self.options.intensity == "ct-window" and not hi > lo:
            raise DataError(f"nnunet.window {self.options.window}: the upper bound must exceed the lower")
        self.ending = spec.get("file_ending", ".nii.gz")
        if self.ending not in (".nii.gz", ".nii"):
            raise DataError(f"{path}: file_ending {self.ending!r} is not supported (NIfTI only)")
        labels_dir = self.root / "labelsTr"
        if not labels_dir.is_dir():
            raise DataError(f"{labels_dir}: missing")
        self._labeled = sorted(p.name[: -len(self.ending)] for p in labels_dir.glob(f"*{self.ending}"))
        if not self._labeled:
            raise DataError(f"{labels_dir}: no label files ending in {self.ending}")
        ts = self.root / "imagesTs"
        self._test_images = sorted(
            p.name[: -len("_0000" + self.ending)] for p in ts.glob(f"*_0000{self.ending}")
        ) if ts.is_dir() else []

    def patients(self) -> list[str]:
        return list(self._labeled)

    def own_name(self) -> str:
        return self._name

    def extra_unlabeled_patients(self) -> list[str]:
        return [f"Ts:{c}" for c in self._test_images]

    def case_ids(self, patient_id: str) -> list[str]:
        return [patient_id]

    def split(self, spec: str, seed: int) -> Split:
        train, val, test = holdout(self._labeled, self.options.val_fraction, self.options.test_fraction)
        labeled, unlabeled = draw_labeled(train, spec, seed)
        return Split(
            tuple(labeled),
            tuple(unlabeled) + tuple(self.extra_unlabeled_patients()),
            tuple(val),
            tuple(test),
            protocol=(
                f"nnU-Net raw: fixed draws of {self.options.val_fraction:.0%} val and {self.options.test_fraction:.0%} "
                f"test cases; labeled = {len(labeled)} cases drawn with split seed {seed}; imagesTs are unlabeled"
            ),
        )

    def describe(self) -> dict:
        return {"root": str(self.root), "classes": list(self.class_names), "labeled": len(self._labeled),
                "imagesTs": len(self._test_images), "intensity": self.options.intensity}

    def load_case(self, case_id: str, with_label: bool = True) -> Case:
        folder, name = ("imagesTs", case_id[3:]) if case_id.startswith("Ts:") else ("imagesTr", case_id)
        image_path = self.root / folder / f"{name}_0000{self.ending}"
        raw, spacing, facts = read_nifti(image_path, "image")
        label = None
        if with_label:
            if folder == "imagesTs":
                raise DataError(f"{image_path}: an unlabeled image was asked for its label")
            label_path = self.root / "labelsTr" / f"{name}{self.ending}"
            raw_label, label_spacing, _ = read_nifti(label_path, "label")
            label = self.check_label(raw_label, raw.shape, label_path, label_spacing, spacing)
        return Case(case_id, case_id, self._normalise(raw), label, spacing, {"source": str(image_path), **facts})

    def _normalise(self, raw: np.ndarray) -> np.ndarray:
        if self.options.intensity == "minmax-volume":
            return minmax(raw)
        if self.options.intensity == "ct-window":
            hu, _ = to_hounsfield(raw, "auto")
            return window(hu, *self.options.window)
        lo, hi = np.percentile(raw, [0.5, 99.5])
        return minmax(np.clip(raw, lo, hi))
