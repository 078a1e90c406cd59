"""``--split`` parsing and the seeded patient-level protocol (ssbench.splits): counts at every boundary, the exact
errors, the fixed val/test draw and the seeded labeled draw."""

import pytest

from ssbench.errors import UserError
from ssbench.splits import HOLDOUT_SEED, draw_labeled, holdout, labeled_count, seeded_order, split_tag


@pytest.mark.parametrize("spec, n, expected", [
    ("1", 70, 1), ("70", 70, 70), (" 7 ", 70, 7), ("all", 70, 70), ("ALL", 12, 12),
    ("5%", 70, 3), ("10%", 70, 7), ("100%", 70, 70), ("1%", 200, 2), ("7.5%", 40, 3), ("50%", 96, 48),
    ("14.29%", 70, 10),  # floor(10.003)
    ("10%", 10, 1),  # floor(1.0): the 1e-9 keeps an exact product from flooring below it
])
def test_labeled_counts(spec, n, expected):
    assert labeled_count(spec, n) == expected


@pytest.mark.parametrize("spec, n, message", [
    ("0%", 70, "--split 0%: a percentage must be in (0, 100]"),
    ("101%", 70, "--split 101%: a percentage must be in (0, 100]"),
    ("100.5%", 70, "--split 100.5%: a percentage must be in (0, 100]"),
    ("1%", 70, "--split 1%: 1% of 70 training patients is less than one patient"),
    ("0.5%", 100, "--split 0.5%: 0.5% of 100 training patients is less than one patient"),
    ("0", 70, "--split 0: at least one labeled patient is needed"),
    ("71", 70, "--split 71: only 70 training patients exist"),
    ("-3", 70, "--split -3: expected a patient count (7), a percentage (10%) or 'all'"),
    ("10 %", 70, "--split 10 %: expected a patient count (7), a percentage (10%) or 'all'"),
    ("abc", 70, "--split abc: expected a patient count (7), a percentage (10%) or 'all'"),
])
def test_bad_specs_say_why(spec, n, message):
    with pytest.raises(UserError) as err:
        labeled_count(spec, n)
    assert str(err.value) == message


def test_named_aliases_win_and_reach_the_draw():
    assert labeled_count("few", 70, {"few": 2}) == 2
    assert labeled_count("5%", 70, {"5%": 4}) == 4  # a dataset's literature alias before the arithmetic
    labeled, unlabeled = draw_labeled([f"p{i}" for i in range(9)], "few", 0, {"few": 2})
    assert len(labeled) == 2 and len(unlabeled) == 7


def test_split_tags_are_folder_safe():
    assert [split_tag(s) for s in ("10%", " 7 ", "ALL", "7.5%")] == ["10pct", "7", "all", "7.5pct"]


def test_seeded_order_depends_on_the_seed_not_the_input_order():
    ids = [f"p{i:02d}" for i in range(20)]
    a = seeded_order(ids, 3)
    assert sorted(a) == ids and seeded_order(list(reversed(ids)), 3) == a
    assert seeded_order(ids, 4) != a and a != ids


@pytest.mark.parametrize("n, val, test, sizes", [
    (10, 0.1, 0.2, (7, 1, 2)),
    (10, 0.1, 0.04, (8, 1, 1)),  # round(0.4) = 0 test patients: at least one
    (10, 0.01, 0.3, (6, 1, 3)),  # round(0.1) = 0 val patients: at least one
    (10, 0.2, 0.0, (8, 2, 0)),  # no test fraction: no test set
    (20, 0.25, 0.25, (10, 5, 5)),
])
def test_holdout_sizes(n, val, test, sizes):
    ids = [f"p{i:02d}" for i in range(n)]
    train, v, t = holdout(ids, val, test)
    assert (len(train), len(v), len(t)) == sizes
    assert sorted(train + v + t) == ids and train == sorted(train) and v == sorted(v) and t == sorted(t)
    order = seeded_order(ids, HOLDOUT_SEED)
    assert t == sorted(order[: sizes[2]]) and v == sorted(order[sizes[2]: sizes[2] + sizes[1]])


@pytest.mark.parametrize("n, val, test", [(3, 0.34, 0.67), (2, 0.5, 0.5), (2, 0.1, 0.1), (4, 0.5, 0.5)])
def test_holdout_refuses_to_leave_no_training_patient(n, val, test):
    with pytest.raises(UserError) as err:
        holdout([f"p{i}" for i in range(n)], val, test)
    assert str(err.value) == f"only {n} labeled patients: too few for a train/val/test split"


def test_the_labeled_draw_is_the_seeds_first_patients():
    train = [f"p{i:02d}" for i in range(12)]
    labeled, unlabeled = draw_labeled(train, "25%", 5)
    order = seeded_order(train, 5)
    assert labeled == order[:3] and unlabeled == order[3:]
    assert draw_labeled(train, "25%", 5) == (labeled, unlabeled) and draw_labeled(train, "25%", 6)[0] != labeled
    everyone, none = draw_labeled(train, "all", 1)
    assert sorted(everyone) == train and none == []
