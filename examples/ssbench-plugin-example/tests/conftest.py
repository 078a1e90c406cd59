import numpy as np
import pytest

from ssbench.api import write_nifti


def write_pairs(root, n=10, seed=0, shape=(6, 40, 48)):
    """n cases of a bright ellipse (label 1) on noise, as images/ and labels/ NIfTI pairs."""
    rng = np.random.default_rng(seed)
    d, h, w = shape
    yy, xx = np.mgrid[:h, :w]
    for i in range(n):
        cy, cx, r = h / 2 + rng.integers(-5, 6), w / 2 + rng.integers(-5, 6), rng.integers(8, 14)
        mask = ((yy - cy) ** 2 + ((xx - cx) * 0.8) ** 2 < r**2).astype(np.uint8)
        label = np.repeat(mask[None], d, 0)
        label[0] = 0  # an apex slice without the structure
        image = rng.normal(100, 10, shape) + 80 * label
        write_nifti(root / "images" / f"case{i:02d}.nii.gz", image, (5.0, 1.0, 1.0), np.int16)
        write_nifti(root / "labels" / f"case{i:02d}.nii.gz", label, (5.0, 1.0, 1.0), np.uint8)
    return root


@pytest.fixture
def pairs_root(tmp_path):
    return write_pairs(tmp_path / "pairs")
