"""The Hessian of the training objective at the trained parameters, and its eigendecomposition.

H = d^2/dtheta^2 [ (1/n) sum_j loss_j(theta) + weight_decay/2 ||theta||^2 ]; computed once per trained
model and shared by the ``exact`` estimator (any damping) and the ``hessian:`` diagnostics.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import hessian

from runners.objective import FlatModel


@dataclass(frozen=True)
class Spectrum:
    """H = vectors @ diag(values) @ vectors.T, eigenvalues ascending."""

    values: Tensor
    vectors: Tensor


def objective_hessian(module: nn.Module, params: dict[str, Tensor], x: Tensor, y: Tensor,
                      weight_decay: float) -> Tensor:
    flat = FlatModel(module, params)
    H = hessian(lambda th: flat.objective(th, x, y, weight_decay))(flat.theta)
    return 0.5 * (H + H.T)


def spectrum(H: Tensor) -> Spectrum:
    values, vectors = torch.linalg.eigh(H.to(torch.float64))
    return Spectrum(values=values, vectors=vectors)
