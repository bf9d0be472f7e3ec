"""Seeded stratified train/test split, subsampling, label noise and standardisation."""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field

import numpy as np
import torch

from inflang.spec import AnyDataset, EarlyStoppingSpec
from runners.data.shuffle_split import shuffle_split


@dataclass(frozen=True)
class RawData:
    """Every row of a dataset; a row's id is its position here. ``fixed_test`` lists the rows of an official
    test split, if the dataset has one."""

    x: np.ndarray  # [rows, features] or images [rows, channels, height, width]
    y: np.ndarray  # class labels [rows], or real-valued targets [rows, targets] (regression)
    classes: int  # classes, or the number of targets

    @property
    def regression(self) -> bool:
        return bool(np.issubdtype(self.y.dtype, np.floating))
    fixed_test: np.ndarray | None = None


@dataclass(frozen=True)
class Prepared:
    """A split ready for training: tensors plus the dataset row id of every train and test point."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    train_ids: np.ndarray
    test_ids: np.ndarray
    classes: int
    flipped: np.ndarray  # [n_train] bool: the training label was flipped by label_noise
    x_val: torch.Tensor | None = None  # the validation set early stopping holds out of the training split
    y_val: torch.Tensor | None = None
    val_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    @property
    def validation(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        return None if self.x_val is None or self.y_val is None else (self.x_val, self.y_val)

    @property
    def n_train(self) -> int:
        return int(self.x_train.shape[0])

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def features(self) -> int:
        return int(np.prod(self.input_shape))


def _stratified(ids: np.ndarray, size: int | float, labels: np.ndarray | None, seed: int) -> np.ndarray:
    """A seeded stratified subset of ``ids`` (stratification dropped where a class is too small for it)."""
    if isinstance(size, float) and size >= 1.0 or isinstance(size, int) and size >= len(ids):
        return ids
    try:
        chosen, _ = shuffle_split(ids, seed, train_size=size, labels=labels)
    except ValueError:
        chosen, _ = shuffle_split(ids, seed, train_size=size)
    return chosen


_recent: dict[tuple[str, int], tuple[weakref.ref[RawData], np.ndarray, np.ndarray]] = {}


def split_ids(spec: AnyDataset, raw: RawData, seed: int,
              held_out: tuple[int, ...] = ()) -> tuple[np.ndarray, np.ndarray]:
    """Row ids of the training and test points (sorted), stratified by label and seeded; rows in ``held_out``
    (test points a study names by id) are moved to the test split. The last few splits are kept per process
    (every task of a cell splits the same data again)."""
    key = (spec.model_dump_json(), seed)
    found = _recent.get(key)
    if found is None or found[0]() is not raw:
        found = (weakref.ref(raw), *_split(spec, raw, seed))  # the split, not the data, is kept
        _recent[key] = found
        while len(_recent) > 8:
            _recent.pop(next(iter(_recent)))
    train, test = found[1].copy(), found[2].copy()
    if held_out:
        chosen = np.asarray(sorted(set(held_out)), dtype=np.int64)
        train, test = np.setdiff1d(train, chosen), np.union1d(test, chosen)
    return np.sort(train), np.sort(test)


def _split(spec: AnyDataset, raw: RawData, seed: int) -> tuple[np.ndarray, np.ndarray]:
    ids = np.arange(len(raw.y))
    if raw.fixed_test is not None:
        test = _stratified(raw.fixed_test, spec.test_size, raw.y[raw.fixed_test], seed)
        train = np.setdiff1d(ids, raw.fixed_test)
    else:
        labels = None if raw.regression else raw.y  # stratified by class; regression targets are not classes
        train, test = shuffle_split(ids, seed, test_size=spec.test_size, labels=labels)
    if spec.subsample is not None and spec.subsample < len(train):
        train = _stratified(np.asarray(train), spec.subsample, None if raw.regression else raw.y[train], seed + 1)
    return np.asarray(train), np.asarray(test)


def flip_labels(y: np.ndarray, fraction: float, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels with round(fraction * n) of them moved to a different class (uniformly), and which moved."""
    rng = np.random.default_rng(seed)
    flipped = np.zeros(len(y), dtype=bool)
    count = int(round(fraction * len(y)))
    if count == 0:
        return y, flipped
    rows = rng.choice(len(y), size=count, replace=False)
    noisy = y.copy()
    noisy[rows] = (y[rows] + rng.integers(1, classes, size=count)) % classes
    flipped[rows] = True
    return noisy, flipped


def prepare(spec: AnyDataset, raw: RawData, seed: int, dtype: torch.dtype,
            held_out: tuple[int, ...] = (), early_stopping: EarlyStoppingSpec | None = None) -> Prepared:
    """The split as tensors. With ``early_stopping`` its validation set is held out of the training rows
    (seeded, stratified where the classes allow) with its true labels; standardisation uses the remaining
    training rows."""
    train, test = split_ids(spec, raw, seed, held_out)
    val = np.zeros(0, dtype=np.int64)
    validation = early_stopping.validation_size(len(train)) if early_stopping else 0
    if validation:
        keep = _stratified(train, len(train) - validation, None if raw.regression else raw.y[train], seed + 3)
        train, val = np.sort(keep), np.setdiff1d(train, keep)
    x_train, x_test, x_val = raw.x[train], raw.x[test], raw.x[val]
    if spec.standardize:
        axes = (0, 2, 3) if raw.x.ndim == 4 else (0,)  # images: per channel; tables: per feature
        mean = x_train.mean(axis=axes, keepdims=True)
        std = x_train.std(axis=axes, keepdims=True)
        std[std == 0] = 1.0
        x_train, x_test, x_val = (x_train - mean) / std, (x_test - mean) / std, (x_val - mean) / std
    if raw.regression:  # targets in the model's dtype; label noise is refused for regression at compile time
        y_train, flipped = raw.y[train], np.zeros(len(train), dtype=bool)
    else:
        y_train, flipped = flip_labels(raw.y[train], spec.label_noise, raw.classes, seed + 2)
    y_dtype = dtype if raw.regression else None
    extra = {}
    if validation:
        extra = {"x_val": torch.as_tensor(np.ascontiguousarray(x_val), dtype=dtype),
                 "y_val": torch.as_tensor(np.ascontiguousarray(raw.y[val]), dtype=dtype if raw.regression else None),
                 "val_ids": val}
    # contiguous copies: a loader's strided arrays (e.g. HWC images transposed to CHW) trip vmap'd convolutions
    return Prepared(
        x_train=torch.as_tensor(np.ascontiguousarray(x_train), dtype=dtype),
        y_train=torch.as_tensor(np.ascontiguousarray(y_train), dtype=y_dtype),
        x_test=torch.as_tensor(np.ascontiguousarray(x_test), dtype=dtype),
        y_test=torch.as_tensor(np.ascontiguousarray(raw.y[test]), dtype=y_dtype),
        train_ids=train,
        test_ids=test,
        classes=raw.classes,
        flipped=flipped,
        **extra,  # type: ignore[arg-type]
    )
