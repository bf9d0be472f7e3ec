"""scikit-learn's bundled classification datasets (no download): iris, digits, breast_cancer, wine."""

from __future__ import annotations

import numpy as np
from sklearn import datasets

from inflang.spec import BundledDataset
from runners.data.split import RawData

_FUNCTIONS = {
    "iris": datasets.load_iris,
    "digits": datasets.load_digits,
    "breast_cancer": datasets.load_breast_cancer,
    "wine": datasets.load_wine,
}


def load_bundled(spec: BundledDataset) -> RawData:
    bunch = _FUNCTIONS[spec.name]()
    x = np.asarray(bunch.data, dtype=np.float64)
    y = np.asarray(bunch.target, dtype=np.int64)
    if spec.name == "digits":
        x = x.reshape(-1, 1, 8, 8)  # an image: CNNs see 1 x 8 x 8; MLPs flatten it
    return RawData(x=x, y=y, classes=int(y.max()) + 1)
