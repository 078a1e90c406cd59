"""Any nnU-Net raw dataset (v1 or v2 dataset.json): the path for new data.

What nnU-Net's folders mean is kept (nnU-Net's documentation/dataset_format.md): ``imagesTr/{case}_{XXXX}{ending}``
with ``labelsTr/{case}{ending}`` are the labeled training cases; ``imagesTs/`` holds the test images, and with
``labelsTs/`` the official test set. Every choice that could change the protocol is an option, printed at the start
of a run (``warnings``), written in the split protocol and recorded in the run's config:

- ``imagesTs``: ``auto`` = the test set when ``labelsTs/`` exists, else left out; ``unlabeled`` makes the images
  the unlabeled pool (test images in training: a choice, said so); ``exclude`` never reads them.
- val and test: ``splits_final.json`` (nnU-Net's list of folds ``[{"train": [...], "val": [...]}]``, read from the
  raw folder as nnU-Net's planner does, or from ``nnunet.splits_file``; ``nnunet.fold`` picks the fold) gives the
  val cases; ``nnunet.test_list`` (a file of case ids, one a line) gives a test set among imagesTr. What no list
  gives is a fixed seeded draw (``val_fraction``, ``test_fraction``), independent of --split-seed.
- channels: ssbench's networks take one channel; a case with several (``_0001``...) is refused unless
  ``nnunet.channel`` names the one to use.
- patients: one case is one patient unless ``nnunet.patient_pattern`` (a regular expression; its first group, else
  its whole match, of the case id) groups cases; a split never puts two cases of one patient in two sets.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from pydantic import Field

from ssbench.datasets.base import Case, Dataset, Split, minmax, read_text
from ssbench.datasets.ct import to_hounsfield, window
from ssbench.datasets.nifti import read_nifti
from ssbench.errors import DataError, UserError
from ssbench.splits import HOLDOUT_SEED, draw_labeled, holdout, seeded_order

TS = "Ts:"  # case ids of imagesTs (a test case may share its name with a training case)


@dataclass(frozen=True)
class NNUNetOptions:
    intensity: Annotated[Literal["minmax-volume", "percentile-volume", "ct-window"], Field(
        description="per-volume min-max, min-max within the 0.5-99.5 percentiles, or a CT window")
    ] = "percentile-volume"
    window: tuple[float, float] = (-50.0, 200.0)  # HU, used by ct-window
    imagesTs: Annotated[Literal["auto", "test", "unlabeled", "exclude"], Field(description=(
        "imagesTs/: auto = the test set when labelsTs/ exists, else left out; unlabeled = the unlabeled pool"))
    ] = "auto"
    splits_file: Annotated[str, Field(description=(
        "nnU-Net's splits_final.json giving the val cases ('' = <root>/splits_final.json when there; 'none' = "
        "a fixed draw)"))] = ""
    fold: Annotated[int, Field(ge=0, description="the fold of splits_final.json whose val list is the val set")] = 0
    test_list: Annotated[str, Field(description=(
        "a file of imagesTr case ids (one a line) that are the test set ('' = labelsTs/ or a fixed draw)"))] = ""
    channel: Annotated[int | None, Field(ge=0, description=(
        "the input channel (_XXXX) to train on; needed when cases have several"))] = None
    patient_pattern: Annotated[str, Field(description=(
        "regular expression on the case id whose first group (else whole match) is the patient id ('' = one "
        "case, one patient)"))] = ""
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
            channels = {int(k): str(v) for k, v in (spec.get("channel_names") or spec.get("modality") or {}).items()}
        except (ValueError, KeyError, TypeError, AttributeError) as exc:  # UnicodeDecodeError: a ValueError
            raise DataError(f"{path}: not a valid dataset.json ({type(exc).__name__}: {exc})") from None
        if sorted(pairs) != list(range(len(pairs))) or 0 not in pairs:
            raise DataError(f"{path}: labels must be consecutive integers from 0, got {sorted(pairs)}")
        self.class_names = tuple(pairs[i] for i in range(1, len(pairs)))
        self._name = spec.get("name") if isinstance(spec.get("name"), str) else ""
        o = self.options
        lo, hi = o.window
        if o.intensity == "ct-window" and not hi > lo:
            raise DataError(f"nnunet.window {o.window}: the upper bound must exceed the lower")
        self.ending = spec.get("file_ending", ".nii.gz")
        if self.ending not in (".nii.gz", ".nii"):
            raise DataError(f"{path}: file_ending {self.ending!r} is not supported (NIfTI only)")
        labels_dir = self.root / "labelsTr"
        if not labels_dir.is_dir():
            raise DataError(f"{labels_dir}: missing")
        self._labeled = sorted(p.name[: -len(self.ending)] for p in labels_dir.glob(f"*{self.ending}"))
        if not self._labeled:
            raise DataError(f"{labels_dir}: no label files ending in {self.ending}")
        self.channel, self._channel_names = self._choose_channel(channels, path)
        self._ts_mode, ts_cases = self._images_ts()
        self._ts = [TS + c for c in ts_cases]
        self._patient = self._patient_rule()
        self._by_patient: dict[str, list[str]] = {}
        for case in self._labeled + self._ts:
            self._by_patient.setdefault(self._patient(case), []).append(case)
        for pid, cases in self._by_patient.items():
            tr = [c for c in cases if not c.startswith(TS)]
            if tr and len(tr) < len(cases):  # e.g. a patient's follow-up scan in imagesTs, its first in imagesTr
                raise DataError(f"nnunet.patient_pattern {o.patient_pattern!r}: patient {pid} has cases in imagesTr "
                                f"({tr[0]}) and imagesTs ({cases[-1][len(TS):]}); a patient belongs to one set")
        self._val, self._val_from = self._fixed_list_from_splits()
        self._test, self._test_from = self._fixed_test()

    # --- the protocol's choices ---------------------------------------------------------------------------------

    def _choose_channel(self, names: dict[int, str], path: Path) -> tuple[int, dict[int, str]]:
        """The one channel a case is read from; several channels without ``nnunet.channel`` are refused."""
        found = {int(m.group(1)) for p in (self.root / "imagesTr").glob(f"{self._labeled[0]}_*{self.ending}")
                 if (m := re.fullmatch(rf"{re.escape(self._labeled[0])}_(\d{{4}}){re.escape(self.ending)}", p.name))}
        have = sorted(set(names) | found) or [0]
        names = {c: names.get(c, f"channel {c}") for c in have}
        chosen = self.options.channel
        listed = ", ".join(f"{c:04d} {n}" for c, n in names.items())
        if chosen is None:
            if len(have) > 1:
                raise DataError(f"{path}: cases have {len(have)} input channels ({listed}); ssbench trains on one: "
                                f"choose it with --set nnunet.channel=N")
            return have[0], names
        if chosen not in have:
            raise DataError(f"nnunet.channel={chosen}: the dataset's channels are {listed}")
        return chosen, names

    def _images_ts(self) -> tuple[str, list[str]]:
        """(what imagesTs is: test, unlabeled or excluded; its case names)."""
        mode = self.options.imagesTs
        ts, labels_ts = self.root / "imagesTs", self.root / "labelsTs"
        suffix = f"_{self.channel:04d}{self.ending}"
        cases = sorted(p.name[: -len(suffix)] for p in ts.glob(f"*{suffix}")) if ts.is_dir() else []
        if mode == "auto":
            mode = "test" if labels_ts.is_dir() else "excluded"
        if mode == "exclude":
            mode = "excluded"
        if mode == "test":
            if not labels_ts.is_dir():
                raise DataError(f"nnunet.imagesTs=test: {labels_ts} is missing (test cases need their labels)")
            if not cases:
                raise DataError(f"{ts}: no images ending in {suffix} (labelsTs/ makes imagesTs the test set)")
            missing = [c for c in cases if not (labels_ts / f"{c}{self.ending}").is_file()]
            if missing:
                raise DataError(f"{labels_ts / (missing[0] + self.ending)}: missing (imagesTs/{missing[0]}{suffix} "
                                f"is a test case; {len(missing)} of {len(cases)} labels missing)")
        if mode == "unlabeled" and not cases:
            raise DataError(f"nnunet.imagesTs=unlabeled: {ts} holds no images ending in {suffix}")
        return mode, cases if mode in ("test", "unlabeled") else []

    def _patient_rule(self):
        """The case -> patient rule (a bound method, so that the loader pickles for ``data prepare --jobs``)."""
        text = self.options.patient_pattern
        if text:
            try:
                self._pattern = re.compile(text)
            except re.error as exc:
                raise DataError(f"nnunet.patient_pattern {text!r}: not a regular expression ({exc})") from None
        return self._patient_of

    def _patient_of(self, case: str) -> str:
        text = self.options.patient_pattern
        if not text:
            return case
        name = case[len(TS):] if case.startswith(TS) else case
        m = self._pattern.search(name)
        if m is None:
            raise DataError(f"nnunet.patient_pattern {text!r}: does not match case {name}")
        return m.group(1) if self._pattern.groups else m.group(0)

    def _patients_of(self, cases: list[str], where: str) -> list[str]:
        """The patients of a fixed case list, refusing one that would split a patient between two sets."""
        unknown = [c for c in cases if c not in self._labeled]
        if unknown:
            raise DataError(f"{where}: case {unknown[0]} is not in labelsTr ({len(unknown)} unknown)")
        patients = sorted({self._patient(c) for c in cases})
        for p in patients:
            outside = [c for c in self._by_patient[p] if c not in cases]
            if outside:
                raise DataError(f"{where}: patient {p} has case {outside[0]} outside this list (a patient's cases "
                                "stay in one set)")
        return patients

    def _fixed_list_from_splits(self) -> tuple[list[str] | None, str]:
        text = self.options.splits_file
        if text.lower() == "none":
            return None, ""
        path = Path(text) if text else self.root / "splits_final.json"
        if not path.is_absolute() and text:
            path = self.root / path
        if not path.is_file():
            if text:
                raise DataError(f"nnunet.splits_file {text}: {path} is missing")
            return None, ""
        fold = self.options.fold
        try:
            folds = json.loads(path.read_text())
            val = [str(c) for c in folds[fold]["val"]]
        except IndexError:
            raise DataError(f"{path}: has no fold {fold} (nnunet.fold; it lists {len(folds)})") from None
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
            raise DataError(f"{path}: not nnU-Net's splits_final.json, a list of {{\"train\": [...], \"val\": "
                            f"[...]}} ({type(exc).__name__}: {exc})") from None
        if not val:
            raise DataError(f"{path}: fold {fold} has no val cases")
        return self._patients_of(val, f"{path} fold {fold}"), f"{path.name} fold {fold}"

    def _fixed_test(self) -> tuple[list[str] | None, str]:
        text = self.options.test_list
        if self._ts_mode == "test":
            if text:
                raise DataError(f"nnunet.test_list {text}: labelsTs/ already makes imagesTs the test set; give "
                                "--set nnunet.imagesTs=exclude to test on the list instead")
            return sorted({self._patient(c) for c in self._ts}), "imagesTs/ with labelsTs/ (nnU-Net's test set)"
        if not text:
            return None, ""
        path = Path(text) if Path(text).is_absolute() else self.root / text
        try:
            cases = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"nnunet.test_list {text}: cannot read {path} ({type(exc).__name__})") from None
        if not cases:
            raise DataError(f"nnunet.test_list {text}: {path} lists no cases")
        test = self._patients_of(cases, str(path))
        if self._val is not None and set(test) & set(self._val):
            raise DataError(f"{path}: patient {sorted(set(test) & set(self._val))[0]} is in the test list and in "
                            f"the val list of {self._val_from}")
        return test, path.name

    # --- the dataset contract -----------------------------------------------------------------------------------

    def patients(self) -> list[str]:
        return sorted({self._patient(c) for c in self._labeled})

    def own_name(self) -> str:
        return self._name

    def extra_unlabeled_patients(self) -> list[str]:
        return sorted({self._patient(c) for c in self._ts}) if self._ts_mode == "unlabeled" else []

    def case_ids(self, patient_id: str) -> list[str]:
        return list(self._by_patient[patient_id])

    def split(self, spec: str, seed: int) -> Split:
        o = self.options
        pool = self.patients()
        val, test = self._val, self._test
        if test is not None and self._ts_mode != "test":
            pool = [p for p in pool if p not in test]
        if val is not None:
            pool = [p for p in pool if p not in val]
        drawn_val, drawn_test = val is None, test is None
        if drawn_val and drawn_test:  # what no list fixes: a draw independent of --split-seed
            pool, val, test = holdout(pool, o.val_fraction, o.test_fraction)
        elif drawn_val or drawn_test:
            fraction = o.val_fraction if drawn_val else o.test_fraction
            order = seeded_order(pool, HOLDOUT_SEED)
            k = max(1, int(round(fraction * len(order)))) if fraction > 0 else 0
            if k >= len(order):
                raise UserError(f"only {len(order)} labeled patients outside the fixed lists: too few to draw from")
            drawn, pool = sorted(order[:k]), sorted(order[k:])
            val, test = (drawn, test) if drawn_val else (val, drawn)
        labeled, unlabeled = draw_labeled(pool, spec, seed)
        return Split(tuple(labeled), tuple(unlabeled) + tuple(self.extra_unlabeled_patients()), tuple(val),
                     tuple(test), protocol=self._protocol(len(labeled), seed, drawn_val, drawn_test))

    def _protocol(self, n_labeled: int, seed: int, drawn_val: bool, drawn_test: bool) -> str:
        o = self.options
        val = f"{o.val_fraction:.0%} fixed draw" if drawn_val else self._val_from
        test = f"{o.test_fraction:.0%} fixed draw" if drawn_test else self._test_from
        ts = {"test": "the test set", "unlabeled": "the UNLABELED training pool (nnunet.imagesTs=unlabeled)",
              "excluded": "left out"}[self._ts_mode]
        patients = (f"patients by nnunet.patient_pattern {o.patient_pattern!r}" if o.patient_pattern
                    else "one case = one patient (no nnunet.patient_pattern)")
        return (f"nnU-Net raw: test = {test}; val = {val}; labeled = {n_labeled} patients drawn with split seed "
                f"{seed}; imagesTs = {ts}; {patients}; channel {self.channel:04d} "
                f"({self._channel_names[self.channel]}) of {len(self._channel_names)}")

    def warnings(self) -> list[str]:
        """The protocol choices a user should see at the start of a run (also in run.json)."""
        out = []
        if self._ts_mode == "unlabeled":
            out.append("nnU-Net imagesTs/ joins the unlabeled training pool (nnunet.imagesTs=unlabeled): nnU-Net's "
                       "test images are seen in training")
        elif self._ts_mode == "excluded" and (self.root / "imagesTs").is_dir():
            out.append("nnU-Net imagesTs/ is left out (no labelsTs/); --set nnunet.imagesTs=unlabeled makes it the "
                       "unlabeled pool")
        if self._test is None:
            out.append(f"nnU-Net test set: a fixed {self.options.test_fraction:.0%} draw of labelsTr (no labelsTs/, "
                       "no nnunet.test_list)")
        if self._val is None:
            out.append(f"nnU-Net val set: a fixed {self.options.val_fraction:.0%} draw (no splits_final.json)")
        if len(self._channel_names) > 1:
            out.append(f"nnU-Net channel {self.channel:04d} ({self._channel_names[self.channel]}) only, of "
                       f"{len(self._channel_names)} (nnunet.channel)")
        if not self.options.patient_pattern:
            out.append("nnU-Net: every case counts as its own patient (nnunet.patient_pattern groups cases)")
        return out

    def describe(self) -> dict:
        return {"root": str(self.root), "classes": list(self.class_names), "labeled": len(self._labeled),
                "imagesTs": self._ts_mode, "imagesTs_cases": len(self._ts), "val_from": self._val_from or "draw",
                "test_from": self._test_from or "draw", "channel": self.channel,
                "channels": {f"{c:04d}": n for c, n in self._channel_names.items()},
                "patients": len(self._by_patient), "intensity": self.options.intensity}

    def case_files(self, case_id: str, with_label: bool = True) -> list[Path]:
        folder, name = ("imagesTs", case_id[3:]) if case_id.startswith("Ts:") else ("imagesTr", case_id)
        return [self.root / folder / f"{name}_0000{self.ending}"] + \
            ([self.root / "labelsTr" / f"{name}{self.ending}"] if with_label and folder == "imagesTr" else [])

    def load_case(self, case_id: str, with_label: bool = True) -> Case:
        ts = case_id.startswith(TS)
        name = case_id[len(TS):] if ts else case_id
        folder = "imagesTs" if ts else "imagesTr"
        image_path = self.root / folder / f"{name}_{self.channel:04d}{self.ending}"
        raw, spacing, facts = read_nifti(image_path, "image")
        label = None
        if with_label:
            if ts and self._ts_mode != "test":
                raise DataError(f"{image_path}: an unlabeled image was asked for its label")
            label_path = self.root / ("labelsTs" if ts else "labelsTr") / f"{name}{self.ending}"
            raw_label, label_spacing, _ = read_nifti(label_path, "label")
            label = self.check_label(raw_label, raw.shape, label_path, label_spacing, spacing)
        return Case(case_id, self._patient(case_id), self._normalise(raw), label, spacing,
                    {"source": str(image_path), **facts})

    def _normalise(self, raw: np.ndarray) -> np.ndarray:
        if self.options.intensity == "minmax-volume":
            return minmax(raw)
        if self.options.intensity == "ct-window":
            hu, _ = to_hounsfield(raw, "auto")
            return window(hu, *self.options.window)
        lo, hi = np.percentile(raw, [0.5, 99.5])
        return minmax(np.clip(raw, lo, hi))
