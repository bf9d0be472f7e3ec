"""MNIST-1D (Greydanus 2020) from the ``mnist1d`` package's generator: nothing is downloaded."""

from __future__ import annotations

import numpy as np

from inflang.spec.dataset import Mnist1dDataset
from runners.data.split import RawData
from runners.errors import TaskFailure


def load_mnist1d(spec: Mnist1dDataset) -> RawData:
    """make_dataset(get_dataset_args()): the published dataset's arguments (seed 42), so every run and machine
    gets the same 5,000 signals; the training signals come first (row ids 0-3999), the test ones after. The
    generator seeds numpy's global state; it is restored afterwards."""
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError:
        raise TaskFailure("dataset mnist1d needs the mnist1d package: pip install 'inflang[mnist1d]'") from None
    state = np.random.get_state()
    try:
        data = make_dataset(get_dataset_args())
    finally:
        np.random.set_state(state)
    x = np.concatenate([data["x"], data["x_test"]]).astype(np.float64)[:, None, :]  # [5000, 1, 40]
    y = np.concatenate([data["y"], data["y_test"]]).astype(np.int64)
    return RawData(x=x, y=y, classes=10, fixed_test=np.arange(len(data["y"]), len(y)))
