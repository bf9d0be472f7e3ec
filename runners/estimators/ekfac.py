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
    """The same eigenbasis with the grid replaced by the curvature's diagonal in it (a second data pass)."""
    grid = [torch.zeros_like(g) for g in factors.grid]
    for chunk in layer_statistics(inputs, factors.layers, factors.fisher):
        for j, (a, g) in enumerate(chunk):
            a_rot = a @ factors.q_a[j]  # [N, T, in]
            g_rot = g @ factors.q_s[j]  # [N, K, T, out]
            if a.shape[1] == 1:  # one position: the projected matrix is an outer product
                grid[j] += torch.einsum("nko,ni->oi", g_rot[:, :, 0] ** 2, a_rot[:, 0] ** 2)
            else:
                grid[j] += (torch.einsum("nkto,nti->nkoi", g_rot, a_rot) ** 2).sum((0, 1))
    return Factors(factors.layers, factors.q_a, factors.q_s, [g / inputs.n for g in grid], factors.fisher)


def ekfac_scores(spec: EkfacEstimator, inputs: EstimatorInputs) -> Tensor:
    factors = kronecker_factors(inputs, kronecker_layers(inputs), spec.fisher)
    return inverse_scores(inputs, kronecker_inverse(inputs, corrected_eigenvalues(inputs, factors), spec.damping))
