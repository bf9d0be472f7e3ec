"""Converged refits for small models: batched chord-Newton with Levenberg-Marquardt fallback.

Every model m solves grad L_m(theta) = 0 for L_m(theta) = (1/n) sum_j w_mj loss_j(theta) + wd/2 ||theta||^2,
starting from the trained theta_0. The chord step reuses one factorisation of the base Hessian (damped only
if it is not positive definite),
    theta <- theta - (H_0 [+ damping I])^-1 grad L_m(theta),
for all models at once (one Cholesky solve with M right-hand sides), with step halving until L_m decreases.
A model whose gradient norm fails to halve in an iteration gets a true Newton step on its own Hessian
next, (H_m + mu_m I)^-1 grad L_m, with mu_m raised tenfold whenever the factorisation or the decrease fails
(Levenberg-Marquardt). Iteration stops when ||grad L_m|| <= tol for every model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor, nn
from torch.func import hessian, vmap

from runners.errors import TaskFailure
from runners.objective import FlatModel, per_example_loss


@dataclass
class Refit:
    theta: Tensor  # [M, P]
    grad_norm: Tensor  # [M]
    iterations: Tensor  # [M] iterations each model needed


class Objective(Protocol):
    """Per-model objectives L_m as functions of flat parameters; ``rows`` says which models."""

    def values_and_grads(self, theta: Tensor, rows: Tensor) -> tuple[Tensor, Tensor]: ...

    def hessians(self, theta: Tensor, rows: Tensor) -> Tensor: ...


def many_logits(flat: FlatModel, theta: Tensor, x: Tensor, per_model: bool = False) -> Tensor:
    """Logits [M, b, C] of models theta [M, P] on shared inputs x [b, d] (or per model, x [M, b, d])."""
    return vmap(flat.logits, in_dims=(0, 0 if per_model else None))(theta, x)


def _batched_grads(values_of: Callable[[Tensor], Tensor], theta: Tensor) -> tuple[Tensor, Tensor]:
    theta = theta.detach().requires_grad_(True)
    values = values_of(theta)
    (grads,) = torch.autograd.grad(values.sum(), theta)
    return values.detach(), grads


class WeightedLoss:
    """L_m(theta) = (1/n) sum_j w_mj loss_j(theta) + wd/2 ||theta||^2 (the objective of LANGUAGE.md)."""

    def __init__(self, flat: FlatModel, x: Tensor, y: Tensor, weights: Tensor, weight_decay: float,
                 smoothing: float = 0.0) -> None:
        self.flat, self.x, self.y, self.weights, self.wd = flat, x, y, weights, weight_decay
        self.smoothing = smoothing

    def single(self, theta: Tensor, w: Tensor) -> Tensor:
        losses = per_example_loss(self.flat.logits(theta, self.x), self.y, self.smoothing)
        return (losses * w).sum() / self.x.shape[0] + 0.5 * self.wd * (theta * theta).sum()

    def values_and_grads(self, theta: Tensor, rows: Tensor) -> tuple[Tensor, Tensor]:
        def values(th: Tensor) -> Tensor:
            losses = per_example_loss(many_logits(self.flat, th, self.x), self.y.expand(len(rows), *self.y.shape),
                                      self.smoothing)
            return (losses * self.weights[rows]).sum(1) / self.x.shape[0] + 0.5 * self.wd * (th * th).sum(1)

        return _batched_grads(values, theta)

    def hessians(self, theta: Tensor, rows: Tensor) -> Tensor:
        return vmap(hessian(self.single))(theta.detach(), self.weights[rows])


class ProximalBregman:
    """The PBRF objective of ``runners.protocols.pbrf`` for model m removing point removed[m] (active[m] = 0
    for the control): (1/N) sum_i D(h_i(theta), h_i(theta_s)) - active_m (1/N) loss(z_m, theta)
    + (proximity/2) ||theta - theta_s||^2."""

    def __init__(self, flat: FlatModel, x: Tensor, y: Tensor, removed: Tensor, active: Tensor,
                 proximity: float, smoothing: float = 0.0) -> None:
        self.flat, self.x, self.y, self.removed, self.active, self.prox = flat, x, y, removed, active, proximity
        self.smoothing = smoothing
        with torch.no_grad():
            self.z_s = flat.logits(flat.theta, x)

    def single(self, theta: Tensor, xm: Tensor, ym: Tensor, am: Tensor) -> Tensor:
        from runners.protocols.pbrf import bregman

        n = self.x.shape[0]
        divergence = bregman(self.flat.logits(theta, self.x), self.z_s, self.y.is_floating_point()).sum() / n
        own = per_example_loss(self.flat.logits(theta, xm.unsqueeze(0)), ym.unsqueeze(0), self.smoothing).sum()
        shift = theta - self.flat.theta
        return divergence - am * own / n + 0.5 * self.prox * (shift * shift).sum()

    def values_and_grads(self, theta: Tensor, rows: Tensor) -> tuple[Tensor, Tensor]:
        idx = self.removed[rows]
        return _batched_grads(lambda th: vmap(self.single)(th, self.x[idx], self.y[idx], self.active[rows]), theta)

    def hessians(self, theta: Tensor, rows: Tensor) -> Tensor:
        idx = self.removed[rows]
        return vmap(hessian(self.single))(theta.detach(), self.x[idx], self.y[idx], self.active[rows])


def newton_refit(module: nn.Module, start: dict[str, Tensor], x: Tensor, y: Tensor, weights: Tensor,
                 weight_decay: float, base_hessian: Tensor, tol: float, max_iter: int, damping: float,
                 hessian_chunk: int = 64, smoothing: float = 0.0, starts: Tensor | None = None) -> Refit:
    """Every weighted refit from ``start`` (or from per-model flat ``starts`` [M, P]) to |grad| <= tol; raises
    TaskFailure if any does not converge."""
    flat = FlatModel(module, start)
    return newton_solve(WeightedLoss(flat, x, y, weights, weight_decay, smoothing),
                        flat.theta if starts is None else starts, weights.shape[0], base_hessian, tol, max_iter,
                        damping, hessian_chunk)


def newton_solve(objective: Objective, theta0: Tensor, M: int, base_hessian: Tensor, tol: float, max_iter: int,
                 damping: float, hessian_chunk: int = 64) -> Refit:
    """Solve grad L_m = 0 for m < M from theta0 ([P], shared, or [M, P]), chord matrix base_hessian + damping I
    (see the module doc)."""
    P = theta0.shape[-1]
    H0 = base_hessian.to(theta0.dtype)
    chol, info = torch.linalg.cholesky_ex(H0)
    if int(info) != 0 and damping > 0:  # damping only where needed: it slows the chord's convergence
        H0 = H0 + damping * torch.eye(P, dtype=theta0.dtype)
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
    # Levenberg-Marquardt damping of the exact steps: starts at the chord's damping, falls tenfold after each
    # accepted step down to a negligible floor (so the exact steps converge quadratically), rises tenfold
    # after a rejected step or a failed factorisation
    floor = 1e-12 * float(H0.diagonal().abs().max())
    mu = torch.full((M,), max(damping, floor), dtype=theta.dtype)
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
        mu[rows[accepted]] = torch.clamp(mu[rows[accepted]] / 10, min=floor)
    if not bool((norms <= tol).all()):
        worst = int(torch.argmax(norms))
        raise TaskFailure(f"newton: {int((norms > tol).sum())} of {M} models did not reach |grad| <= {tol:g} in "
                          f"{max_iter} iterations (worst {float(norms[worst]):.2e}); raise max_iter or tol, or "
                          "use float64")
    return Refit(theta=theta, grad_norm=norms, iterations=iterations)
