"""Base training with ``torch.optim`` (sgd, adam, lbfgs) on the objective of ``runners.objective``.

Weight decay is part of the objective (weight_decay/2 ||theta||^2 over all parameters), not the optimizer's
option, so that Adam and SGD minimise the same function that influence is computed for.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from inflang.spec import TrainingSpec
from runners.errors import DivergenceError
from runners.objective import objective


@dataclass
class Trained:
    params: dict[str, Tensor]
    init: dict[str, Tensor]
    steps: int
    seconds: float


def batch_order(n: int, batch_size: int | None, steps: int, seed: int) -> Iterator[Tensor | None]:
    """Minibatch indices for ``steps`` steps (a fresh seeded permutation each epoch); None = full batch."""
    if batch_size is None or batch_size >= n:
        for _ in range(steps):
            yield None
        return
    generator = torch.Generator().manual_seed(seed)
    done = 0
    while done < steps:
        perm = torch.randperm(n, generator=generator)
        for start in range(0, n, batch_size):
            if done == steps:
                return
            yield perm[start:start + batch_size]
            done += 1


def _check(loss: Tensor, step: int, spec: TrainingSpec) -> None:
    value = float(loss.detach())
    if not math.isfinite(value):
        raise DivergenceError(
            f"training diverged at step {step} (loss = {value}); lower training.lr (now {spec.lr}) "
            "or raise training.weight_decay")


def train(module: nn.Module, x: Tensor, y: Tensor, spec: TrainingSpec, order_seed: int) -> Trained:
    """Train ``module`` in place on (x, y); returns its final and initial parameters."""
    init = {k: v.detach().clone() for k, v in module.named_parameters()}
    params = list(module.parameters())
    named = dict(module.named_parameters())
    n = x.shape[0]
    start = time.perf_counter()
    steps = spec.total_steps(n)
    if spec.optimizer == "lbfgs":
        tol = 1e-10 if x.dtype == torch.float64 else 1e-6
        lbfgs = torch.optim.LBFGS(params, lr=spec.lr, max_iter=spec.epochs, max_eval=spec.epochs * 2,
                                  tolerance_grad=tol, tolerance_change=1e-16, history_size=100,
                                  line_search_fn="strong_wolfe")

        def closure() -> Tensor:
            lbfgs.zero_grad()
            loss = objective(module, named, x, y, spec.weight_decay)
            loss.backward()
            return loss

        _check(lbfgs.step(closure), 0, spec)
        _check(objective(module, named, x, y, spec.weight_decay), spec.epochs, spec)
    else:
        if spec.optimizer == "sgd":
            opt: torch.optim.Optimizer = torch.optim.SGD(params, lr=spec.lr, momentum=spec.momentum)
        else:
            opt = torch.optim.Adam(params, lr=spec.lr)
        for step, idx in enumerate(batch_order(n, spec.batch_size, steps, order_seed)):
            xb, yb = (x, y) if idx is None else (x[idx], y[idx])
            opt.zero_grad()
            loss = objective(module, named, xb, yb, spec.weight_decay)
            loss.backward()
            if step % 100 == 0 or step == steps - 1:
                _check(loss, step, spec)
            opt.step()
    final = {k: v.detach().clone() for k, v in module.named_parameters()}
    if not all(torch.isfinite(v).all() for v in final.values()):
        raise DivergenceError(f"training produced non-finite parameters; lower training.lr (now {spec.lr})")
    return Trained(params=final, init=init, steps=steps, seconds=time.perf_counter() - start)
