"""Converged refits for small models: batched chord-Newton with Levenberg-Marquardt fallback.

Every model m solves grad L_m(theta) = 0 for L_m(theta) = (1/n) sum_j w_mj loss_j(theta) + wd/2 ||theta||^2,
starting from the trained theta_0. The chord step reuses one factorisation of the base Hessian,
    theta <- theta - (H_0 + damping I)^-1 grad L_m(theta),
for all models at once (one Cholesky solve with M right-hand sides), with step halving until L_m decreases.
A model whose gradient norm fails to halve in an iteration gets a true Newton step on its own Hessian
next, (H_m + mu_m I)^-1 grad L_m, with mu_m raised tenfold whenever the factorisation or the decrease fails
(Levenberg-Marquardt). Iteration stops when ||grad L_m|| <= tol for every model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call, hessian, vmap

from runners.errors import TaskFailure
from runners.objective import per_example_loss


@dataclass
class Refit:
    theta: Tensor  # [M, P]
    grad_norm: Tensor  # [M]
    iterations: Tensor  # [M] iterations each model needed


class _Objective:
    """L_m for many models at once, as a function of flat parameters [M, P]."""

    def __init__(self, module: nn.Module, names: list[str], shapes: list[torch.Size], x: Tensor, y: Tensor,
                 weights: Tensor, weight_decay: float) -> None:
        self.module, self.names, self.shapes = module, names, shapes
        self.sizes = [int(torch.Size(s).numel()) for s in shapes]
        self.x, self.y, self.weights, self.wd = x, y, weights, weight_decay
        self.n = x.shape[0]

    def unflatten(self, theta: Tensor) -> dict[str, Tensor]:
        parts = torch.split(theta, self.sizes, dim=-1)
        return {k: p.reshape(*theta.shape[:-1], *s) for k, p, s in zip(self.names, parts, self.shapes, strict=True)}

    def single(self, theta: Tensor, w: Tensor) -> Tensor:
        logits = functional_call(self.module, self.unflatten(theta), (self.x,))
        return (per_example_loss(logits, self.y) * w).sum() / self.n + 0.5 * self.wd * (theta * theta).sum()

    def values_and_grads(self, theta: Tensor, rows: Tensor) -> tuple[Tensor, Tensor]:
        theta = theta.detach().requires_grad_(True)
        params = self.unflatten(theta)
        logits = vmap(lambda p: functional_call(self.module, p, (self.x,)))(params)
        data = (per_example_loss(logits, self.y.expand(len(rows), -1)) * self.weights[rows]).sum(1) / self.n
        values = data + 0.5 * self.wd * (theta * theta).sum(1)
        (grads,) = torch.autograd.grad(values.sum(), theta)
        return values.detach(), grads

    def hessians(self, theta: Tensor, rows: Tensor) -> Tensor:
        return vmap(hessian(self.single))(theta.detach(), self.weights[rows])


def newton_refit(module: nn.Module, start: dict[str, Tensor], x: Tensor, y: Tensor, weights: Tensor,
                 weight_decay: float, base_hessian: Tensor, tol: float, max_iter: int, damping: float,
                 hessian_chunk: int = 64) -> Refit:
    """Solve every model's stationarity condition from ``start``; raises TaskFailure if any does not converge."""
    names = list(start)
    objective = _Objective(module, names, [start[k].shape for k in names], x, y, weights, weight_decay)
    theta0 = torch.cat([start[k].reshape(-1) for k in names])
    M, P = weights.shape[0], theta0.numel()
    H0 = base_hessian.to(theta0.dtype) + damping * torch.eye(P, dtype=theta0.dtype)
    chol, info = torch.linalg.cholesky_ex(H0)
    if int(info) != 0:
        smallest = float(torch.linalg.eigvalsh(base_hessian.to(torch.float64)).min())
        raise TaskFailure(f"newton: the Hessian at the optimum is not positive definite (smallest eigenvalue "
                          f"{smallest:.3g}); set ground_truth.damping above {max(-smallest, 0.0):.3g}")
    theta = theta0.expand(M, P).clone()
    everyone = torch.arange(M)
    values, grads = objective.values_and_grads(theta, everyone)
    norms = grads.norm(dim=1)
    iterations = torch.zeros(M, dtype=torch.long)
    exact_next = torch.zeros(M, dtype=torch.bool)
    mu = torch.full((M,), max(damping, 1e-12), dtype=theta.dtype)
    for it in range(1, max_iter + 1):
        active = norms > tol
        if not bool(active.any()):
            break
        rows = everyone[active]
        iterations[rows] = it
        steps = torch.cholesky_solve(grads[rows].T, chol).T
        for chunk in [rows[exact_next[rows]][i:i + hessian_chunk]
                      for i in range(0, int(exact_next[rows].sum()), hessian_chunk)]:
            H = objective.hessians(theta[chunk], chunk)
            for _ in range(12):
                eye = torch.eye(P, dtype=theta.dtype).expand(len(chunk), P, P)
                L, bad = torch.linalg.cholesky_ex(H + mu[chunk, None, None] * eye)
                if not bool(bad.any()):
                    break
                mu[chunk[bad > 0]] *= 10
            else:
                continue  # keep chord steps for these
            where = torch.searchsorted(rows, chunk)
            steps[where] = torch.cholesky_solve(grads[chunk].unsqueeze(2), L).squeeze(2)
        old_norms = norms[rows].clone()
        scale = torch.ones(len(rows), dtype=theta.dtype)
        for _ in range(30):  # step halving until every model's objective does not increase
            trial = theta[rows] - scale[:, None] * steps
            new_values, new_grads = objective.values_and_grads(trial, rows)
            worse = ~(new_values <= values[rows] + 1e-12 * values[rows].abs().clamp_min(1.0))
            if not bool(worse.any()):
                break
            scale[worse] *= 0.5
        accepted = ~worse
        theta[rows[accepted]] = trial[accepted]
        values[rows[accepted]] = new_values[accepted]
        grads[rows[accepted]] = new_grads[accepted]
        norms = grads.norm(dim=1)
        exact_next[rows] = norms[rows] > 0.5 * old_norms
        mu[rows[worse]] *= 10
        mu[rows[accepted]] = torch.clamp(mu[rows[accepted]] / 10, min=max(damping, 1e-12))
    if not bool((norms <= tol).all()):
        worst = int(torch.argmax(norms))
        raise TaskFailure(f"newton: {int((norms > tol).sum())} of {M} models did not reach |grad| <= {tol:g} in "
                          f"{max_iter} iterations (worst {float(norms[worst]):.2e}); raise max_iter or tol, or "
                          "use float64")
    return Refit(theta=theta, grad_norm=norms, iterations=iterations)
