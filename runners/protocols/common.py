"""What every ground-truth protocol shares: the retraining setup, chunked ensembles with a control in
each chunk, measurement on the selected test points, and the result shape.

A protocol evaluates K *items*: single training points (loo, pbrf: item i removes point i) or groups
(group, lds). Its result holds, per retraining repeat r, test point t and item k, the measured change
measure(theta_{k,r}) - measure(theta_{control,r}); NaN where (t, k) was not evaluated.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from inflang.spec import TrainingSpec
from inflang.spec.protocols import Retraining
from runners.ensemble import (
    UpdateRule,
    chunk_size,
    ensemble_logits,
    stack,
    train_ensemble,
    weighted_cross_entropy,
)
from runners.errors import DivergenceError
from runners.objective import MEASURES, PARAM_CHANGE
from runners.train import stopping_monitor, training_rule


@dataclass(frozen=True)
class RetrainSetup:
    """Start points, minibatch orders and dropout seeds: repeat 0 is the original run; repeat r > 0 draws a
    new order and new dropout masks (and, for scratch starts, a new initialisation). Every model of one
    repeat (the control included) shares its order and its masks: common random numbers."""

    trained: dict[str, Tensor]
    inits: list[dict[str, Tensor]]
    order_seeds: list[int]
    noise_seeds: list[int] | None = None  # None: seed 0 for every repeat

    def noise_seed(self, repeat: int) -> int:
        return self.noise_seeds[repeat] if self.noise_seeds is not None else 0


@dataclass
class Problem:
    """The trained model, its data and the run's settings, as every protocol receives them."""

    module: nn.Module
    setup: RetrainSetup
    training: TrainingSpec
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor  # selected test points
    y_test: Tensor
    memory_budget: int | None = None
    progress: Callable[[int], None] | None = None
    validation: tuple[Tensor, Tensor] | None = None  # early stopping's validation set, if training uses one

    @property
    def n(self) -> int:
        return int(self.x_train.shape[0])


@dataclass
class GroundTruth:
    """per_repeat [R, T, K]; members [K, n] marks the training points item k removes (None: item k is
    training point k)."""

    per_repeat: Tensor
    members: Tensor | None = None
    dropped: int = 0  # items whose measurement was not finite and were dropped (lds, nan: drop)
    # converged solvers: per model (item position, -1 for the control), final gradient norm, iterations
    solver: tuple[list[int], list[float], list[int]] | None = None
    # decomposition: other responses to the same removals, [T, K] each (converged_loo, pbrf)
    responses: dict[str, Tensor] | None = None

    @property
    def actual(self) -> Tensor:
        """[T, K]: the mean over repeats."""
        return self.per_repeat.mean(dim=0)


def update_rule(spec: Retraining, training: TrainingSpec, n_train: int = 1) -> UpdateRule:
    """Scratch retraining replays the training rule with its schedule; warm starts use a constant rate."""
    if spec.start_from == "scratch":
        return training_rule(training, n_train)
    return UpdateRule(optimizer=spec.optimizer or training.optimizer, lr=spec.lr or training.lr,
                      weight_decay=training.weight_decay, momentum=training.momentum)


def measure_ensemble(module: nn.Module, params: dict[str, Tensor], x: Tensor, y: Tensor, measure: str) -> Tensor:
    """[M, T] measured quantity of every model at every test point (float64); for ``param_change_norm``,
    [M, 1] distances ||theta_m - theta_0|| from the first model (the control)."""
    if measure == PARAM_CHANGE:
        names = [k for k, _ in module.named_parameters()]  # not the running statistics a state may carry
        flat = torch.cat([params[k].reshape(params[k].shape[0], -1) for k in names], dim=1).to(torch.float64)
        return (flat - flat[0]).norm(dim=1, keepdim=True)
    with torch.no_grad():
        logits = ensemble_logits(module, params, x)
        return MEASURES[measure](logits, y.expand(logits.shape[0], *y.shape)).to(torch.float64)


def chunks(spec: Retraining, p: Problem, items: int) -> list[tuple[int, int]]:
    """[lo, hi) item ranges per ensemble; each ensemble also trains one control model."""
    batch = p.training.batch_size or p.n
    size = spec.batch if isinstance(spec.batch, int) else chunk_size(
        p.module, tuple(p.x_train.shape[1:]), batch, p.x_train.dtype, p.memory_budget)
    per_chunk = max(1, size - 1)
    return [(lo, min(items, lo + per_chunk)) for lo in range(0, max(items, 1), per_chunk)]


def retrain_weighted(spec: Retraining, p: Problem, weights: Tensor, mean_over: str = "all",
                     tolerate_divergence: bool = False) -> Tensor:
    """[R, K, T]: for example weights [K, n] (1 = kept), measure(retrained) - measure(control) per repeat.

    The control (all weights 1) shares start, batch order and dropout masks with the models of its chunk.
    ``mean_over``: "all" averages each model's loss over all n points (a removal is weight 0, n kept);
    "kept" over its kept points (each model trains on a training set of its own). With
    ``tolerate_divergence`` a diverged model's row is NaN instead of failing the chunk.
    """
    rule = update_rule(spec, p.training, p.n)
    steps = spec.retrain_steps(p.training.total_steps(p.n))
    K = weights.shape[0]
    out = torch.zeros(len(p.setup.order_seeds), K, p.x_test.shape[0], dtype=torch.float64)
    for r, seed in enumerate(p.setup.order_seeds):
        start = p.setup.trained if spec.start_from == "optimum" else p.setup.inits[r]
        for lo, hi in chunks(spec, p, K):
            w = torch.cat([torch.ones(1, p.n, dtype=p.x_train.dtype), weights[lo:hi].to(p.x_train.dtype)])
            monitor = (stopping_monitor(p.module, p.training, p.validation, p.n, hi - lo + 1)
                       if spec.start_from == "scratch" else None)  # scratch retraining replays training's stop rule
            with retraining():
                final = train_ensemble(p.module, stack(start, hi - lo + 1), p.x_train, rule, steps,
                                       p.training.batch_size, [seed] * (hi - lo + 1),
                                       weighted_cross_entropy(p.y_train, w, p.training.label_smoothing,
                                                              normalise=mean_over),
                                       on_step=monitor, noise_seed=p.setup.noise_seed(r),
                                       tolerate_divergence=tolerate_divergence)
            if monitor is not None:
                final = monitor.result(final)
            measured = measure_ensemble(p.module, final, p.x_test, p.y_test, spec.measure)
            if tolerate_divergence and not bool(torch.isfinite(measured[0]).all()):
                raise DivergenceError("retraining diverged for the control model (nothing removed); lower the "
                                      f"retraining lr (now {rule.lr:g})")
            out[r, lo:hi] = measured[1:] - measured[0]
            if p.progress is not None:
                p.progress(hi - lo + 1)
    return out


@contextmanager
def retraining() -> Iterator[None]:
    """A divergence inside names the retraining in its message."""
    try:
        yield
    except DivergenceError as exc:
        raise DivergenceError(f"retraining {exc}") from None
