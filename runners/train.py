"""Base training with ``torch.optim`` (sgd, adam, lbfgs) on the objective of ``runners.objective``.

Weight decay is part of the objective (weight_decay/2 ||theta||^2 over all parameters), not the optimizer's
option, so that Adam and SGD minimise the same function that influence is computed for.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from inflang.spec import TrainingSpec
from runners.early_stopping import BestByValidation
from runners.ensemble import UpdateRule, stack, train_ensemble, weighted_cross_entropy
from runners.errors import DivergenceError, TaskFailure
from runners.objective import objective


@dataclass
class Trained:
    params: dict[str, Tensor]
    init: dict[str, Tensor]
    steps: int
    seconds: float
    snapshots: list[tuple[float, dict[str, Tensor]]] = field(default_factory=list)  # (lr at that step, params)
    buffers: dict[str, Tensor] = field(default_factory=dict)  # final running statistics (BatchNorm)
    snapshot_buffers: list[dict[str, Tensor]] = field(default_factory=list)  # running statistics per snapshot
    init_buffers: dict[str, Tensor] = field(default_factory=dict)


def _check(loss: Tensor, step: int, spec: TrainingSpec) -> None:
    value = float(loss.detach())
    if not math.isfinite(value):
        raise DivergenceError(
            f"training diverged at step {step} (loss = {value}); lower training.lr (now {spec.lr}) "
            "or raise training.weight_decay")


def train(module: nn.Module, x: Tensor, y: Tensor, spec: TrainingSpec, order_seed: int,
          validation: tuple[Tensor, Tensor] | None = None, noise_seed: int = 0) -> Trained:
    """Train ``module`` in place on (x, y); returns its final and initial parameters.

    ``order_seed`` fixes the minibatch order and ``noise_seed`` the dropout masks (one seed per step).
    With ``spec.early_stopping`` and a ``validation`` set (x_val, y_val), training stops after ``patience``
    evaluations without a lower validation loss and the best model is kept (``runners.early_stopping``).

    sgd and adam run on the batched engine with one model (it replays torch.optim's update rules, tested),
    so that scratch retraining with nothing removed reproduces the base model bit for bit; lbfgs uses
    torch.optim.LBFGS with a strong-Wolfe line search.
    """
    init = {k: v.detach().clone() for k, v in module.named_parameters()}
    init_buffers = {k: v.detach().clone() for k, v in module.named_buffers()}
    snapshots: list[tuple[float, dict[str, Tensor]]] = []
    snapshot_buffers: list[dict[str, Tensor]] = []
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
            loss = objective(module, named, x, y, spec.weight_decay, smoothing=spec.label_smoothing)
            loss.backward()
            return loss

        _check(lbfgs.step(closure), 0, spec)
        _check(objective(module, named, x, y, spec.weight_decay, smoothing=spec.label_smoothing), spec.epochs, spec)
    else:
        # the batched engine with one model: the same update rule, bit for bit, that retraining replays
        rule = training_rule(spec, n)
        wanted = checkpoint_steps(steps, spec.checkpoints)
        monitor = stopping_monitor(module, spec, validation, n, 1)

        def keep(step: int, params: dict[str, Tensor]) -> bool:
            if step in wanted:
                snapshots.append((rule.lr_at(step), {k: params[k][0].detach().clone() for k in init}))
                snapshot_buffers.append({k: params[k][0].detach().clone() for k in init_buffers})
            return monitor(step, params) if monitor is not None else False

        try:
            final = train_ensemble(module, stack(init, 1), x, rule, steps, spec.batch_size, [order_seed],
                                   weighted_cross_entropy(y, torch.ones(1, n, dtype=x.dtype), spec.label_smoothing),
                                   on_step=keep if wanted or monitor else None, lr_name="training.lr",
                                   noise_seed=noise_seed, engine="eager")
        except DivergenceError as exc:
            raise DivergenceError(f"training {exc}") from None
        if monitor is not None:
            final, steps = monitor.result(final), monitor.last_step + 1
        with torch.no_grad():
            for k, p in module.named_parameters():
                p.copy_(final[k][0])
            for k, b in module.named_buffers():
                b.copy_(final[k][0])
    final = {k: v.detach().clone() for k, v in module.named_parameters()}
    buffers = {k: v.detach().clone() for k, v in module.named_buffers()}
    if not all(torch.isfinite(v).all() for v in final.values()):
        raise DivergenceError(f"training produced non-finite parameters; lower training.lr (now {spec.lr})")
    return Trained(params=final, init=init, steps=steps, seconds=time.perf_counter() - start, snapshots=snapshots,
                   buffers=buffers, init_buffers=init_buffers, snapshot_buffers=snapshot_buffers)


def stopping_monitor(module: nn.Module, spec: TrainingSpec, validation: tuple[Tensor, Tensor] | None, n_train: int,
                     models: int) -> BestByValidation | None:
    """The early-stopping monitor of ``spec`` for ``models`` models (None when early stopping is off)."""
    stop = spec.early_stopping
    if stop is None:
        return None
    if validation is None:
        raise TaskFailure("training.early_stopping needs a validation set, and none was held out")
    return BestByValidation(module, validation[0], validation[1], stop.every * spec.steps_per_epoch(n_train),
                            stop.patience, spec.total_steps(n_train), models)


def training_rule(spec: TrainingSpec, n_train: int) -> UpdateRule:
    """The update rule of base training, with its learning-rate schedule."""
    return UpdateRule(optimizer=spec.optimizer, lr=spec.lr, weight_decay=spec.weight_decay, momentum=spec.momentum,
                      schedule=spec.schedule, total_steps=spec.total_steps(n_train),
                      step_size=spec.step_epochs * spec.steps_per_epoch(n_train), gamma=spec.gamma)


def checkpoint_steps(steps: int, count: int) -> set[int]:
    """``count`` evenly spaced steps (0-based, after their update), the last one being the final step."""
    return {max(0, round(c * steps / count) - 1) for c in range(1, count + 1)} if count else set()
