"""Curvature of the training objective at the trained parameters, and its eigendecomposition.

H = d^2/dtheta^2 [ (1/n) sum_j loss_j(theta) + weight_decay/2 ||theta||^2 ], or its Gauss-Newton matrix G;
computed once per trained model and shared by every ``exact`` estimator (any damping) of that curvature and
by the ``hessian:`` diagnostics.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import hessian, jacrev, vmap

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


def objective_ggn(module: nn.Module, params: dict[str, Tensor], x: Tensor, y: Tensor, weight_decay: float,
                  chunk_elements: int = 20_000_000) -> Tensor:
    """G = (1/n) sum_i J_i^T (diag(p_i) - p_i p_i^T) J_i + weight_decay I, with J_i = d logits_i / d theta and
    p_i = softmax(logits_i): the Gauss-Newton matrix of the objective (positive semi-definite; equal to the
    Hessian for logistic regression)."""
    flat = FlatModel(module, params)
    theta = flat.theta.detach()
    P = theta.numel()
    n = x.shape[0]
    G = torch.zeros(P, P, dtype=torch.float64)
    jac = vmap(jacrev(lambda th, xi: flat.logits(th, xi.unsqueeze(0)).squeeze(0)), in_dims=(None, 0))
    step = max(1, chunk_elements // max(1, P * 16))
    for lo in range(0, n, step):
        xb = x[lo:lo + step]
        J = jac(theta, xb).to(torch.float64)  # [b, C, P]
        with torch.no_grad():
            p = torch.softmax(flat.logits(theta, xb), dim=-1).to(torch.float64)
        H_out = torch.diag_embed(p) - p.unsqueeze(2) * p.unsqueeze(1)
        G += torch.einsum("bcp,bcq->pq", J, H_out @ J)
    G = G / n + weight_decay * torch.eye(P, dtype=torch.float64)
    return 0.5 * (G + G.T)


CURVATURES = {"hessian": objective_hessian, "ggn": objective_ggn}


def spectrum(H: Tensor) -> Spectrum:
    values, vectors = torch.linalg.eigh(H.to(torch.float64))
    return Spectrum(values=values, vectors=vectors)
