"""Parsing ``--split`` and the seeded patient-level protocol used by datasets without a frozen literature split."""

from __future__ import annotations

import re

import numpy as np

from ssbench.errors import UserError


def labeled_count(spec: str, n_train: int, named: dict[str, int] | None = None) -> int:
    """Number of labeled patients that ``spec`` means out of ``n_train`` training patients.

    ``N`` is N patients; ``P%`` is floor(P/100 * n_train) patients (ACDC: 5% -> 3, 10% -> 7, as the literature
    counts them); ``all`` is every training patient. ``named`` holds a dataset's literature aliases.
    """
    text = str(spec).strip().lower()
    if named and text in named:
        return named[text]
    if text == "all":
        return n_train
    m = re.fullmatch(r"(\d+(?:\.\d+)?)%", text)
    if m:
        pct = float(m.group(1))
        if not 0 < pct <= 100:
            raise UserError(f"--split {spec}: a percentage must be in (0, 100]")
        count = int(np.floor(pct / 100 * n_train + 1e-9))
        if count < 1:
            raise UserError(f"--split {spec}: {pct:g}% of {n_train} training patients is less than one patient")
        return count
    if re.fullmatch(r"\d+", text):
        count = int(text)
        if count < 1:
            raise UserError(f"--split {spec}: at least one labeled patient is needed")
        if count > n_train:
            raise UserError(f"--split {spec}: only {n_train} training patients exist")
        return count
    raise UserError(f"--split {spec}: expected a patient count (7), a percentage (10%) or 'all'")


def split_tag(spec: str) -> str:
    """Folder-safe name of a split spec: '10%' -> '10pct'."""
    return str(spec).strip().lower().replace("%", "pct")


def seeded_order(ids: list[str], seed: int) -> list[str]:
    """A permutation of sorted ``ids`` that depends only on ``seed`` (numpy PCG64)."""
    ids = sorted(ids)
    rng = np.random.default_rng(seed)
    return [ids[i] for i in rng.permutation(len(ids))]


# The fixed val/test draw for datasets without an official split uses its own seed, so that changing
# --split-seed changes only which patients are labeled, never the evaluation sets.
HOLDOUT_SEED = 20230611


def holdout(ids: list[str], val_fraction: float, test_fraction: float) -> tuple[list[str], list[str], list[str]]:
    """Fixed (train, val, test) patient lists from a seeded draw that does not depend on the split seed."""
    order = seeded_order(ids, HOLDOUT_SEED)
    n_test = max(1, int(round(test_fraction * len(order)))) if test_fraction > 0 else 0
    n_val = max(1, int(round(val_fraction * len(order))))
    if n_test + n_val >= len(order):
        raise UserError(f"only {len(order)} labeled patients: too few for a train/val/test split")
    test = sorted(order[:n_test])
    val = sorted(order[n_test : n_test + n_val])
    train = sorted(order[n_test + n_val :])
    return train, val, test


def draw_labeled(train: list[str], spec: str, seed: int, named: dict[str, int] | None = None):
    """Seeded patient-level labeled draw from the training pool; the rest is unlabeled."""
    n = labeled_count(spec, len(train), named)
    order = seeded_order(train, seed)
    labeled = order[:n]
    unlabeled = [p for p in order[n:]]
    return labeled, unlabeled
