"""ssbench.metrics against medpy 0.5 (the literature's code) on random and edge-case masks."""

import numpy as np
import pytest
from medpy.metric import binary as mb

from ssbench import metrics as M
from ssbench.metrics.evaluation import MetricPolicy, evaluate_case

TOL = 1e-9


def _check(a, b, spacing):
    assert abs(M.hd95(a, b, spacing) - mb.hd95(a, b, spacing)) <= TOL
    assert abs(M.asd(a, b, spacing) - mb.asd(a, b, spacing)) <= TOL
    assert abs(M.asd(b, a, spacing) - mb.asd(b, a, spacing)) <= TOL
    assert abs(M.assd(a, b, spacing) - mb.assd(a, b, spacing)) <= TOL
    assert abs(M.dice(a, b) - mb.dc(a, b)) <= TOL
    assert abs(M.jaccard(a, b) - mb.jc(a, b)) <= TOL


@pytest.mark.parametrize("seed", range(6))
def test_random_masks_match_medpy(seed):
    rng = np.random.default_rng(seed)
    checked = 0
    while checked < 25:
        nd = int(rng.integers(2, 4))
        shape = tuple(int(s) for s in rng.integers(3, 24, size=nd))
        a = rng.random(shape) < rng.uniform(0.02, 0.6)
        b = rng.random(shape) < rng.uniform(0.02, 0.6)
        if not a.any() or not b.any():
            continue
        spacing = tuple(rng.uniform(0.3, 10.0, size=nd))
        _check(a, b, None)
        _check(a, b, spacing)
        checked += 1


def _ball(shape, center, radius, spacing=(1, 1, 1)):
    grid = np.indices(shape).astype(float)
    d2 = sum(((g - c) * s) ** 2 for g, c, s in zip(grid, center, spacing))
    return d2 <= radius**2


@pytest.mark.parametrize("spacing", [None, (10.0, 1.5, 1.5), (2.5, 0.49, 0.49)])
def test_edge_cases_match_medpy(spacing):
    shape = (12, 40, 36)
    single = np.zeros(shape, bool)
    single[5, 20, 20] = True
    other_single = np.zeros(shape, bool)
    other_single[7, 3, 30] = True
    border = np.zeros(shape, bool)
    border[:, :6, :] = True  # touches three array faces
    corner = np.zeros(shape, bool)
    corner[-3:, -5:, -5:] = True
    outer = _ball(shape, (6, 20, 18), 9)
    inner = _ball(shape, (6, 20, 18), 4)  # nested
    far = _ball(shape, (6, 5, 30), 3)  # disjoint
    ring = outer & ~inner
    full = np.ones(shape, bool)
    pairs = [(single, other_single), (single, outer), (border, outer), (corner, border), (outer, inner),
             (inner, far), (ring, inner), (full, single), (full, border), (outer | far, inner)]
    for a, b in pairs:
        _check(a, b, spacing)
        _check(b, a, spacing)


def test_2d_and_identical_masks():
    a = np.zeros((30, 30), bool)
    a[5:20, 8:25] = True
    _check(a, a, (0.7, 1.3))
    assert M.hd95(a, a) == 0.0
    assert M.dice(a, a) == 1.0


def test_empty_masks_raise_instead_of_guessing():
    a = np.zeros((5, 5), bool)
    b = a.copy()
    b[2, 2] = True
    with pytest.raises(ValueError):
        M.hd95(a, b)
    with pytest.raises(ValueError):
        M.dice(a, a)


def test_empty_policies_never_reward_by_default():
    ref = np.zeros((4, 10, 10), np.uint8)
    ref[1:3, 2:6, 2:6] = 1
    ref[1:3, 6:9, 6:9] = 2
    pred = np.zeros_like(ref)
    pred[1:3, 2:6, 2:6] = 1  # class 1 perfect, class 2 missed, class 3 absent in both
    spacing = (5.0, 1.0, 1.0)
    rows = {r["class_id"]: r for r in evaluate_case(pred, ref, [1, 2, 3], spacing, MetricPolicy(), "mm")}
    assert rows[1]["status"] == "ok" and rows[1]["dice"] == 1.0 and rows[1]["hd95"] == 0.0
    diag = np.sqrt((4 * 5.0) ** 2 + 10**2 + 10**2)
    assert rows[2]["status"] == "missed" and rows[2]["dice"] == 0.0 and rows[2]["hd95"] == pytest.approx(diag)
    assert rows[3]["status"] == "absent" and np.isnan(rows[3]["dice"])
    # a false positive is penalised like a miss
    fp = pred.copy()
    fp[0, 0, 0] = 3
    row3 = evaluate_case(fp, ref, [3], spacing, MetricPolicy(), "mm")[0]
    assert row3["status"] == "false_positive" and row3["hd95"] == pytest.approx(diag)
    # the legacy policy reproduces BCP's zero, and says so by name
    legacy = evaluate_case(pred, ref, [2], spacing, MetricPolicy(empty="legacy-zero"), "mm")[0]
    assert legacy["hd95"] == 0.0 and legacy["dice"] == 0.0
    excl = evaluate_case(pred, ref, [2], spacing, MetricPolicy(empty="exclude"), "mm")[0]
    assert np.isnan(excl["hd95"]) and excl["dice"] == 0.0


def test_voxel_units_ignore_spacing():
    ref = np.zeros((6, 20, 20), np.uint8)
    ref[2:4, 5:10, 5:10] = 1
    pred = np.zeros_like(ref)
    pred[2:5, 6:12, 5:10] = 1
    mm = evaluate_case(pred, ref, [1], (8.0, 1.5, 1.5), MetricPolicy(), "mm")[0]
    vox = evaluate_case(pred, ref, [1], None, MetricPolicy(), "voxel")[0]
    assert vox["hd95"] == pytest.approx(mb.hd95(pred == 1, ref == 1))
    assert mm["hd95"] == pytest.approx(mb.hd95(pred == 1, ref == 1, (8.0, 1.5, 1.5)))
    assert mm["hd95"] != vox["hd95"]


@pytest.mark.parametrize("seed", range(8))
def test_compact_reference_with_stray_predictions_matches_medpy(seed):
    """Exercises both internal paths: the distance transform around the reference with k-d trees for stray
    false positives outside it, and k-d trees alone for small surfaces in a large box."""
    rng = np.random.default_rng(100 + seed)
    shape = (int(rng.integers(6, 20)), int(rng.integers(30, 90)), int(rng.integers(30, 90)))
    center = [rng.uniform(2, s - 2) for s in shape]
    ref = _ball(shape, center, rng.uniform(2, 8), spacing=(3, 1, 1))
    if seed % 2:  # a second, far-away reference structure makes a large box with sparse surfaces
        ref |= _ball(shape, [rng.uniform(0, s) for s in shape], 2.5, spacing=(3, 1, 1))
    shift = rng.integers(-2, 3, size=3)
    pred = np.roll(ref, tuple(shift), axis=(0, 1, 2))
    pred |= rng.random(shape) < 3e-4  # stray voxels anywhere, the array border included
    pred[0, 0, 0] = bool(seed % 3)
    if not ref.any() or not pred.any():
        pytest.skip("empty draw")
    spacing = (float(rng.uniform(2, 10)), float(rng.uniform(0.4, 1.7)), float(rng.uniform(0.4, 1.7)))
    _check(pred, ref, spacing)
    _check(pred, ref, None)


def test_integer_masks_count_as_boolean():
    """Label maps compared as ``pred == c`` are boolean, but the plain functions also take 0/k integer masks."""
    rng = np.random.default_rng(3)
    a = rng.random((6, 9, 9)) < 0.4
    b = rng.random((6, 9, 9)) < 0.4
    for f in (M.dice, M.jaccard, M.hd95, M.asd, M.assd):
        assert f(a.astype(np.uint8) * 3, b.astype(np.int64) * 2) == f(a, b)
        assert f(a.astype(float) * 0.5, b) == f(a, b)


@pytest.mark.parametrize("connectivity", [2, 3])
def test_the_connectivity_reaches_every_surface_metric(connectivity):
    a = _ball((9, 20, 20), (4, 10, 9), 5)
    b = _ball((9, 20, 20), (5, 11, 11), 4)
    for ours, theirs in ((M.hd95, mb.hd95), (M.asd, mb.asd), (M.assd, mb.assd)):
        got = ours(a, b, (2.0, 1.0, 1.0), connectivity)
        assert abs(got - theirs(a, b, (2.0, 1.0, 1.0), connectivity)) <= TOL
        assert got != ours(a, b, (2.0, 1.0, 1.0), 1)  # the neighbourhood changes the surfaces here
    default = M.surface_distances(a, b, (2.0, 1.0, 1.0))  # medpy's default: connectivity 1
    assert M.hd95_from(default) == M.hd95(a, b, (2.0, 1.0, 1.0), 1) != M.hd95(a, b, (2.0, 1.0, 1.0), connectivity)
    rows = evaluate_case(a.astype(np.uint8), b.astype(np.uint8), [1], (2.0, 1.0, 1.0),
                         MetricPolicy(connectivity=connectivity), "mm")
    assert rows[0]["hd95"] == pytest.approx(mb.hd95(a, b, (2.0, 1.0, 1.0), connectivity), abs=TOL)
    assert rows[0]["asd"] == pytest.approx(mb.asd(a, b, (2.0, 1.0, 1.0), connectivity), abs=TOL)


def test_undefined_and_mismatched_inputs_say_what_is_wrong():
    empty, one = np.zeros((3, 3), bool), np.zeros((3, 3), bool)
    one[1, 1] = True
    for f, name in ((M.dice, "Dice"), (M.jaccard, "Jaccard")):
        with pytest.raises(ValueError) as err:
            f(empty, empty)
        assert str(err.value) == f"{name} of two empty masks is undefined"
        assert f(one, one) == 1.0  # a union of one voxel is defined
        with pytest.raises(ValueError) as err:
            f(one, np.ones((3, 4), bool))
        assert str(err.value) == "shape mismatch: prediction (3, 3) vs reference (3, 4)"
    with pytest.raises(ValueError) as err:
        evaluate_case(np.zeros((2, 3, 3)), np.zeros((2, 3, 4)), [1], None, MetricPolicy(), "voxel")
    assert str(err.value) == "prediction shape (2, 3, 3) != reference shape (2, 3, 4)"


def _same_row(got, expected):
    assert set(got) == set(expected), (got, expected)
    for key, value in expected.items():
        if isinstance(value, float) and np.isnan(value):
            assert isinstance(got[key], float) and np.isnan(got[key]), (key, got)
        else:
            assert got[key] == pytest.approx(value) and isinstance(got[key], type(value)), (key, got, value)


@pytest.mark.parametrize("policy", ["worst", "exclude", "legacy-zero"])
def test_every_row_holds_every_metric_under_each_policy(policy):
    """Whole rows, every key: an ok class, a missed one, a false positive and an absent one."""
    ref = np.zeros((3, 8, 8), np.uint8)
    ref[1, 2:5, 2:5] = 1
    ref[1, 6, 6] = 2
    pred = np.zeros_like(ref)
    pred[1, 2:5, 3:6] = 1
    pred[0, 0, 0] = 3
    spacing = (3.0, 1.0, 0.5)
    rows = evaluate_case(pred, ref, [1, 2, 3, 4], spacing, MetricPolicy(empty=policy), "mm")
    p, r = pred == 1, ref == 1
    d = {"worst": float(np.sqrt(9.0**2 + 8.0**2 + 4.0**2)), "exclude": np.nan, "legacy-zero": 0.0}[policy]
    _same_row(rows[0], {"class_id": 1, "status": "ok", "dice": float(mb.dc(p, r)), "jaccard": float(mb.jc(p, r)),
                        "hd95": float(mb.hd95(p, r, spacing)), "asd": float(mb.asd(p, r, spacing))})
    _same_row(rows[1], {"class_id": 2, "status": "missed", "dice": 0.0, "jaccard": 0.0, "hd95": d, "asd": d})
    _same_row(rows[2], {"class_id": 3, "status": "false_positive", "dice": 0.0, "jaccard": 0.0, "hd95": d, "asd": d})
    nan = float("nan")
    _same_row(rows[3], {"class_id": 4, "status": "absent", "dice": nan, "jaccard": nan, "hd95": nan, "asd": nan})


def test_scalar_spacing_1d_masks_and_the_surface_errors():
    a, b = _ball((8, 12, 12), (3, 6, 5), 3), _ball((8, 12, 12), (4, 6, 7), 3)
    assert M.hd95(a, b, 2.5) == pytest.approx(mb.hd95(a, b, 2.5), abs=TOL) == M.hd95(a, b, (2.5, 2.5, 2.5))
    line_a, line_b = np.zeros(30, bool), np.zeros(30, bool)
    line_a[3:9], line_a[20:22], line_b[5:12] = True, True, True
    _check(line_a, line_b, (0.7,))
    _check(line_b, line_a, None)
    with pytest.raises(ValueError) as err:
        M.hd95(a, b, (1.0, 2.0))
    assert str(err.value) == "spacing has 2 values for a 3-D mask"
    with pytest.raises(ValueError) as err:
        M.surface_distances(a, np.zeros_like(a))
    assert str(err.value) == "surface distances need two non-empty masks (apply an empty-mask policy first)"
    with pytest.raises(ValueError) as err:
        M.surface_distances(a, b[:, :, :-1])
    assert str(err.value) == "shape mismatch: prediction (8, 12, 12) vs reference (8, 12, 11)"


@pytest.mark.parametrize("connectivity", [2, 3])
def test_stray_predictions_under_every_connectivity_match_medpy(connectivity):
    """Stray false positives far from the reference are tested for surface by neighbour look-up: with diagonal
    neighbours (connectivity 2, 3) too. Clusters whose only background neighbours are diagonal ones tell the
    neighbourhoods apart."""
    rng = np.random.default_rng(connectivity)
    shape = (14, 40, 40)
    ref = _ball(shape, (7, 8, 8), 4)
    pred = np.roll(ref, 1, axis=2)
    pred[3:8, 25:31, 25:31] = True  # a stray block: interior voxels, faces, edges and corners
    pred[10:13, 33:36, 2:5] = True
    pred[10:13, 33:36, 2:5] &= rng.random((3, 3, 3)) < 0.8
    pred[0, 39, 39] = pred[13, 0, 20] = True  # on the array border
    for spacing in (None, (3.0, 0.8, 1.1)):
        for f, g in ((M.hd95, mb.hd95), (M.asd, mb.asd), (M.assd, mb.assd)):
            assert abs(f(pred, ref, spacing, connectivity) - g(pred, ref, spacing, connectivity)) <= TOL
            assert abs(f(ref, pred, spacing, connectivity) - g(ref, pred, spacing, connectivity)) <= TOL


def test_a_named_protocol_replaces_only_the_metric_fields_of_a_policy():
    from ssbench.metrics.evaluation import PROTOCOLS, protocol_policy

    assert protocol_policy("bcp") == MetricPolicy(empty="legacy-zero", hd_units="voxel", connectivity=1)
    base = MetricPolicy(empty="exclude", hd_units="mm", connectivity=3, also_protocols=("bcp",))
    assert protocol_policy("bcp", base) == MetricPolicy(empty="legacy-zero", hd_units="voxel", connectivity=1,
                                                        also_protocols=("bcp",))
    assert base.empty == "exclude"  # a new policy, the base untouched
    assert "BCP" in PROTOCOLS["bcp"][1]
    with pytest.raises(KeyError):
        protocol_policy("nope")
