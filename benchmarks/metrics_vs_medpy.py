"""ssbench.metrics.hd95 vs medpy.metric.binary.hd95: same values, and the speed ratio measured in one run.

    python benchmarks/metrics_vs_medpy.py [--repeats 5]

Two cases from the issue: a 40x512x512 head CT with lesion-sized structures (spacing 5 x 0.488 x 0.488 mm) and a
10x256x216 cardiac volume with ventricle-sized structures (spacing 10 x 1.5 x 1.5 mm). Prints the median time of
each implementation, the ratio, and the largest absolute difference of the values.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from medpy.metric import binary as medpy_binary
from scipy import ndimage

from ssbench import metrics


def blob(shape, center, radii):
    grid = np.ogrid[tuple(slice(0, s) for s in shape)]
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, center, radii)) <= 1


def perturb(mask, rng, iterations=1):
    """A plausible prediction: the reference dilated or eroded a little, with a few spurious voxels."""
    out = ndimage.binary_dilation(mask, iterations=iterations) if rng.random() < 0.5 else ndimage.binary_erosion(
        mask, iterations=iterations)
    if not out.any():
        out = mask.copy()
    noise = rng.random(mask.shape) < 2e-6
    return out | noise


def cases(rng):
    ct_shape = (40, 512, 512)
    lesion = blob(ct_shape, (18, 300, 210), (3, 22, 15)) | blob(ct_shape, (24, 180, 330), (2, 9, 12))
    cardiac_shape = (10, 256, 216)
    lv = blob(cardiac_shape, (4, 128, 110), (4, 30, 26))
    return [
        ("CT 40x512x512, lesions", lesion, perturb(lesion, rng), (5.0, 0.488, 0.488)),
        ("cardiac 10x256x216, LV", lv, perturb(lv, rng, 2), (10.0, 1.5, 1.5)),
    ]


def timed(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - t0)
    return value, float(np.median(times))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"{'case':28s} {'medpy s':>9s} {'ssbench s':>10s} {'ratio':>7s} {'max |delta|':>12s}")
    for name, ref, pred, spacing in cases(rng):
        for units, sp in (("mm", spacing), ("voxel", None)):
            ref_v, t_ref = timed(lambda: medpy_binary.hd95(pred, ref, voxelspacing=sp), args.repeats)
            our_v, t_our = timed(lambda: metrics.hd95(pred, ref, sp), args.repeats)
            print(f"{name + ' ' + units:28s} {t_ref:9.4f} {t_our:10.5f} {t_ref / t_our:6.1f}x {abs(ref_v - our_v):12.2e}")


if __name__ == "__main__":
    main()
