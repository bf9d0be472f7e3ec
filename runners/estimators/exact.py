"""Exact influence: the explicit Hessian of the training objective (Koh & Liang 2017; Basu et al. 2021).

estimate(z_i, z_test) = (1/n) g_test^T (H + damping I)^-1 g_i, with g_i the gradient of training example i's
loss and g_test the gradient of the measured quantity at the test point, both at the trained parameters.
Removing z_i moves the optimum by about +(1/n) H^-1 g_i, so this is the predicted change when z_i is removed.
(H + damping I)^-1 is applied through the eigendecomposition H = V diag(e) V^T computed once per model.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.func import grad, vmap

from inflang.spec import ExactEstimator
from runners.curvature import Spectrum
from runners.errors import TaskFailure
from runners.objective import MEASURES, FlatModel, per_example_loss


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


def gradients(flat: FlatModel, x: Tensor, y: Tensor, measure: str = "loss") -> Tensor:
    """Per-example gradients [N, P] of the loss (or of a measured quantity) at flat.theta."""
    fn = per_example_loss if measure == "loss" else MEASURES[measure]

    def one(theta: Tensor, xi: Tensor, yi: Tensor) -> Tensor:
        return fn(flat.logits(theta, xi.unsqueeze(0)), yi.unsqueeze(0)).squeeze(0)

    return vmap(grad(one), in_dims=(None, 0, 0))(flat.theta, x, y)


def exact_scores(spec: ExactEstimator, module: nn.Module, params: dict[str, Tensor], x_train: Tensor,
                 y_train: Tensor, x_test: Tensor, y_test: Tensor, measure: str, spectrum: Spectrum) -> Tensor:
    """Scores [T, n]: (1/n) G_test V diag(1/(e + damping)) V^T G_train^T, in float64."""
    flat = FlatModel(module, params)
    g_train = gradients(flat, x_train, y_train).to(torch.float64)
    g_test = gradients(flat, x_test, y_test, measure).to(torch.float64)
    inv = inverse_eigenvalues(spectrum.values, spec.damping, spec.negative)
    V = spectrum.vectors
    left = (g_test @ V) * inv
    return (left @ (V.T @ g_train.T)) / x_train.shape[0]
