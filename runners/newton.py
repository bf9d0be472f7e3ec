"""Converged refits for small models: batched chord-Newton with Levenberg-Marquardt fallback.

Every model m solves grad L_m(theta) = 0 for L_m(theta) = (1/n) sum_j w_mj loss_j(theta) + wd/2 ||theta||^2,
starting from the trained theta_0. The chord step reuses one factorisation of the base Hessian (damped only
if it is not positive definite),
    theta <- theta - (H_0 [+ damping I])^-1 grad L_m(theta),
for all models at once (one Cholesky solve with M right-hand sides), with step halving until L_m decreases.
A model whose gradient norm fails to halve in an iteration gets a true Newton step on its own Hessian
next, (H_m + mu_m I)^-1 grad L_m, with mu_m raised tenfold whenever the factorisation or the decrease fails
(Levenberg-Marquardt). Iteration stops when ||grad L_m|| <= tol for every model.

Above ``DENSE_PARAMETERS`` parameters no Hessian of a model is formed or applied (P Hessian-vector products
and P^2 numbers per model): every model takes quasi-Newton steps instead, from the first iteration:
limited-memory BFGS (Nocedal 1980) by the two-loop recursion over the (s, y) = (change of theta, change of
grad L_m) pairs of its last ``QUASI_NEWTON_PAIRS`` iterations, a pair kept only where s . y > sqrt(eps) |s| |y|,
from the initial inverse Hessian gamma_m C^-1, C the chord matrix and gamma_m = s.y / (y . C^-1 y) of the
model's newest kept pair (1 if none), with the same step halving; a model whose step is rejected forgets its
pairs. An iteration costs one batched gradient (one more per halving) and a few triangular solves per model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor, nn
from torch.func import hessian, vmap

from runners.curvature import objective_ggn, objective_hessian
from runners.errors import TaskFailure
from runners.objective import FlatModel, bregman, per_example_loss

DENSE_PARAMETERS = 3000  # above this many parameters, quasi-Newton steps preconditioned by the chord
QUASI_NEWTON_PAIRS = 8  # (s, y) pairs each model keeps above DENSE_PARAMETERS


@dataclass
class Refit:
    theta: Tensor  # [M, P]
    grad_norm: Tensor  # [M]
    iterations: Tensor  # [M] iterations each model needed
    tolerance: Tensor  # [M] each model's gradient-norm tolerance
    start_grad_norm: Tensor  # [M] each model's gradient norm where it started

    def converged(self, tol: float | None = None) -> Tensor:
        """[M] whether each model reached |grad| <= tol (its own tolerance where tol is None)."""
        return self.grad_norm <= (self.tolerance if tol is None else tol)


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

    def values(self, th: Tensor, rows: Tensor) -> Tensor:
        """[K] L_m(th_m) of the models ``rows``, th [K, P]."""
        losses = per_example_loss(many_logits(self.flat, th, self.x), self.y.expand(len(rows), *self.y.shape),
                                  self.smoothing)
        return (losses * self.weights[rows]).sum(1) / self.x.shape[0] + 0.5 * self.wd * (th * th).sum(1)

    def values_and_grads(self, theta: Tensor, rows: Tensor) -> tuple[Tensor, Tensor]:
        return _batched_grads(lambda th: self.values(th, rows), theta)

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
        n = self.x.shape[0]
        divergence = bregman(self.flat.logits(theta, self.x), self.z_s, self.y.is_floating_point()).sum() / n
        own = per_example_loss(self.flat.logits(theta, xm.unsqueeze(0)), ym.unsqueeze(0), self.smoothing).sum()
        shift = theta - self.flat.theta
        return divergence - am * own / n + 0.5 * self.prox * (shift * shift).sum()

    def values(self, th: Tensor, rows: Tensor) -> Tensor:
        """[K] the PBRF objectives of the models ``rows`` at th [K, P]."""
        idx = self.removed[rows]
        return vmap(self.single)(th, self.x[idx], self.y[idx], self.active[rows])

    def values_and_grads(self, theta: Tensor, rows: Tensor) -> tuple[Tensor, Tensor]:
        return _batched_grads(lambda th: self.values(th, rows), theta)

    def hessians(self, theta: Tensor, rows: Tensor) -> Tensor:
        idx = self.removed[rows]
        return vmap(hessian(self.single))(theta.detach(), self.x[idx], self.y[idx], self.active[rows])


def chord_matrix(module: nn.Module, params: dict[str, Tensor], x: Tensor, y: Tensor, weight_decay: float,
                 smoothing: float = 0.0) -> Tensor:
    """The chord matrix C of converged leave-one-out refits at ``params``: the objective's explicit Hessian up to
    DENSE_PARAMETERS parameters (whose refits also take Newton steps on their own Hessians), its Gauss-Newton
    matrix (1/n) sum_i J_i^T H_i J_i + weight_decay I above (positive semi-definite; formed from per-example
    Jacobians, where the explicit Hessian takes P Hessian-vector products). The quasi-Newton steps taken above
    DENSE_PARAMETERS correct for the difference; the solution does not depend on C."""
    if sum(int(v.numel()) for v in params.values()) > DENSE_PARAMETERS:
        return objective_ggn(module, params, x, y, weight_decay, smoothing)
    return objective_hessian(module, params, x, y, weight_decay, smoothing)


def newton_refit(module: nn.Module, start: dict[str, Tensor], x: Tensor, y: Tensor, weights: Tensor,
                 weight_decay: float, base_hessian: Tensor, tol: float, max_iter: int, damping: float,
                 hessian_chunk: int = 64, smoothing: float = 0.0, starts: Tensor | None = None) -> Refit:
    """Every weighted refit from ``start`` (or from per-model flat ``starts`` [M, P]) to |grad| <= tol; raises
    TaskFailure if any does not converge."""
    flat = FlatModel(module, start)
    return newton_solve(WeightedLoss(flat, x, y, weights, weight_decay, smoothing),
                        flat.theta if starts is None else starts, weights.shape[0], base_hessian, tol, max_iter,
                        damping, hessian_chunk)


class _Pairs:
    """Every model's (s, y) pairs from its last QUASI_NEWTON_PAIRS iterations, in one ring shared by all models (a
    model with no pair kept in an iteration holds rho = 0 in that slot, which the recursion skips)."""

    def __init__(self, M: int, P: int, dtype: torch.dtype) -> None:
        self.s = torch.zeros(M, QUASI_NEWTON_PAIRS, P, dtype=dtype)
        self.y = torch.zeros_like(self.s)
        self.rho = torch.zeros(M, QUASI_NEWTON_PAIRS, dtype=dtype)
        self.gamma = torch.ones(M, QUASI_NEWTON_PAIRS, dtype=dtype)  # s.y / (y . C^-1 y) of each kept pair
        self.order: list[int] = []  # slots, oldest first
        self.cosine = torch.finfo(dtype).eps ** 0.5  # a pair is kept where s.y > this x |s| |y|

    def directions(self, rows: Tensor, grads: Tensor, chol: Tensor) -> Tensor:
        """[K, P] B_k^-1 g_k by the two-loop recursion, with B_k^-1 = gamma_k C^-1 before the pairs, gamma_k that of
        the model's newest kept pair (1 if none is left)."""
        q = grads.clone()
        alphas: dict[int, Tensor] = {}
        gamma = torch.ones(len(rows), dtype=grads.dtype)
        found = torch.zeros(len(rows), dtype=torch.bool)
        for i in reversed(self.order):
            s, y, rho = self.s[rows, i], self.y[rows, i], self.rho[rows, i]
            alphas[i] = rho * (s * q).sum(1)
            q -= alphas[i][:, None] * y
            newest = ~found & (rho > 0)
            gamma[newest] = self.gamma[rows[newest], i]
            found |= newest
        r = torch.cholesky_solve(q.T, chol).T * gamma[:, None]
        for i in self.order:
            s, y, rho = self.s[rows, i], self.y[rows, i], self.rho[rows, i]
            r += s * (alphas[i] - rho * (y * r).sum(1))[:, None]
        return r

    def add(self, rows: Tensor, s: Tensor, y: Tensor, chol: Tensor) -> None:
        """Store the pairs of the models ``rows`` in the next slot (every other model gets rho = 0 there); a pair
        with s . y <= cosine |s| |y| is not kept."""
        slot = len(self.order) if len(self.order) < QUASI_NEWTON_PAIRS else self.order.pop(0)
        self.order.append(slot)
        self.rho[:, slot] = 0.0
        sy = (s * y).sum(1)
        kept = sy > self.cosine * s.norm(dim=1) * y.norm(dim=1)
        if bool(kept.any()):
            at = rows[kept]
            self.s[at, slot], self.y[at, slot] = s[kept], y[kept]
            self.rho[at, slot] = 1.0 / sy[kept]
            self.gamma[at, slot] = sy[kept] / (y[kept] * torch.cholesky_solve(y[kept].T, chol).T).sum(1)

    def forget(self, rows: Tensor) -> None:
        """Drop every pair of the models ``rows`` (their step failed to lower the objective): they restart from
        the chord."""
        self.rho[rows] = 0.0


def newton_solve(objective: Objective, theta0: Tensor, M: int, base_hessian: Tensor, tol: float, max_iter: int,
                 damping: float, hessian_chunk: int = 64, strict: bool = True, rtol: float | None = None) -> Refit:
    """Solve grad L_m = 0 for m < M from theta0 ([P], shared, or [M, P]), chord matrix base_hessian + damping I
    (see the module doc), to |grad L_m| <= tol, or with ``rtol`` to max(rtol |grad L_m(theta0)|, tol).
    ``strict``: raise TaskFailure when a model has not converged in ``max_iter`` iterations; otherwise return
    where each stopped (``Refit.converged`` says which did)."""
    P = theta0.shape[-1]
    H0 = base_hessian.to(theta0.dtype)
    chol, info = torch.linalg.cholesky_ex(H0)
    if int(info) != 0 and damping > 0:  # damping only where needed: it slows the chord's convergence
        H0 = H0 + damping * torch.eye(P, dtype=theta0.dtype)
        chol, info = torch.linalg.cholesky_ex(H0)
    if int(info) != 0:
        smallest = float(torch.linalg.eigvalsh(base_hessian.to(torch.float64)).min())
        largest = float(base_hessian.diagonal().abs().max())
        raise TaskFailure(f"newton: the chord matrix (the Hessian at the optimum, or its Gauss-Newton matrix) is "
                          f"not positive definite (smallest eigenvalue {smallest:.3g}); set ground_truth.damping "
                          f"above {max(-smallest, 1e-8 * largest):.3g}")
    theta = theta0.expand(M, P).clone()
    everyone = torch.arange(M)
    values, grads = objective.values_and_grads(theta, everyone)
    norms = start_norms = grads.norm(dim=1)
    tolerance = torch.full_like(norms, tol) if rtol is None else torch.clamp(rtol * norms, min=tol)
    iterations = torch.zeros(M, dtype=torch.long)
    exact_next = torch.zeros(M, dtype=torch.bool)
    # Levenberg-Marquardt damping of the exact steps: starts at the chord's damping, falls tenfold after each
    # accepted step down to a negligible floor (so the exact steps converge quadratically), rises tenfold
    # after a rejected step or a failed factorisation
    # (the quasi-Newton path above DENSE_PARAMETERS takes no exact steps and ignores mu)
    floor = 1e-12 * float(H0.diagonal().abs().max())
    mu = torch.full((M,), max(damping, floor), dtype=theta.dtype)
    pairs = _Pairs(M, P, theta.dtype) if P > DENSE_PARAMETERS else None
    for it in range(1, max_iter + 1):
        active = norms > tolerance
        if not bool(active.any()):
            break
        rows = everyone[active]
        iterations[rows] = it
        if pairs is not None:  # quasi-Newton steps; no model's Hessian is formed
            steps = pairs.directions(rows, grads[rows], chol)
        else:
            steps = torch.cholesky_solve(grads[rows].T, chol).T
            exact = rows[exact_next[rows]]
            for chunk in [exact[i:i + hessian_chunk] for i in range(0, len(exact), hessian_chunk)]:
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
        trial = theta[rows] - steps
        new_values, new_grads = objective.values_and_grads(trial, rows)
        for _ in range(30):  # step halving, for the models whose objective increased, until none does
            worse = ~(new_values <= values[rows] + 1e-12 * values[rows].abs().clamp_min(1.0))
            if not bool(worse.any()):
                break
            again = worse.nonzero().squeeze(1)
            scale[again] *= 0.5
            trial[again] = theta[rows[again]] - scale[again, None] * steps[again]
            new_values[again], new_grads[again] = objective.values_and_grads(trial[again], rows[again])
        else:
            worse = ~(new_values <= values[rows] + 1e-12 * values[rows].abs().clamp_min(1.0))
        accepted = ~worse
        if pairs is not None:
            moved = rows[accepted]
            pairs.add(moved, trial[accepted] - theta[moved], new_grads[accepted] - grads[moved], chol)
            pairs.forget(rows[worse])
        theta[rows[accepted]] = trial[accepted]
        values[rows[accepted]] = new_values[accepted]
        grads[rows[accepted]] = new_grads[accepted]
        norms = grads.norm(dim=1)
        exact_next[rows] = norms[rows] > 0.5 * old_norms
        mu[rows[worse]] *= 10
        mu[rows[accepted]] = torch.clamp(mu[rows[accepted]] / 10, min=floor)
    if strict and not bool((norms <= tolerance).all()):
        worst = int(torch.argmax(norms))
        raise TaskFailure(f"newton: {int((norms > tolerance).sum())} of {M} models did not reach |grad| <= "
                          f"{float(tolerance[worst]):g} in "
                          f"{max_iter} iterations (worst {float(norms[worst]):.2e}); raise max_iter or tol, or "
                          "use float64")
    return Refit(theta=theta, grad_norm=norms, iterations=iterations, tolerance=tolerance,
                 start_grad_norm=start_norms)
