"""Datasets: a registry from ``dataset.name`` to a loader returning features, labels and row ids.

A new dataset is one module here plus one entry in ``LOADERS`` (and its spec in inflang/spec/dataset.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from runners.data.bundled import load_bundled
from runners.data.cifar import load_cifar
from runners.data.custom import load_custom
from runners.data.idx import load_mnist
from runners.data.imagefolder import load_imagefolder
from runners.data.mnist1d import load_mnist1d
from runners.data.split import Prepared, RawData, prepare
from runners.data.synthetic import load_synthetic

LOADERS: dict[str, Callable[[Any], RawData]] = {
    "iris": load_bundled,
    "digits": load_bundled,
    "breast_cancer": load_bundled,
    "wine": load_bundled,
    "synthetic": load_synthetic,
    "mnist": load_mnist,
    "fashion_mnist": load_mnist,
    "small_mnist": load_mnist,
    "cifar10": load_cifar,
    "cifar100": load_cifar,
    "imagefolder": load_imagefolder,
    "mnist1d": load_mnist1d,
    "custom": load_custom,
}


def load_raw(spec: Any) -> RawData:
    """All rows of the dataset, in the loader's order (row id = position)."""
    return LOADERS[spec.name](spec)


__all__ = ["LOADERS", "Prepared", "RawData", "load_raw", "prepare"]
