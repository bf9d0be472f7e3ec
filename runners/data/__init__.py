"""Datasets: a registry from ``dataset.name`` to a loader returning features, labels and row ids.

A new dataset is one module here plus one entry in ``LOADERS``.
"""

from __future__ import annotations

from collections.abc import Callable

from inflang.spec import DatasetSpec
from runners.data.bundled import load_bundled
from runners.data.split import Prepared, RawData, prepare

LOADERS: dict[str, Callable[[DatasetSpec], RawData]] = {
    "iris": load_bundled,
    "digits": load_bundled,
    "breast_cancer": load_bundled,
    "wine": load_bundled,
}


def load_raw(spec: DatasetSpec) -> RawData:
    """All rows of the dataset, in the loader's order (row id = position)."""
    return LOADERS[spec.name](spec)


__all__ = ["LOADERS", "Prepared", "RawData", "load_raw", "prepare"]
