"""Seeded synthetic data from scikit-learn's generators.

regression: make_regression (a random linear model of the features), scaled to unit standard deviation,
plus Gaussian noise of standard deviation ``noise``;

blobs: isotropic Gaussian clusters (cluster_std = noise); moons: two interleaved half circles with Gaussian
noise; linear: linearly separable classes (make_classification with class_sep 2, flip_y = noise).

images: one template per class, a sum of 6 random plane waves per channel with wavelengths of 1/2 to 1/8 of
the side (smooth, like natural images' low frequencies), scaled to unit standard deviation; each image is its
class's template rolled by up to 1/8 of the side in each direction, times a contrast drawn from [0.5, 1.5],
plus Gaussian pixel noise of standard deviation ``noise``. Classes are balanced (row i has class i mod C).
The generator's seed is fixed by the dataset spec alone, so the same spec gives the same rows in every cell.
"""

from __future__ import annotations

import numpy as np

from inflang.compiling.hashing import derive_seed
from inflang.spec import SyntheticDataset
from runners.data.split import RawData


def _images(spec: SyntheticDataset, seed: int) -> RawData:
    rng = np.random.default_rng(seed)
    c, h, w = spec.image_shape
    rows, cols = np.meshgrid(np.arange(h) / h, np.arange(w) / w, indexing="ij")
    templates = np.zeros((spec.classes, c, h, w))
    for k in range(spec.classes):
        for ch in range(c):
            for _ in range(6):
                angle, phase = rng.uniform(0, 2 * np.pi, 2)
                frequency = rng.uniform(2, 8)  # cycles per side
                wave = np.cos(2 * np.pi * frequency * (np.cos(angle) * rows + np.sin(angle) * cols) + phase)
                templates[k, ch] += rng.normal() * wave
        templates[k] /= max(1e-12, float(templates[k].std()))
    y = np.arange(spec.samples, dtype=np.int64) % spec.classes
    reach_h, reach_w = max(1, h // 8), max(1, w // 8)
    x = np.empty((spec.samples, c, h, w))
    for i in range(spec.samples):
        shifted = np.roll(templates[y[i]], (int(rng.integers(-reach_h, reach_h + 1)),
                                            int(rng.integers(-reach_w, reach_w + 1))), axis=(1, 2))
        x[i] = rng.uniform(0.5, 1.5) * shifted + rng.normal(0.0, spec.noise, (c, h, w))
    return RawData(x=x, y=y, classes=spec.classes)


def load_synthetic(spec: SyntheticDataset) -> RawData:
    if spec.kind == "images":
        return _images(spec, derive_seed(spec.kind, spec.samples, spec.classes, spec.noise, *spec.image_shape))
    from sklearn import datasets  # imported on use: a slow import the other datasets do not need

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
