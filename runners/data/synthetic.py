"""Seeded synthetic data from scikit-learn's generators.

regression: make_regression (a random linear model of the features), scaled to unit standard deviation,
plus Gaussian noise of standard deviation ``noise``;

blobs: isotropic Gaussian clusters (cluster_std = noise); moons: two interleaved half circles with Gaussian
noise; linear: linearly separable classes (make_classification with class_sep 2, flip_y = noise).
The generator's seed is fixed by the dataset spec alone, so the same spec gives the same rows in every cell.
"""

from __future__ import annotations

import numpy as np
from sklearn import datasets

from inflang.hashing import derive_seed
from inflang.spec import SyntheticDataset
from runners.data.split import RawData


def load_synthetic(spec: SyntheticDataset) -> RawData:
    seed = derive_seed(spec.kind, spec.samples, spec.features, spec.classes, spec.noise)
    if spec.kind == "regression":  # targets [rows, targets], float
        seed = derive_seed(spec.kind, spec.samples, spec.features, spec.targets, spec.noise)
        x, t = datasets.make_regression(n_samples=spec.samples, n_features=spec.features, n_targets=spec.targets,
                                        random_state=seed)
        t = np.asarray(t, dtype=np.float64).reshape(spec.samples, spec.targets)
        t = t / max(1e-12, float(t.std())) + np.random.default_rng(seed).normal(0.0, spec.noise, t.shape)
        return RawData(x=np.asarray(x, dtype=np.float64), y=t, classes=spec.targets)
    if spec.kind == "blobs":
        x, y = datasets.make_blobs(n_samples=spec.samples, n_features=spec.features, centers=spec.classes,
                                   cluster_std=max(spec.noise, 1e-6), random_state=seed)
    elif spec.kind == "moons":
        x, y = datasets.make_moons(n_samples=spec.samples, noise=spec.noise, random_state=seed)
    else:
        x, y = datasets.make_classification(
            n_samples=spec.samples, n_features=spec.features, n_informative=spec.features, n_redundant=0,
            n_classes=spec.classes, n_clusters_per_class=1, class_sep=2.0, flip_y=spec.noise, random_state=seed)
    y = np.asarray(y, dtype=np.int64)
    return RawData(x=np.asarray(x, dtype=np.float64), y=y, classes=int(spec.info().classes))
