"""Seeded (stratified) shuffle splits of row ids, written with NumPy alone.

The same splits as scikit-learn's ``train_test_split(ids, train_size=..., test_size=..., stratify=labels,
random_state=seed)`` (its StratifiedShuffleSplit and ShuffleSplit), which ``tests/test_data.py`` checks row
for row, and the same refusals of sizes, without importing scikit-learn (and with it SciPy), which a small
study would wait for (README, "Speed of the ground truth").

Sizes: a float is a fraction in (0, 1) (test rounded up, train rounded down), an int a count in [1, n); the
size not given is the rest, and with neither the test set is a quarter. Unstratified: the first n_test rows
of a permutation of the rows are the test set, the next n_train the training set. Stratified: each class's
training count is the (approximate) mode of the multivariate hypergeometric draw of n_train rows, its floor
of counts x n_train / n plus one for the largest remainders (ties broken at random), the test counts likewise
from what is left; each class's rows are permuted and taken in that order; both sets are permuted at the end.
One ``numpy.random.RandomState(seed)`` draws everything, in that order.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable

import numpy as np


def _rows(size: int | float | None, n: int, what: str, rounding: Callable[[float], int]) -> int | None:
    """A size as rows (None stays None); raises ValueError outside (0, 1) for a fraction, [1, n) for a count."""
    if size is None:
        return None
    if isinstance(size, numbers.Integral) and not isinstance(size, bool):
        if not 0 < int(size) < n:
            raise ValueError(f"{what} {size} should lie between 1 and {n - 1} rows")
        return int(size)
    if isinstance(size, numbers.Real) and not isinstance(size, bool):
        if not 0.0 < float(size) < 1.0:
            raise ValueError(f"{what} {size} should be a fraction between 0 and 1")
        return rounding(float(size) * n)
    raise ValueError(f"{what} {size!r} is neither a count nor a fraction")


def split_sizes(n: int, train_size: int | float | None, test_size: int | float | None) -> tuple[int, int]:
    """(n_train, n_test) of n rows (above); raises ValueError where they do not fit."""
    if test_size is None and train_size is None:
        test_size = 0.25
    both_fractions = all(isinstance(v, float) for v in (train_size, test_size))
    if both_fractions and float(train_size) + float(test_size) > 1.0:  # type: ignore[arg-type]
        raise ValueError(f"train and test fractions {train_size} + {test_size} exceed 1")
    n_test = _rows(test_size, n, "test size", math.ceil)
    n_train = _rows(train_size, n, "train size", math.floor)
    if n_train is None:
        n_train = n - int(n_test)  # type: ignore[arg-type]
    if n_test is None:
        n_test = n - n_train
    if n_train <= 0 or n_test < 0 or n_train + n_test > n:
        raise ValueError(f"cannot split {n} rows into {n_train} training and {n_test} test rows")
    return n_train, n_test


def approximate_mode(counts: np.ndarray, draws: int, rng: np.random.RandomState) -> np.ndarray:
    """Rows drawn per class: floor(counts x draws / total), plus one for the classes with the largest
    remainders until ``draws`` are placed (a tie among remainders broken by ``rng``)."""
    continuous = counts / counts.sum() * draws
    placed = np.floor(continuous)
    missing = int(draws - placed.sum())
    if missing > 0:
        remainder = continuous - placed
        for value in np.unique(remainder)[::-1]:
            tied = np.flatnonzero(remainder == value)
            now = min(len(tied), missing)
            placed[rng.choice(tied, size=now, replace=False)] += 1
            missing -= now
            if missing == 0:
                break
    return placed.astype(int)


def shuffle_split(ids: np.ndarray, seed: int, train_size: int | float | None = None,
                  test_size: int | float | None = None,
                  labels: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) subsets of ``ids``, stratified by ``labels`` when given (module doc); raises ValueError
    when a class has fewer than 2 rows or fewer rows are asked of a set than there are classes."""
    n_train, n_test = split_sizes(len(ids), train_size, test_size)
    rng = np.random.RandomState(seed)
    if labels is None:
        order = rng.permutation(len(ids))
        return ids[order[n_test:n_test + n_train]], ids[order[:n_test]]
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    if counts.min() < 2:
        raise ValueError("a class has fewer than 2 rows, too few to stratify")
    if min(n_train, n_test) < len(classes):
        raise ValueError(f"{min(n_train, n_test)} rows cannot hold all {len(classes)} classes")
    members = np.split(np.argsort(inverse.reshape(-1), kind="stable"), np.cumsum(counts)[:-1])
    train_counts = approximate_mode(counts, n_train, rng)
    test_counts = approximate_mode(counts - train_counts, n_test, rng)
    train: list[int] = []
    test: list[int] = []
    for rows, k, t in zip(members, train_counts, test_counts, strict=True):
        shuffled = rows[rng.permutation(len(rows))]
        train.extend(shuffled[:k])
        test.extend(shuffled[k:k + t])
    return ids[rng.permutation(np.asarray(train, dtype=np.int64))], \
        ids[rng.permutation(np.asarray(test, dtype=np.int64))]
