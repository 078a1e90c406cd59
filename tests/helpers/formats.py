"""Test helpers that write dataset folders with nibabel/h5py directly, independent of ssbench's own writer."""

from pathlib import Path

import h5py
import nibabel as nib
import numpy as np


def nifti(path: Path, xyz: np.ndarray, zooms, dtype) -> None:
    """Write an (x, y, z) array the way the challenge files are stored."""
    img = nib.Nifti1Image(xyz.astype(dtype), np.diag([*zooms, 1.0]))
    img.header.set_zooms(zooms)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))


def cardiac_label(shape_xyz, rng):
    x, y, z = shape_xyz
    lab = np.zeros(shape_xyz, np.uint8)
    xx, yy = np.mgrid[0:x, 0:y]
    cx, cy = x // 2 + rng.integers(-3, 4), y // 2 + rng.integers(-3, 4)
    for k in range(z - 1):
        r = 9 - k
        d2 = (xx - cx) ** 2 + (yy - cy) ** 2
        lab[..., k][d2 <= (r + 3) ** 2] = 2
        lab[..., k][d2 <= r**2] = 3
        lab[..., k][((xx - cx + r + 7) ** 2 + (yy - cy) ** 2) <= 16] = 1
    return lab


def write_acdc_raw(root: Path, patients, seed: int = 0, shape_xyz=(48, 40, 6), zooms=(1.5, 1.6, 8.0)) -> Path:
    """A raw-archive ACDC folder (training/patientNNN/...) for the given patient ids."""
    rng = np.random.default_rng(seed)
    for pid in patients:
        folder = root / "training" / pid
        ed, es = 1, int(rng.integers(5, 15))
        for frame in (ed, es):
            lab = cardiac_label(shape_xyz, rng)
            img = lab * 60.0 + rng.normal(100, 10, shape_xyz)
            nifti(folder / f"{pid}_frame{frame:02d}.nii.gz", img, zooms, np.int16)
            nifti(folder / f"{pid}_frame{frame:02d}_gt.nii.gz", lab, zooms, np.uint8)
        (folder / "Info.cfg").write_text(f"ED: {ed}\nES: {es}\nGroup: NOR\nHeight: 170.0\nNbFrame: 20\nWeight: 70.0\n")
    return root


def write_acdc_h5(root: Path, patients, seed: int = 0, shape_dhw=(6, 40, 48)) -> Path:
    """The literature's preprocessed layout: data/patientNNN_frame0K.h5 volumes, slices and list files."""
    rng = np.random.default_rng(seed)
    data = root / "data"
    (data / "slices").mkdir(parents=True, exist_ok=True)
    names = []
    for pid in patients:
        for frame in (1, 2):
            name = f"{pid}_frame{frame:02d}"
            lab = cardiac_label(shape_dhw[::-1], rng).transpose(2, 1, 0)
            img = lab * 0.2 + rng.random(shape_dhw) * 0.3
            img = (img - img.min()) / (img.max() - img.min())
            with h5py.File(data / f"{name}.h5", "w") as fh:
                fh["image"] = img.astype(np.float32)
                fh["label"] = lab.astype(np.uint8)
            for k in range(shape_dhw[0]):
                with h5py.File(data / "slices" / f"{name}_slice_{k}.h5", "w") as fh:
                    fh["image"] = img[k].astype(np.float32)
                    fh["label"] = lab[k].astype(np.uint8)
            names.append(name)
    (root / "train.list").write_text("\n".join(names) + "\n")
    return root


def nnunet_image(i: int) -> str:
    """The tiny nnU-Net dataset's image file of case ``i``, relative to its root."""
    return f"imagesTr/case_{i:03d}_0000.nii.gz"


def nnunet_label(i: int) -> str:
    return f"labelsTr/case_{i:03d}.nii.gz"


def write_nnunet(root: Path, cases: int = 10, shape_xyz=(32, 32, 4), seed: int = 0, zooms=(1.2, 1.2, 5.0)) -> Path:
    """A tiny nnU-Net raw dataset (v2 dataset.json, two foreground classes): with 10 cases its fixed draws give
    7 train, 1 val and 2 test cases, so that a whole run takes seconds on a CPU."""
    import json

    rng = np.random.default_rng(seed)
    (root / "labelsTr").mkdir(parents=True, exist_ok=True)
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "MRI"}, "labels": {"background": 0, "organ": 1, "lesion": 2},
        "numTraining": cases, "file_ending": ".nii.gz"}))
    x, y, z = shape_xyz
    xx, yy = np.mgrid[0:x, 0:y]
    for i in range(cases):
        lab = np.zeros(shape_xyz, np.uint8)
        cx, cy, r = rng.integers(10, x - 10), rng.integers(10, y - 10), rng.integers(5, 8)
        for k in range(z):
            disc = (xx - cx) ** 2 + (yy - cy) ** 2 <= (r - abs(k - z // 2)) ** 2
            lab[..., k][disc] = 1
            lab[..., k][disc & ((xx - cx) ** 2 + (yy - cy) ** 2 <= 4)] = 2
        img = 100 + 80 * lab + rng.normal(0, 15, shape_xyz)
        nifti(root / "imagesTr" / f"case_{i:03d}_0000.nii.gz", img, zooms, np.float32)
        nifti(root / "labelsTr" / f"case_{i:03d}.nii.gz", lab, zooms, np.uint8)
    return root
