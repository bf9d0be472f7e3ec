"""``training: {polish: {tol, max_steps}}``: take the trained model to a stationary point of its objective.

Influence functions linearise around a stationary point, grad L(theta) = 0, of the full-batch regularised
objective L(theta) = (1/n) sum_j loss_j(theta) + weight_decay/2 ||theta||^2 (``runners.objective``), which
stochastic or stopped-early training does not reach. Polish minimises L further with L-BFGS
(``torch.optim.LBFGS``: history 100, strong-Wolfe line search, so each step lowers L whatever the signs of the
Hessian's eigenvalues, as with ReLU networks), in the model's dtype and in evaluation mode (dropout off), until
||grad L||_2 <= tol, ``max_steps`` iterations, or 4 x 50 iterations that did not halve the gradient norm (at
a norm near 1e-9 in float64 the objective's own rounding stops the line search from finding lower values),
and reports where it stopped. Weight decay > 0 is required
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


def gradient_norm(module: nn.Module, x: Tensor, y: Tensor, weight_decay: float, smoothing: float = 0.0) -> float:
    """||grad L(theta)||_2 over every parameter of ``module``, on the full batch."""
    named = dict(module.named_parameters())
    loss = objective(module, named, x, y, weight_decay, smoothing=smoothing)
    grads = torch.autograd.grad(loss, list(named.values()))
    return math.sqrt(sum(float((g.double() ** 2).sum()) for g in grads))


def polish(module: nn.Module, x: Tensor, y: Tensor, weight_decay: float, tol: float, max_steps: int,
           smoothing: float = 0.0) -> Polished:
    """Minimise L over ``module``'s parameters in place (above); raises DivergenceError on a non-finite loss."""
    was_training = module.training
    module.eval()
    named = dict(module.named_parameters())
    params = list(named.values())
    size = sum(p.numel() for p in params)
    try:
        start = norm = gradient_norm(module, x, y, weight_decay, smoothing)
        # L-BFGS stops by itself once max |g_i| <= tol / sqrt(P), which implies ||g||_2 <= tol
        lbfgs = torch.optim.LBFGS(params, lr=1.0, max_iter=CHUNK, max_eval=CHUNK * 5, history_size=100,
                                  tolerance_grad=tol / math.sqrt(size), tolerance_change=0.0,
                                  line_search_fn="strong_wolfe")

        def closure() -> Tensor:
            lbfgs.zero_grad()
            loss = objective(module, named, x, y, weight_decay, smoothing=smoothing)
            loss.backward()
            return loss

        steps, stalled = 0, 0
        while norm > tol and steps < max_steps and stalled < STALLED:
            lbfgs.param_groups[0]["max_iter"] = min(CHUNK, max_steps - steps)
            before = int(lbfgs.state[params[0]].get("n_iter", 0))
            loss = lbfgs.step(closure)
            if not math.isfinite(float(loss.detach())) or not all(bool(torch.isfinite(p).all()) for p in params):
                raise DivergenceError("training.polish diverged (the objective is not finite); lower training.lr "
                                      "or raise training.weight_decay")
            done = int(lbfgs.state[params[0]].get("n_iter", 0)) - before
            steps += done
            last, norm = norm, gradient_norm(module, x, y, weight_decay, smoothing)
            if done == 0:  # no step lowered L at this precision: as far as it goes
                break
            stalled = stalled + 1 if norm > 0.5 * last else 0
    finally:
        module.train(was_training)
    return Polished(start, norm, steps, norm <= tol)
