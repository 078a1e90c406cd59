"""NIfTI pairs: ``images/<case>.nii.gz`` and ``labels/<case>.nii.gz`` with the same name, one binary structure
(label 1), one case per patient; a fixed seeded val/test draw and a seeded labeled draw."""

from __future__ import annotations

from dataclasses import dataclass

from ssbench.api import Case, DataError, Dataset, Split, draw_labeled, holdout, minmax, read_nifti

SUFFIX = ".nii.gz"


@dataclass(frozen=True)
class PairsOptions:
    val_fraction: float = 0.2  # of the cases, fixed draw
    test_fraction: float = 0.2


class Pairs(Dataset):
    name = "pairs"
    class_names = ("foreground",)
    Options = PairsOptions
    train_size = 256

    def __init__(self, root, options=None):
        super().__init__(root, options)
        images = self.root / "images"
        if not images.is_dir():
            raise DataError(f"{images}: missing (expected images/ and labels/ with the same file names)")
        self._cases = sorted(p.name[: -len(SUFFIX)] for p in images.glob(f"*{SUFFIX}"))
        if not self._cases:
            raise DataError(f"{images}: no {SUFFIX} files")

    def patients(self) -> list[str]:
        return list(self._cases)

    def case_ids(self, patient_id: str) -> list[str]:
        return [patient_id]

    def split(self, spec: str, seed: int) -> Split:
        train, val, test = holdout(self._cases, self.options.val_fraction, self.options.test_fraction)
        labeled, unlabeled = draw_labeled(train, spec, seed)
        return Split(tuple(labeled), tuple(unlabeled), tuple(val), tuple(test),
                     protocol=f"NIfTI pairs: fixed val/test draw; {len(labeled)} labeled cases drawn with seed {seed}")

    def load_case(self, case_id: str, with_label: bool = True) -> Case:
        image, spacing, facts = read_nifti(self.root / "images" / f"{case_id}{SUFFIX}", "image")
        label = None
        if with_label:
            path = self.root / "labels" / f"{case_id}{SUFFIX}"
            raw, _, _ = read_nifti(path, "label")
            label = self.check_label(raw, image.shape, path)
        return Case(case_id, case_id, minmax(image), label, spacing, facts)
