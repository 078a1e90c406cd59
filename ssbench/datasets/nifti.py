"""Checked NIfTI reading and writing in the project's (D, H, W) slices-first convention.

NIfTI arrays are (x, y, z) with slices along the last axis; we transpose to (z, y, x) like SimpleITK's
GetArrayFromImage does (the literature's preprocessing), and reverse the header zooms to match.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from ssbench.errors import DataError


def read_nifti(path: str | Path, what: str = "image") -> tuple[np.ndarray, tuple[float, float, float], dict]:
    """Return (array (D,H,W), spacing mm (D,H,W), header facts). Raise DataError naming ``path``."""
    import nibabel as nib

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: missing {what} file")
    raw_zooms = _raw_pixdim(path)  # before nib.load, which rewrites a zero pixdim as 1 (and logs it)
    if raw_zooms is not None and any(not np.isfinite(z) or z <= 0 for z in raw_zooms):
        raise DataError(f"{path}: invalid voxel spacing {tuple(float(z) for z in raw_zooms)} in the header "
                        "(pixdim 1-3 must be positive)")
    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj)  # applies scl_slope/scl_inter like get_fdata, keeps integer types
    except (OSError, EOFError, ValueError, TypeError, MemoryError, zlib.error, gzip.BadGzipFile,
            nib.filebasedimages.ImageFileError, nib.spatialimages.HeaderDataError) as exc:
        raise DataError(f"{path}: cannot read NIfTI ({type(exc).__name__}: {exc})".splitlines()[0]) from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim == 2:
        data = data[..., None]
    if data.ndim != 3:
        raise DataError(f"{path}: expected a 3-D volume, got shape {data.shape}")
    if 0 in data.shape or not np.issubdtype(data.dtype, np.number):
        raise DataError(f"{path}: not a numeric {what} volume (shape {data.shape}, {data.dtype})")
    if np.issubdtype(data.dtype, np.complexfloating):  # a cast to real would silently drop the imaginary part
        raise DataError(f"{path}: the {what} holds complex values ({data.dtype}); expected real intensities")
    if what == "image" and np.issubdtype(data.dtype, np.floating):
        bad = int(data.size - np.count_nonzero(np.isfinite(data)))
        if bad:
            raise DataError(f"{path}: the image holds {bad} non-finite values (NaN or infinity)")
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    if any(z <= 0 or not np.isfinite(z) for z in zooms):
        raise DataError(f"{path}: invalid voxel spacing {zooms} in the header")
    facts = {
        "dtype": str(img.get_data_dtype()),
        "scl_slope": _float_or_none(img.header.get("scl_slope")),
        "scl_inter": _float_or_none(img.header.get("scl_inter")),
    }
    return np.ascontiguousarray(data.transpose(2, 1, 0)), zooms[::-1], facts


def _raw_pixdim(path: Path):
    """pixdim[1:4] as the file's header holds them (NIfTI-1 or -2), or None when the header cannot be read here
    (nib.load then says why)."""
    import nibabel as nib
    from nibabel.openers import ImageOpener

    for header_class in (nib.Nifti1Header, nib.Nifti2Header):
        try:
            with ImageOpener(str(path)) as fh:
                header = header_class.from_fileobj(fh, check=False)
            if int(header["sizeof_hdr"]) != header_class.sizeof_hdr:
                continue
            ndim = min(3, max(int(header["dim"][0]), 0))  # pixdims past the image's dimensions are unused
            return [float(z) for z in header["pixdim"][1:1 + ndim]]
        except Exception:  # not this kind of header, or not a header at all: nib.load reports the file
            continue
    return None


def write_nifti(path: str | Path, array: np.ndarray, spacing: tuple[float, float, float], dtype) -> None:
    """Write a (D,H,W) array with spacing (D,H,W) mm as a NIfTI-1 file in (x, y, z) order."""
    import nibabel as nib

    data = np.ascontiguousarray(np.asarray(array).transpose(2, 1, 0)).astype(dtype)
    affine = np.diag([spacing[2], spacing[1], spacing[0], 1.0])
    img = nib.Nifti1Image(data, affine)
    img.header.set_zooms((spacing[2], spacing[1], spacing[0]))
    img.header.set_xyzt_units("mm", "sec")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))


def _float_or_none(v):
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if not np.isfinite(f) else f
