"""Seeded stratified train/test split, optional subsampling and standardisation."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.model_selection import train_test_split

from inflang.spec import DatasetSpec


@dataclass(frozen=True)
class RawData:
    """Every row of a dataset; a row's id is its position here."""

    x: np.ndarray
    y: np.ndarray
    classes: int


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

    @property
    def n_train(self) -> int:
        return int(self.x_train.shape[0])

    @property
    def features(self) -> int:
        return int(self.x_train.shape[1])


def split_ids(spec: DatasetSpec, raw: RawData, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Row ids of the training and test points (sorted), stratified by label and seeded."""
    ids = np.arange(len(raw.y))
    train, test = train_test_split(ids, test_size=spec.test_size, stratify=raw.y, random_state=seed)
    if spec.subsample is not None and spec.subsample < len(train):
        train, _ = train_test_split(train, train_size=spec.subsample, stratify=raw.y[train],
                                    random_state=seed + 1)
    return np.sort(train), np.sort(test)


def prepare(spec: DatasetSpec, raw: RawData, seed: int, dtype: torch.dtype) -> Prepared:
    train, test = split_ids(spec, raw, seed)
    x_train, x_test = raw.x[train], raw.x[test]
    if spec.standardize:
        mean = x_train.mean(axis=0)
        std = x_train.std(axis=0)
        std[std == 0] = 1.0
        x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    return Prepared(
        x_train=torch.as_tensor(x_train, dtype=dtype),
        y_train=torch.as_tensor(raw.y[train]),
        x_test=torch.as_tensor(x_test, dtype=dtype),
        y_test=torch.as_tensor(raw.y[test]),
        train_ids=train,
        test_ids=test,
        classes=raw.classes,
    )
