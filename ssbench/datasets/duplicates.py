"""The same scan in the unlabeled pool and in val or test, found by its voxels rather than its file name: BHSD's
unlabeled release is a separate folder, so a test scan saved there under another name would put test images into
training. A hash of each image's voxels (shape, dtype and bytes, BLAKE2b) is compared once, when the run's inputs
are loaded (which reads every volume anyway); a match stops the run before anything trains, with one line naming
both files."""

from __future__ import annotations

import hashlib

import numpy as np

from ssbench.errors import DataError


def voxel_hash(image: np.ndarray) -> str:
    a = np.ascontiguousarray(image)
    h = hashlib.blake2b(f"{a.shape}{a.dtype}".encode(), digest_size=16)
    h.update(memoryview(a).cast("B"))
    return h.hexdigest()


def _name(case) -> str:
    return str(case.meta.get("source", case.case_id))


def check_unlabeled_against(unlabeled, held_out: dict[str, tuple[str, str]]) -> None:
    """``held_out``: voxel hash -> (set name, file) of the val and test images. Raises DataError on the first
    unlabeled case with the same voxels."""
    for case in unlabeled:
        hit = held_out.get(voxel_hash(case.image))
        if hit is not None:
            raise DataError(f"{_name(case)}: the same voxels as {hit[0]} scan {hit[1]}: an unlabeled volume must not "
                            "be a val or test scan (remove it from the unlabeled folder)")


def held_out_hashes(cases, set_name: str) -> dict[str, tuple[str, str]]:
    return {voxel_hash(c.image): (set_name, _name(c)) for c in cases}
