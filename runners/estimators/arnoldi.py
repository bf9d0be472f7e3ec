"""Arnoldi influence (Schioppa, Zablotskaia, Vilar & Sokolov 2022, "Scaling up influence functions").

The Arnoldi iteration on Hessian-vector products builds an orthonormal basis Q of the Krylov space
span{q, Hq, ..., H^(d-1) q} (full reorthogonalisation) and the projected matrix T = Q^T H Q. The top_k
eigenpairs (e_k, w_k) of T by |e_k| give approximate eigenvectors u_k = Q w_k of H, and
    estimate(z_i, z_test) = (1/n) sum_k (g_test . u_k) (g_i . u_k) / (e_k + damping),
dot products of gradients projected on the top_k directions. With d = top_k = P this is ``exact``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from inflang.spec import ArnoldiEstimator
from runners.curvature import hutchinson_trace, krylov_basis
from runners.errors import TaskFailure
from runners.estimators.common import EstimatorInputs, inverse_scores


def arnoldi_scores(spec: ArnoldiEstimator, inputs: EstimatorInputs) -> Tensor:
    P = inputs.dim
    Q, T = krylov_basis(lambda v: inputs.hvp(v[None].to(inputs.flat.theta.dtype))[0], P, spec.arnoldi_dim,
                        inputs.seed)
    values, vectors = torch.linalg.eigh(0.5 * (T + T.T))
    keep = torch.argsort(values.abs(), descending=True)[: spec.top_k]
    e, U = values[keep], Q @ vectors[:, keep]
    shifted = e + spec.damping
    if bool((shifted <= 0).any()):
        raise TaskFailure(f"arnoldi: a kept eigenvalue of H + damping I is <= 0 (smallest {float(e.min()):.3g}); "
                          "raise damping or lower top_k")
    # the share of tr(H) the kept eigenvalues hold (Hutchinson's estimate of the trace): little of it means the
    # estimate rests on a few directions of a spread-out spectrum
    trace = hutchinson_trace(lambda V: inputs.hvp(V.to(inputs.flat.theta.dtype)), P, 8, inputs.seed + 1)
    if trace > 0:
        inputs.notes["arnoldi_mass"] = float(e.abs().sum()) / trace
    return inverse_scores(inputs, lambda X: ((X @ U) / shifted) @ U.T)
