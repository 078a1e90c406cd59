"""Deterministic phantoms written in the real on-disk formats, read back by the real loaders.

``write_acdc`` writes an ACDC raw archive (``training/patientNNN/`` with Info.cfg, ED/ES frames and ``_gt``
labels as NIfTI) for patients 001-100, so the literature's frozen split applies unchanged. ``write_bhsd`` writes a
BHSD release (``images/``, ``ground truths/``, ``dataset.json``, ``unlabeled/``) with stored uint16 values in some
volumes and Hounsfield units in others. Both are small (about 128 px in-plane) so that CPU runs finish in minutes;
everything else (label values, anatomy, intensity conventions, spacing in the headers) follows the real data.

The phantom is a pure function of (kind, seed, version): the embedded default is generated once into a cache.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from scipy import ndimage

from ssbench.datasets.nifti import write_nifti

PHANTOM_VERSION = 1
GROUPS = ("NOR", "MINF", "DCM", "HCM", "RV")


def _smooth_field(rng, shape, sigma, amplitude):
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    field /= np.abs(field).max() + 1e-8
    return 1.0 + amplitude * field


def _heart_frame(rng, anatomy, phase, shape, spacing):
    """Label volume (D,H,W) of one cardiac frame: 1 RV, 2 myocardium, 3 LV."""
    d, h, w = shape
    label = np.zeros(shape, np.uint8)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cy, cx = anatomy["center"]
    ang = anatomy["angle"]
    ca, sa = np.cos(ang), np.sin(ang)
    u = (xx - cx) * ca + (yy - cy) * sa  # heart axis frame
    v = -(xx - cx) * sa + (yy - cy) * ca
    squeeze = 1.0 if phase == "ED" else anatomy["ejection"]
    px = spacing[1]
    for z in range(d):
        # base (z = 0) to apex: the ventricles taper
        t = z / max(d - 1, 1)
        taper = np.sqrt(max(1.0 - 0.85 * t**1.6, 0.0))
        r_lv = anatomy["r_lv"] * taper * squeeze / px
        thick = anatomy["myo"] * (1.0 + (1 - squeeze) * 0.9) / px
        if r_lv < 1.0:
            continue
        ell = (u / (r_lv * 1.1)) ** 2 + (v / r_lv) ** 2
        ell_myo = (u / (r_lv * 1.1 + thick)) ** 2 + (v / (r_lv + thick)) ** 2
        label[z][ell_myo <= 1] = 2
        label[z][ell <= 1] = 3
        if t < anatomy["rv_extent"]:
            r_rv = anatomy["r_rv"] * taper * (1.0 if phase == "ED" else 0.8) / px
            off = (r_lv + thick) * 0.95 + r_rv * 0.35
            ell_rv = ((u + off) / (r_rv * 0.75)) ** 2 + (v / (r_rv * 1.35)) ** 2
            label[z][(ell_rv <= 1) & (label[z] == 0)] = 1
    return label


def _mri_image(rng, label, spacing):
    """MRI-like intensities: bright blood pools, dark myocardium, body, lungs, noise and a bias field."""
    d, h, w = label.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    body = ((xx - w / 2) / (w * 0.46)) ** 2 + ((yy - h / 2) / (h * 0.40)) ** 2 <= 1
    img = np.zeros(label.shape, np.float32)
    img[:, body] = 0.35
    lung_c = (h * 0.45, w * rng.uniform(0.72, 0.8))
    lung = ((xx - lung_c[1]) / (w * 0.12)) ** 2 + ((yy - lung_c[0]) / (h * 0.2)) ** 2 <= 1
    img[:, lung & body] = 0.06
    blobs = ndimage.gaussian_filter(rng.standard_normal(label.shape), (0, 3, 3)) * 0.6
    img += np.where(body, blobs * 0.15, 0)
    tissue = {1: rng.uniform(0.7, 0.85), 2: rng.uniform(0.22, 0.3), 3: rng.uniform(0.78, 0.92)}
    for cls, value in tissue.items():
        img[label == cls] = value
    img = ndimage.gaussian_filter(img, (0, 0.7, 0.7))
    img *= _smooth_field(rng, label.shape, (2, h / 5, w / 5), 0.25)
    noise = rng.normal(0, 0.05, (2,) + label.shape)
    img = np.sqrt((img + noise[0]) ** 2 + noise[1] ** 2)  # Rician magnitude noise
    return np.clip(img * rng.uniform(300, 900), 0, 4000)


def write_acdc(out: str | Path, seed: int = 0, patients: int = 100) -> Path:
    """Write an ACDC raw archive of ``patients`` phantom patients (patient001...) under ``out/training``."""
    out = Path(out)
    for n in range(1, patients + 1):
        rng = np.random.default_rng([seed, n, PHANTOM_VERSION])
        pid = f"patient{n:03d}"
        group = GROUPS[rng.integers(len(GROUPS))]
        d = int(rng.integers(6, 11))
        h, w = int(rng.integers(120, 161)), int(rng.integers(120, 161))
        px = float(rng.uniform(1.37, 1.68))
        spacing = (float(rng.choice([5.0, 6.5, 8.0, 10.0])), px, px)
        anatomy = {
            "center": (h * rng.uniform(0.42, 0.55), w * rng.uniform(0.45, 0.58)),
            "angle": rng.uniform(-0.6, 0.6),
            "r_lv": rng.uniform(17, 24) * (1.35 if group == "DCM" else 1.0),
            "myo": rng.uniform(6, 9) * (1.6 if group == "HCM" else 0.75 if group == "DCM" else 1.0),
            "r_rv": rng.uniform(18, 26) * (1.4 if group == "RV" else 1.0),
            "rv_extent": rng.uniform(0.6, 0.9),
            "ejection": rng.uniform(0.6, 0.8) if group in ("NOR", "HCM") else rng.uniform(0.8, 0.93),
        }
        nframes = int(rng.integers(20, 31))
        ed, es = 1, int(rng.integers(8, 15))
        folder = out / "training" / pid
        folder.mkdir(parents=True, exist_ok=True)
        for frame, phase in ((ed, "ED"), (es, "ES")):
            label = _heart_frame(rng, anatomy, phase, (d, h, w), spacing)
            image = _mri_image(rng, label, spacing)
            write_nifti(folder / f"{pid}_frame{frame:02d}.nii.gz", image, spacing, np.int16)
            write_nifti(folder / f"{pid}_frame{frame:02d}_gt.nii.gz", label, spacing, np.uint8)
        (folder / "Info.cfg").write_text(
            f"ED: {ed}\nES: {es}\nGroup: {group}\nHeight: {rng.uniform(150, 195):.1f}\n"
            f"NbFrame: {nframes}\nWeight: {rng.uniform(50, 110):.1f}\n"
        )
    return out


def _head_volume(rng, d, h, w, px):
    """Head CT in HU and a lesion label map (1 EDH, 2 IPH, 3 IVH, 4 SAH, 5 SDH, each often absent)."""
    zz, yy, xx = np.mgrid[0:d, 0:h, 0:w].astype(np.float32)
    cz = d / 2
    a, b = w * 0.36, h * 0.44
    zscale = np.sqrt(np.clip(1 - ((zz - cz) / (d * 0.62)) ** 2, 0.05, 1))
    r = np.sqrt(((xx - w / 2) / (a * zscale)) ** 2 + ((yy - h / 2) / (b * zscale)) ** 2)
    hu = np.full((d, h, w), -1000.0, np.float32)
    skull_t = 6.0 / px / (a)  # about 6 mm of bone
    hu[r <= 1 + skull_t] = 1000 + rng.normal(0, 150)
    brain = r <= 1
    hu[brain] = 32 + 6 * ndimage.gaussian_filter(rng.standard_normal((d, h, w)), 2)[brain]
    vent = (((xx - w / 2) / (a * 0.22 * zscale)) ** 2 + ((yy - h / 2) / (b * 0.3 * zscale)) ** 2 <= 1) & (
        np.abs(zz - cz) < d * 0.25
    )
    hu[vent] = 6
    label = np.zeros((d, h, w), np.uint8)
    present = rng.random(5) < 0.45
    if not present.any():
        present[rng.integers(5)] = True
    theta = np.arctan2(yy - h / 2, xx - w / 2)
    side = rng.uniform(-np.pi, np.pi)
    zc = rng.uniform(d * 0.3, d * 0.7)
    if present[0]:  # EDH: lens against the skull
        lens = (np.abs(np.angle(np.exp(1j * (theta - side)))) < 0.5) & (r > 0.88) & (r <= 1) & (np.abs(zz - zc) < d * 0.15)
        label[lens] = 1
    if present[1]:  # IPH: blob in the parenchyma
        c = (zc, h / 2 + rng.uniform(-0.4, 0.4) * b, w / 2 + rng.uniform(-0.5, 0.5) * a)
        rad = rng.uniform(5, 14) / px
        blob = ((zz - c[0]) * 2.5) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 <= rad**2
        label[blob & brain & ~vent] = 2
    if present[2]:  # IVH: blood inside the ventricles (dependent part)
        label[vent & (yy > h / 2)] = 3
    if present[3]:  # SAH: thin layer along the brain surface
        sah = (r > 0.9) & (r <= 0.95) & (np.cos(theta - side - 2.0) > 0.3) & (np.abs(zz - zc) < d * 0.3)
        label[sah & (label == 0)] = 4
    if present[4]:  # SDH: crescent along the inner table
        cres = (r > 0.93) & (r <= 1) & (np.cos(theta - side + 2.2) > 0.2) & (np.abs(zz - zc) < d * 0.3)
        label[cres & (label == 0)] = 5
    blood = {1: 75, 2: 65, 3: 55, 4: 50, 5: 70}
    for cls, value in blood.items():
        m = label == cls
        hu[m] = value + rng.normal(0, 4, m.sum())
    hu = ndimage.gaussian_filter(hu, (0, 0.6, 0.6)) + rng.normal(0, 4, hu.shape)
    return hu, label


def write_bhsd(out: str | Path, seed: int = 0, labeled: int = 40, unlabeled: int = 10) -> Path:
    """Write a BHSD-like release: ``labeled`` volumes (half train, half test in dataset.json) and unlabeled ones."""
    out = Path(out)
    names = []
    for n in range(labeled + unlabeled):
        rng = np.random.default_rng([seed, 1000 + n, PHANTOM_VERSION])
        name = f"ID_{rng.integers(16**8):08x}_ID_{rng.integers(16**10):010x}"
        d, h, w = int(rng.integers(12, 21)), 128, 128
        px = float(rng.uniform(1.5, 2.0))  # 4x coarser than the release's 0.37-0.68 mm, for CPU runs
        spacing = (float(rng.choice([5.0, 5.0, 6.5, 2.5])), px, px)
        hu, label = _head_volume(rng, d, h, w, px)
        stored = n % 2 == 0  # half the volumes keep raw stored values, as some release headers do
        image = np.clip(hu + 1024, 0, 65535).astype(np.uint16) if stored else np.round(hu).astype(np.int16)
        if n < labeled:
            write_nifti(out / "images" / f"{name}.nii.gz", image, spacing, image.dtype)
            write_nifti(out / "ground truths" / f"{name}.nii.gz", label, spacing, np.uint8)
            names.append(name)
        else:
            sub = "anybleed" if label.any() else "nobleed"
            write_nifti(out / "unlabeled" / sub / f"{name}.nii.gz", image, spacing, image.dtype)
    half = len(names) // 2
    spec = {
        "name": "BHSD (synthetic phantom)",
        "labels": {"0": "background", "1": "EDH", "2": "IPH", "3": "IVH", "4": "SAH", "5": "SDH"},
        "training": [{"image": f"./imagesTr/{n}.nii.gz", "label": f"./labelsTr/{n}.nii.gz"} for n in names[:half]],
        "test": [f"./imagesTs/{n}.nii.gz" for n in names[half:]],
    }
    (out / "dataset.json").write_text(json.dumps(spec, indent=2))
    return out


def write_nnunet(out: str | Path, seed: int = 0, patients: int = 16, test_patients: int = 4) -> Path:
    """Write an nnU-Net v2 raw dataset of cardiac phantoms: ``imagesTr/{case}_0000.nii.gz``, ``labelsTr/``, an
    official test set in ``imagesTs/`` with ``labelsTs/``, ``dataset.json`` and a 5-fold ``splits_final.json``
    (nnU-Net's format, grouped by patient). Each patient has two cases, ``pat007_ed`` and ``pat007_es``: grouped by
    ``--set 'nnunet.patient_pattern=^(pat\\d+)'``."""
    out = Path(out)
    names: dict[str, list[str]] = {"Tr": [], "Ts": []}
    for n in range(1, patients + test_patients + 1):
        rng = np.random.default_rng([seed, 5000 + n, PHANTOM_VERSION])
        part = "Tr" if n <= patients else "Ts"
        # half ACDC's in-plane size at twice its pixel spacing: the same anatomy in mm, light enough for CPU sweeps
        d, h, w = int(rng.integers(6, 11)), int(rng.integers(60, 81)), int(rng.integers(60, 81))
        px = float(rng.uniform(2.74, 3.36))
        spacing = (float(rng.choice([5.0, 6.5, 8.0, 10.0])), px, px)
        anatomy = {"center": (h * rng.uniform(0.42, 0.55), w * rng.uniform(0.45, 0.58)),
                   "angle": rng.uniform(-0.6, 0.6), "r_lv": rng.uniform(17, 24), "myo": rng.uniform(6, 9),
                   "r_rv": rng.uniform(18, 26), "rv_extent": rng.uniform(0.6, 0.9), "ejection": rng.uniform(0.6, 0.8)}
        for phase in ("ED", "ES"):
            case = f"pat{n:03d}_{phase.lower()}"
            label = _heart_frame(rng, anatomy, phase, (d, h, w), spacing)
            image = _mri_image(rng, label, spacing)
            write_nifti(out / f"images{part}" / f"{case}_0000.nii.gz", image, spacing, np.int16)
            write_nifti(out / f"labels{part}" / f"{case}.nii.gz", label, spacing, np.uint8)
            names[part].append(case)
    spec = {"name": "Dataset900_Phantom (synthetic)", "channel_names": {"0": "MRI"},
            "labels": {"background": 0, "RV": 1, "MYO": 2, "LV": 3}, "numTraining": len(names["Tr"]),
            "file_ending": ".nii.gz"}
    (out / "dataset.json").write_text(json.dumps(spec, indent=2))
    tr = names["Tr"]
    folds = [{"train": [c for i, c in enumerate(tr) if i // 2 % 5 != k],
              "val": [c for i, c in enumerate(tr) if i // 2 % 5 == k]} for k in range(5)]
    (out / "splits_final.json").write_text(json.dumps(folds, indent=2))
    return out


WRITERS = {"acdc": write_acdc, "bhsd": write_bhsd, "nnunet": write_nnunet}
MARKER = "PHANTOM.json"  # written beside every phantom; the engine reads it: a phantom is always filed as one


def write_marker(out: Path, kind: str, seed: int) -> None:
    (Path(out) / MARKER).write_text(json.dumps({"kind": kind, "seed": seed, "version": PHANTOM_VERSION}))


def phantom_of(root: str | Path) -> dict | None:
    """The marker of a phantom written by ssbench (``ssbench data synth`` or the embedded default), else None."""
    path = Path(root) / MARKER
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {"kind": "unknown"}  # a damaged marker still marks a phantom


def cache_root() -> Path:
    """Where the embedded default phantoms live (no environment variable is required)."""
    base = os.environ.get("SSBENCH_CACHE")
    return Path(base) if base else Path.home() / ".cache" / "ssbench"


def embedded(dataset: str, seed: int = 0) -> Path:
    """Path of the embedded phantom for ``dataset``, generated once (atomically) into the cache."""
    if dataset not in WRITERS:
        from ssbench.errors import UserError

        raise UserError(f"--dataset {dataset}: no embedded phantom (have {', '.join(WRITERS)}); pass --data-root")
    final = cache_root() / f"phantom-{dataset}-v{PHANTOM_VERSION}-seed{seed}"
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=final.name + ".", dir=final.parent))
    try:
        WRITERS[dataset](tmp, seed=seed)
        write_marker(tmp, dataset, seed)
        try:
            os.replace(tmp, final)
        except OSError:  # another process finished first
            pass
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final
