"""scikit-learn's bundled classification datasets (no download): iris, digits, breast_cancer, wine.

The files are read where scikit-learn installed them (``sklearn/datasets/data``), in its own formats: a CSV
whose first row is ``n_samples, n_features, class names...`` and whose last column is the label, and for
digits a gzipped CSV of 64 pixels and the label, without importing scikit-learn itself, which a small study
would wait for; ``tests/test_data.py`` checks these arrays against scikit-learn's own loaders.
"""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np

from inflang.spec import BundledDataset
from runners.data.split import RawData

_FILES = {"iris": "iris.csv", "digits": "digits.csv.gz", "breast_cancer": "breast_cancer.csv",
          "wine": "wine_data.csv"}


def data_folder() -> Path:
    """scikit-learn's folder of bundled data files, found without importing scikit-learn."""
    found = importlib.util.find_spec("sklearn")
    if found is None or not found.submodule_search_locations:
        raise ImportError("the bundled datasets need scikit-learn: pip install scikit-learn")
    return Path(next(iter(found.submodule_search_locations))) / "datasets" / "data"


def load_bundled(spec: BundledDataset) -> RawData:
    path = data_folder() / _FILES[spec.name]
    if spec.name == "digits":
        with gzip.open(path, "rt") as handle:
            table = np.loadtxt(handle, delimiter=",")
        x = table[:, :-1].reshape(-1, 1, 8, 8)  # an image: CNNs see 1 x 8 x 8; MLPs flatten it
    else:
        with path.open(encoding="utf-8") as handle:
            samples, features = (int(v) for v in handle.readline().split(",")[:2])
            table = np.loadtxt(handle, delimiter=",", ndmin=2)
        if table.shape != (samples, features + 1):
            raise ValueError(f"{path}: expected {samples} rows of {features} features and a label, found "
                             f"{table.shape[0]} x {table.shape[1]}")
        x = table[:, :-1]
    y = table[:, -1].astype(np.int64)
    return RawData(x=np.ascontiguousarray(x, dtype=np.float64), y=y, classes=int(y.max()) + 1)
