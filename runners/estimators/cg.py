"""Conjugate gradient (Koh & Liang 2017; Martens 2010) on exact Hessian-vector products.

Solves (H + damping I) x_t = g_test,t for every selected test point at once (one CG per column, batched);
estimate(z_i, z_test) = (1/n) x_t . g_i, the same quantity as ``exact`` without forming H.
"""

from __future__ import annotations

import torch
from torch import Tensor

from inflang.spec import CgEstimator
from runners.errors import TaskFailure
from runners.estimators.common import EstimatorInputs, inverse_scores


def conjugate_gradient(apply: object, b: Tensor, max_iter: int, tol: float) -> tuple[Tensor, Tensor, int]:
    """Batched CG for A x = b (rows of b are right-hand sides); returns x, relative residuals, iterations.

    Raises TaskFailure when A is not positive definite along a search direction (p^T A p <= 0).
    """
    assert callable(apply)
    x = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rr = (r * r).sum(1)
    norm_b = b.norm(dim=1).clamp_min(torch.finfo(b.dtype).tiny)
    done = r.norm(dim=1) <= tol * norm_b
    it = 0
    for it in range(1, max_iter + 1):
        if bool(done.all()):
            return x, r.norm(dim=1) / norm_b, it - 1
        Ap = apply(p)
        pAp = (p * Ap).sum(1)
        if bool((pAp[~done] <= 0).any()):
            raise TaskFailure("cg: H + damping I is not positive definite along a search direction; "
                              "raise the estimator's damping")
        alpha = torch.where(done, torch.zeros_like(rr), rr / pAp.where(~done, torch.ones_like(pAp)))
        x = x + alpha[:, None] * p
        r = r - alpha[:, None] * Ap
        rr_new = (r * r).sum(1)
        beta = torch.where(done, torch.zeros_like(rr), rr_new / rr.where(~done, torch.ones_like(rr)))
        p = r + beta[:, None] * p
        rr = rr_new
        done = done | (r.norm(dim=1) <= tol * norm_b)
    return x, r.norm(dim=1) / norm_b, max_iter


def cg_scores(spec: CgEstimator, inputs: EstimatorInputs) -> Tensor:
    def solve(b: Tensor) -> Tensor:
        x, residual, _ = conjugate_gradient(lambda v: inputs.hvp(v) + spec.damping * v, b, spec.max_iter, spec.tol)
        worst = float(residual.max())
        if not worst <= spec.tol:
            raise TaskFailure(f"cg did not converge in {spec.max_iter} iterations (relative residual {worst:.2e} "
                              f"> tol {spec.tol:g}); raise max_iter or damping")
        return x

    return inverse_scores(inputs, solve)
