"""Surface distances with medpy 0.5's exact semantics, without medpy's whole-volume passes.

medpy.metric.binary computes, for masks A and B:
  surface(M) = M xor binary_erosion(M, connectivity structure)   (the array border counts as background)
  d(A -> B)  = distance_transform_edt(~surface(B), sampling=spacing)[surface(A)]
on the whole array, twice. We compute the same numbers in a region R around the reference (its bounding box
grown by a margin), where the reference's surface lies entirely:

* surfaces: binary erosion on R grown by one voxel (so every voxel of R sees its true neighbours);
* prediction voxels outside R (stray false positives): their surface test by direct neighbour look-up;
* A -> B distances for surface points inside R: the Euclidean distance transform of R, exact because every
  surface point of B lies in R;
* distances involving the stray points outside R: a k-d tree (exact nearest neighbour).
The minimum over a partition of the target points is the global minimum, so nothing is approximated; for a lesion
in a 40x512x512 CT, R holds a few thousand voxels instead of ten million.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree


@dataclass(frozen=True)
class SurfaceDistances:
    """Directed distances from the surface voxels of ``pred`` to ``ref`` and back, in the units of spacing."""

    pred_to_ref: np.ndarray
    ref_to_pred: np.ndarray


def normalize_spacing(spacing, ndim: int) -> tuple[float, ...]:
    if spacing is None:
        return (1.0,) * ndim
    if np.isscalar(spacing):
        return (float(spacing),) * ndim
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != ndim:
        raise ValueError(f"spacing has {len(spacing)} values for a {ndim}-D mask")
    return spacing


def _bbox(mask: np.ndarray) -> list[tuple[int, int]]:
    """Inclusive index range per axis of a non-empty mask (later axes searched only inside the earlier ranges)."""
    out = []
    view = mask
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        present = np.flatnonzero(view.any(axis=other)) if other else np.flatnonzero(view)
        lo, hi = int(present[0]), int(present[-1])
        out.append((lo, hi))
        index = [slice(None)] * mask.ndim
        index[axis] = slice(lo, hi + 1)
        view = view[tuple(index)]
    return out


# R is the reference's box grown by a few voxels so that a prediction that is off by a little still falls inside.
MARGIN = 3
# Below this many region voxels per surface point the distance transform beats a k-d tree (measured with
# benchmarks/metrics_vs_medpy.py: about 35 ns per transformed voxel vs about 1 us per tree query).
EDT_VOXELS_PER_POINT = 40


def _region(ref: np.ndarray) -> tuple[tuple[slice, ...], tuple[slice, ...], tuple[slice, ...]]:
    """R: the reference's box grown by MARGIN; E: R grown by one voxel; inner: R's position inside E."""
    region, outer, inner = [], [], []
    for (lo, hi), n in zip(_bbox(ref), ref.shape):
        r0, r1 = max(lo - MARGIN, 0), min(hi + MARGIN + 1, n)
        e0, e1 = max(r0 - 1, 0), min(r1 + 1, n)
        region.append(slice(r0, r1))
        outer.append(slice(e0, e1))
        inner.append(slice(r0 - e0, r0 - e0 + (r1 - r0)))
    return tuple(region), tuple(outer), tuple(inner)


def _outside(mask: np.ndarray, region: tuple[slice, ...]) -> np.ndarray:
    """Coordinates of the voxels of ``mask`` outside the box ``region``: the box's complement is cut into at most
    two slabs per axis, so only those slabs are scanned and nothing is counted twice."""
    found = []
    fixed: list[slice] = []
    for axis, r in enumerate(region):
        n = mask.shape[axis]
        for lo, hi in ((0, r.start), (r.stop, n)):
            if hi <= lo:
                continue
            index = tuple(fixed) + (slice(lo, hi),) + (slice(None),) * (mask.ndim - axis - 1)
            coords = np.stack(np.nonzero(mask[index]), axis=1)
            if len(coords):
                coords += np.array([s.start or 0 for s in index] + [0] * (mask.ndim - len(index)))
                found.append(coords)
        fixed.append(r)
    return np.concatenate(found) if found else np.empty((0, mask.ndim), np.int64)


def _stray_surface(mask: np.ndarray, region: tuple[slice, ...], offsets: np.ndarray) -> np.ndarray:
    """Coordinates of surface voxels of ``mask`` outside ``region``, by direct neighbour look-up."""
    coords = _outside(mask, region)
    shape = np.array(mask.shape)
    surface = np.zeros(len(coords), bool)
    for off in offsets:
        nb = coords + off
        inside = np.all((nb >= 0) & (nb < shape), axis=1)
        surface |= ~inside  # the array border counts as background
        idx = np.flatnonzero(inside)
        surface[idx] |= ~mask[tuple(nb[idx].T)]
    return coords[surface]


def surface_distances(pred: np.ndarray, ref: np.ndarray, spacing=None, connectivity: int = 1) -> SurfaceDistances:
    """Both directed surface-distance sets of two non-empty boolean masks of the same shape (medpy 0.5 exact)."""
    pred = np.atleast_1d(np.asarray(pred, dtype=bool))
    ref = np.atleast_1d(np.asarray(ref, dtype=bool))
    if pred.shape != ref.shape:
        raise ValueError(f"shape mismatch: prediction {pred.shape} vs reference {ref.shape}")
    if not pred.any() or not ref.any():
        raise ValueError("surface distances need two non-empty masks (apply an empty-mask policy first)")
    sampling = np.asarray(normalize_spacing(spacing, pred.ndim))
    structure = ndimage.generate_binary_structure(pred.ndim, connectivity)
    region, outer, inner = _region(ref)

    def surface_in_region(mask):
        crop = mask[outer]
        return (crop ^ ndimage.binary_erosion(crop, structure=structure))[inner]

    ref_surface = surface_in_region(ref)  # the whole reference surface lies in R
    pred_surface = surface_in_region(pred)
    has_stray = np.count_nonzero(pred) != np.count_nonzero(pred[region])
    stray = np.empty((0, pred.ndim))
    if has_stray:
        offsets = np.argwhere(structure) - 1
        offsets = offsets[np.any(offsets != 0, axis=1)]
        stray = _stray_surface(pred, region, offsets) * sampling

    origin = np.array([s.start for s in region])
    ref_points = (np.argwhere(ref_surface) + origin) * sampling
    n_points = len(ref_points) + int(np.count_nonzero(pred_surface)) + len(stray)
    if ref_surface.size > EDT_VOXELS_PER_POINT * n_points:  # sparse surfaces in a large region: k-d trees only
        pred_points = np.concatenate([(np.argwhere(pred_surface) + origin) * sampling, stray])
        return SurfaceDistances(
            pred_to_ref=cKDTree(ref_points).query(pred_points)[0],
            ref_to_pred=cKDTree(pred_points).query(ref_points)[0],
        )

    to_ref = ndimage.distance_transform_edt(~ref_surface, sampling=tuple(sampling))
    pred_to_ref = to_ref[pred_surface]
    if len(stray):
        pred_to_ref = np.concatenate([pred_to_ref, cKDTree(ref_points).query(stray)[0]])

    ref_to_pred = np.full(len(ref_points), np.inf)
    if pred_surface.any():
        to_pred = ndimage.distance_transform_edt(~pred_surface, sampling=tuple(sampling))
        ref_to_pred = to_pred[ref_surface]
    if len(stray):
        ref_to_pred = np.minimum(ref_to_pred, cKDTree(stray).query(ref_points)[0])
    return SurfaceDistances(pred_to_ref=pred_to_ref, ref_to_pred=ref_to_pred)
