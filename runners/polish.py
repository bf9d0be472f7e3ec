"""``training: {polish: {tol, max_steps}}``: take the trained model to a stationary point of its objective.

Influence functions linearise around a stationary point, grad L(theta) = 0, of the full-batch regularised
objective L(theta) = (1/n) sum_j loss_j(theta) + weight_decay/2 ||theta||^2 (``runners.objective``), which
stochastic or stopped-early training does not reach. Polish minimises L further with L-BFGS
(``torch.optim.LBFGS``: history 100, strong-Wolfe line search, so each step lowers L whatever the signs of the
Hessian's eigenvalues), in the model's dtype and in evaluation mode (dropout off), with L and its gradient
summed over chunks of the training set that fit the memory budget, until ||grad L||_2 <= tol, ``max_steps``
iterations, or ``STALLED`` checks in a row (each after up to ``CHUNK`` iterations) that do not halve the
norm: a line search that can no longer find a lower L at the dtype's precision takes one iteration per check
(float32 stops near 1e-4, float64 near 1e-9), and ReLU networks, whose objective has kinks, can have their
minimum on one, where no gradient vanishes. It reports where it stopped. Weight decay > 0 is required
(``inflang.spec.study``): without it a network that fits its training set may have no finite minimiser.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from runners.errors import DivergenceError
from runners.objective import objective

CHUNK = 50  # L-BFGS iterations between checks of the gradient norm (the optimizer keeps its history across)
STALLED = 4  # checks in a row that did not halve the gradient norm: as far as this precision goes


@dataclass(frozen=True)
class Polished:
    start_grad_norm: float  # ||grad L|| of the trained model
    grad_norm: float  # ||grad L|| where polish stopped
    steps: int  # L-BFGS iterations taken
    converged: bool  # grad_norm <= tol


def _objective_backward(module: nn.Module, x: Tensor, y: Tensor, weight_decay: float, smoothing: float,
                        rows: int) -> Tensor:
    """L(theta) with its gradient accumulated into the parameters' ``.grad``, over chunks of ``rows`` examples."""
    named = dict(module.named_parameters())
    n = int(x.shape[0])
    total = torch.zeros((), dtype=x.dtype, device=x.device)
    for lo in range(0, n, rows):
        part = objective(module, named, x[lo:lo + rows], y[lo:lo + rows], 0.0, smoothing=smoothing)
        share = min(rows, n - lo) / n
        (share * part).backward()
        total += share * part.detach()
    decay = 0.5 * weight_decay * sum((p * p).sum() for p in named.values())
    decay.backward()  # type: ignore[union-attr]
    return total + decay.detach()  # type: ignore[union-attr]


def gradient_norm(module: nn.Module, x: Tensor, y: Tensor, weight_decay: float, smoothing: float = 0.0,
                  rows: int | None = None) -> float:
    """||grad L(theta)||_2 over every parameter of ``module``, on the full batch (in chunks of ``rows``)."""
    params = list(module.parameters())
    saved = [p.grad for p in params]
    for p in params:
        p.grad = None
    try:
        _objective_backward(module, x, y, weight_decay, smoothing, rows or int(x.shape[0]))
        return math.sqrt(sum(float((p.grad.double() ** 2).sum()) for p in params if p.grad is not None))
    finally:
        for p, g in zip(params, saved, strict=True):
            p.grad = g


def polish(module: nn.Module, x: Tensor, y: Tensor, weight_decay: float, tol: float, max_steps: int,
           smoothing: float = 0.0, rows: int | None = None) -> Polished:
    """Minimise L over ``module``'s parameters in place (above), ``rows`` examples a pass (None: all); raises
    DivergenceError where L or its gradient stops being finite."""
    was_training = module.training
    module.eval()
    params = list(module.parameters())
    size = sum(p.numel() for p in params)
    rows = rows or int(x.shape[0])
    try:
        start = norm = gradient_norm(module, x, y, weight_decay, smoothing, rows)
        # L-BFGS stops by itself once max |g_i| <= tol / sqrt(P), which implies ||g||_2 <= tol
        lbfgs = torch.optim.LBFGS(params, lr=1.0, max_iter=CHUNK, max_eval=CHUNK * 5, history_size=100,
                                  tolerance_grad=tol / math.sqrt(size), tolerance_change=0.0,
                                  line_search_fn="strong_wolfe")

        def closure() -> Tensor:
            lbfgs.zero_grad()
            return _objective_backward(module, x, y, weight_decay, smoothing, rows)

        steps, stalled = 0, 0
        while math.isfinite(norm) and norm > tol and steps < max_steps and stalled < STALLED:
            lbfgs.param_groups[0]["max_iter"] = min(CHUNK, max_steps - steps)
            before = int(lbfgs.state[params[0]].get("n_iter", 0))
            lbfgs.step(closure)
            steps += int(lbfgs.state[params[0]].get("n_iter", 0)) - before
            last, norm = norm, gradient_norm(module, x, y, weight_decay, smoothing, rows)
            stalled = stalled + 1 if norm > 0.5 * last else 0
        if not math.isfinite(norm) or not all(bool(torch.isfinite(p).all()) for p in params):
            raise DivergenceError("training.polish diverged (the objective is not finite); lower training.lr or "
                                  "raise training.weight_decay")
    finally:
        module.train(was_training)
    return Polished(start, norm, steps, norm <= tol)
