"""Exact influence: the explicit Hessian of the training objective (Koh & Liang 2017; Basu et al. 2021).

estimate(z_i, z_test) = (1/n) g_test^T (H + damping I)^-1 g_i, with g_i the gradient of training example i's
loss and g_test the gradient of the measured quantity at the test point, both at the trained parameters.
Removing z_i moves the optimum by about +(1/n) H^-1 g_i, so this is the predicted change when z_i is removed.
(H + damping I)^-1 is applied through the eigendecomposition H = V diag(e) V^T computed once per model.
"""

from __future__ import annotations

import torch
from torch import Tensor

from inflang.spec import ExactEstimator
from runners.errors import TaskFailure
from runners.estimators.common import EstimatorInputs, inverse_scores


def inverse_eigenvalues(values: Tensor, damping: float, policy: str) -> Tensor:
    """1 / (e + damping) per eigenvalue, with the chosen policy for non-positive e + damping."""
    shifted = values + damping
    if policy == "abs":
        shifted = values.abs() + damping
    bad = shifted <= 0
    if bool(bad.any()):
        if policy == "error":
            worst = float(values.min())
            raise TaskFailure(
                f"H + damping I is not positive definite: {int(bad.sum())} eigenvalues <= 0 "
                f"(smallest Hessian eigenvalue {worst:.3g}, damping {damping:g}); raise damping above "
                f"{-worst:.3g} or set negative: abs | clip on the estimator")
        inv = torch.where(bad, torch.zeros_like(shifted), 1.0 / shifted.where(~bad, torch.ones_like(shifted)))
        return inv
    return 1.0 / shifted


def exact_scores(spec: ExactEstimator, inputs: EstimatorInputs) -> Tensor:
    """Scores [T, n]: (1/n) G_test V diag(1/(e + damping)) V^T G_train^T, in float64."""
    spectrum = inputs.curvature()
    inv = inverse_eigenvalues(spectrum.values, spec.damping, spec.negative)
    V = spectrum.vectors
    return inverse_scores(inputs, lambda X: ((X @ V) * inv) @ V.T)
