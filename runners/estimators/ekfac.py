"""EK-FAC influence (George, Laurent, Bouthillier, Ballas & Vincent 2018; Grosse et al. 2023).

K-FAC's eigenbasis Q_A (x) Q_S per layer (see ``kfac``), with the eigenvalues refitted to the curvature
itself: in that basis the Gauss-Newton matrix's diagonal is
    lambda_oj = (1/n) sum_i sum_k (Q_S^T G_ik Q_A)_oj^2,   G_ik = sum_t g_itk a_it^T,
the squared per-example pseudo-gradients projected on the basis (k over the columns of the output Hessian's
root, so the sum is an exact expectation over labels). Then
(G_l + (weight_decay + damping) I)^-1 vec(V) = Q_S [(Q_S^T V Q_A) / (lambda + weight_decay + damping)] Q_A^T.
Where the Kronecker factorisation is exact (a single linear layer whose output Hessian is the same at every
example) EK-FAC and K-FAC both equal ``exact`` with ``curvature: ggn``. Default damping: 0.1 x the mean
lambda of the layer. Sign and scale as LANGUAGE.md: (1/n) g_test^T (G + ...)^-1 g_i.
"""

from __future__ import annotations

import torch
from torch import Tensor

from inflang.spec import EkfacEstimator
from runners.estimators.common import EstimatorInputs, inverse_scores
from runners.estimators.kfac import Factors, kronecker_factors, kronecker_inverse, kronecker_layers, layer_statistics


def corrected_eigenvalues(inputs: EstimatorInputs, factors: Factors) -> Factors:
    """The same eigenbasis with the grid replaced by the curvature's diagonal in it (a second data pass). Each
    example's pseudo-gradient matrix G_ik = sum_t g_itk a_it^T [out, in] is formed first and then rotated,
    Q_S^T G_ik Q_A, which costs out in (out + in) per example instead of rotating its T positions' inputs and
    outputs (T (in^2 + out^2)); a chunk in the model's dtype, summed over chunks in float64."""
    grid = [torch.zeros_like(g) for g in factors.grid]
    for chunk in layer_statistics(inputs, factors.layers, factors.fisher):
        for j, (a, g) in enumerate(chunk):
            q_a, q_s = factors.q_a[j].to(a.dtype), factors.q_s[j].to(a.dtype)
            if a.shape[1] == 1:  # one position: the projected matrix is an outer product
                part = torch.einsum("nko,ni->oi", (g[:, :, 0] @ q_s) ** 2, (a[:, 0] @ q_a) ** 2)
            else:
                rotated = q_s.T @ torch.einsum("nkto,nti->nkoi", g, a) @ q_a  # [N, K, out, in]
                part = (rotated * rotated).sum((0, 1))
            grid[j] += part.to(torch.float64)
    return Factors(factors.layers, factors.q_a, factors.q_s, [g / inputs.n for g in grid], factors.fisher)


def ekfac_scores(spec: EkfacEstimator, inputs: EstimatorInputs) -> Tensor:
    factors = kronecker_factors(inputs, kronecker_layers(inputs), spec.fisher)
    return inverse_scores(inputs, kronecker_inverse(inputs, corrected_eigenvalues(inputs, factors), spec.damping))
