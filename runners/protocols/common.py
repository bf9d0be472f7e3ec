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
from typing import Any

import numpy as np
import torch
from scipy.special import stdtrit
from torch import Tensor, nn

from inflang.compiling.cost import chunk_bounds
from inflang.compiling.hashing import derive_seed
from inflang.spec import TrainingSpec
from inflang.spec.protocols import Retraining
from runners.ensemble import (
    UpdateRule,
    chunk_size,
    stack,
    train_ensemble,
    weighted_cross_entropy,
)
from runners.errors import DivergenceError
from runners.forward import ensemble_logits
from runners.metrics import MetricRow, score
from runners.newton import Refit
from runners.objective import MEASURES, PARAM_CHANGE
from runners.outputs import MeasuredEffects
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
    probes: Tensor | None = None  # [R, P, T] resolution probes (see ``retrain_weighted``)
    floor: Tensor | None = None  # [T] the measured quantity's rounding unit (``rounding_floor``)
    dropped: int = 0  # items whose measurement was not finite and were dropped (lds, nan: drop)
    # converged solvers: per model (item position, -1 for the control), final gradient norm, iterations, whether
    # it reached its tolerance, its starting gradient norm and its tolerance
    solver: tuple[list[int], list[float], list[int], list[bool], list[float], list[float]] | None = None
    # warm-start gradient retraining: per model (training point position), gradient norm of its objective at the
    # start and at the end
    convergence: tuple[list[int], list[float], list[float]] | None = None
    # decomposition: other responses to the same removals, [T, K] each (converged_loo, pbrf)
    responses: dict[str, Tensor] | None = None
    extra: dict[str, Tensor] | None = None  # protocol-specific arrays, saved with the artifact (brittleness: flip_k)
    metric_rows: list[MetricRow] | None = None  # protocol-specific ground-truth rows (estimator NULL)

    @property
    def actual(self) -> Tensor:
        """[T, K]: the mean over repeats."""
        return self.per_repeat.mean(dim=0)

    @property
    def resolution(self) -> Tensor | None:
        """[T]: see ``resolution``; None when no probes were trained."""
        if self.probes is None or self.probes.shape[1] == 0 or self.floor is None:
            return None
        return resolution(self.probes, self.per_repeat.shape[0], self.floor)


def update_rule(spec: Retraining, training: TrainingSpec, n_train: int = 1) -> UpdateRule:
    """Scratch retraining replays the training rule with its schedule; warm starts use a constant rate and
    ``Retraining.warm_rule``'s optimizer and momentum."""
    if spec.start_from == "scratch":
        return training_rule(training, n_train)
    optimizer, momentum = spec.warm_rule(training.optimizer, training.momentum)
    return UpdateRule(optimizer=optimizer, lr=spec.lr or training.lr, weight_decay=training.weight_decay,
                      momentum=momentum)


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


def chunks(spec: Retraining, p: Problem, items: int) -> list[tuple[int, int, int]]:
    """(lo, hi, probes) per ensemble of one repeat: items [lo, hi) beside one control model and ``probes``
    resolution probes (``inflang.compiling.cost.chunk_bounds``, which the plan counts with)."""
    batch = p.training.batch_size or p.n
    size = spec.batch if isinstance(spec.batch, int) else chunk_size(
        p.module, tuple(p.x_train.shape[1:]), batch, p.x_train.dtype, p.memory_budget)
    return chunk_bounds(items, size, spec.probes_per_repeat)


def nudged(v: Tensor, z: Tensor) -> Tensor:
    """v moved by at least one rounding unit of its dtype: v + eps s (z + sign z), with s = max(|v|, the
    tensor's mean |v|) (1 where the whole tensor is 0), so zeros move too and nothing rounds back."""
    eps = torch.finfo(v.dtype).eps
    wide = v.to(torch.float64)
    scale = wide.abs().mean()
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    step = eps * torch.maximum(wide.abs(), scale) * (z.to(torch.float64) + torch.sign(z.to(torch.float64)))
    return (wide + step).to(v.dtype)


def perturbed(start: dict[str, Tensor], names: list[str], probes: int, seed: int) -> dict[str, Tensor]:
    """``probes`` copies of a start [probes, ...] with every parameter in ``names`` moved by about one rounding
    unit (``nudged``, z ~ N(0, 1) drawn on the CPU from ``seed``; running statistics are kept as they are)."""
    generator = torch.Generator().manual_seed(seed)
    out = stack(start, probes)
    for k in names:
        v = out[k]
        z = torch.randn(v.shape, generator=generator, dtype=torch.float64, device="cpu").to(device=v.device)
        out[k] = nudged(v, z)
    return out


def nudged_copies(theta: Tensor, probes: int, seed: int) -> Tensor:
    """``probes`` copies [probes, P] of flat parameters theta [P], each moved by about one rounding unit
    (``nudged``, z ~ N(0, 1) drawn on the CPU from ``seed``): the starts of a converged solver's resolution
    probes."""
    z = torch.randn(probes, theta.numel(), generator=torch.Generator().manual_seed(seed), dtype=torch.float64,
                    device="cpu").to(device=theta.device, dtype=theta.dtype)
    return nudged(theta.expand(probes, theta.numel()), z)


@dataclass
class Retrained:
    """effects [R, K, T]: measure(retrained) - measure(control) per repeat; probes [R, P, T]: the same for
    the resolution probes, controls that start from a start perturbed at rounding level."""

    effects: Tensor
    probes: Tensor
    floor: Tensor  # [T] the rounding unit of the measured quantity itself (see ``rounding_floor``)
    control: Tensor  # [R, T] the measured quantity of each repeat's control
    # warm-start full-batch retraining: ||grad|| of each removal's objective at the start and end, [R, K] each
    gradients: tuple[Tensor, Tensor] | None = None


def rounding_floor(control: Tensor, dtype: torch.dtype) -> Tensor:
    """[T] from control measurements [R, T]: eps(dtype) |measure(control)| averaged over repeats, the smallest
    change the measured quantity can show at all in the training dtype."""
    return torch.finfo(dtype).eps * control.abs().mean(dim=0)


def retrain_weighted(spec: Retraining, p: Problem, weights: Tensor, mean_over: str = "all",
                     tolerate_divergence: bool = False) -> Retrained:
    """Retrain with example weights [K, n] (1 = kept), every repeat; returns effects and resolution probes.

    The control (all weights 1) shares start, batch order and dropout masks with the models of its chunk;
    the first chunk of each repeat also carries the resolution probes (``perturbed``), which measure how far
    rounding-level changes of the start move the measured quantity: the ground truth's own noise.
    ``mean_over``: "all" averages each model's loss over all n points (a removal is weight 0, n kept);
    "kept" over its kept points (each model trains on a training set of its own). With
    ``tolerate_divergence`` a diverged model's row is NaN instead of failing the chunk.
    """
    rule = update_rule(spec, p.training, p.n)
    steps = spec.retrain_steps(p.training.total_steps(p.n))
    K = weights.shape[0]
    R, T = len(p.setup.order_seeds), p.x_test.shape[0]
    out = torch.zeros(R, K, T, dtype=torch.float64)
    probes = torch.zeros(R, spec.probes_per_repeat, T, dtype=torch.float64)
    control = torch.zeros(R, T, dtype=torch.float64)
    norms = torch.full((2, R, K), float("nan"), dtype=torch.float64)
    names = [k for k, _ in p.module.named_parameters()]
    for r, seed in enumerate(p.setup.order_seeds):
        start = p.setup.trained if spec.start_from == "optimum" else p.setup.inits[r]
        shifted = (perturbed(start, names, spec.probes_per_repeat, derive_seed(seed, "resolution probes"))
                   if spec.probes_per_repeat else {})
        done = 0  # probes trained so far in this repeat (they may span several ensembles)
        for lo, hi, extra in chunks(spec, p, K):
            count = 1 + extra + hi - lo
            w = torch.cat([torch.ones(1 + extra, p.n, dtype=p.x_train.dtype), weights[lo:hi].to(p.x_train.dtype)])
            starts = stack(start, count)
            if extra:
                for k in names:
                    starts[k][1:1 + extra] = shifted[k][done:done + extra]
            monitor = (stopping_monitor(p.module, p.training, p.validation, p.n, count)
                       if spec.start_from == "scratch" else None)  # scratch retraining replays training's stop rule
            measured_norms: list[tuple[Tensor, Tensor]] | None = [] if spec.start_from == "optimum" else None
            with retraining():
                final = train_ensemble(p.module, starts, p.x_train, rule, steps, p.training.batch_size,
                                       [seed] * count,
                                       weighted_cross_entropy(p.y_train, w, p.training.label_smoothing,
                                                              normalise=mean_over),
                                       on_step=monitor, noise_seed=p.setup.noise_seed(r),
                                       tolerate_divergence=tolerate_divergence, gradient_norms=measured_norms)
            for which, values in enumerate(measured_norms[0] if measured_norms else ()):
                norms[which, r, lo:hi] = values[1 + extra:].to(torch.float64)
            if monitor is not None:
                final = monitor.result(final)
            measured = measure_ensemble(p.module, final, p.x_test, p.y_test, spec.measure)
            if tolerate_divergence and not bool(torch.isfinite(measured[:1 + extra]).all()):
                raise DivergenceError("retraining diverged for the control model (nothing removed); lower the "
                                      f"retraining lr (now {rule.lr:g})")
            probes[r, done:done + extra] = measured[1:1 + extra] - measured[0]
            done += extra
            out[r, lo:hi] = measured[1 + extra:] - measured[0]
            control[r] = measured[0]
            if p.progress is not None:
                p.progress(count)
    return Retrained(out, probes, rounding_floor(control, p.x_train.dtype), control,
                     (norms[0], norms[1]) if bool(torch.isfinite(norms).any()) else None)


def resolution(probes: Tensor, repeats: int, floor: Tensor) -> Tensor:
    """[T] the ground truth's resolution per test point, in the measured quantity's units:
    t(0.975, P R) rms / sqrt(R), the root mean square of the P R probes' deviations from their control
    scaled by the Student t quantile for that many draws (the 95% two-sided bound of the noise when it is
    normal), and divided by sqrt(repeats) since ``actual`` is the mean over repeats; at least ``floor`` (the
    measured quantity's own rounding unit). An |actual| below it cannot be told apart from the noise that
    rounding-level changes of the start make."""
    draws = probes.shape[0] * probes.shape[1]
    quantile = float(stdtrit(draws, 0.975))  # Student's t quantile, as scipy.stats.t.ppf computes it
    return torch.maximum(quantile * probes.pow(2).mean(dim=(0, 1)).sqrt() / repeats**0.5, floor)


@contextmanager
def retraining() -> Iterator[None]:
    """A divergence inside names the retraining in its message."""
    try:
        yield
    except DivergenceError as exc:
        raise DivergenceError(f"retraining {exc}") from None


@dataclass(frozen=True)
class Scoring:
    """What the metrics task hands a protocol: one estimator's scores [T, n] (per training point), the
    ground truth's saved arrays, the ``metrics:`` section, the cell's seed and the test points' row ids."""

    scores: np.ndarray
    ground_truth: MeasuredEffects
    names: list[str]
    top_k: int
    bootstrap: int
    resolved_only: bool
    seed: int
    test_ids: list[int]
    ranking: int | None = None  # the place of this estimator among the rankings the ground truth followed

    def actual(self) -> np.ndarray:
        """[T, K] measured effects, with the unresolved ones left out under ``resolved_only``."""
        actual = self.ground_truth.actual.cpu().numpy()
        if self.resolved_only and self.ground_truth.resolution is not None:
            kept = np.abs(actual) >= self.ground_truth.resolution.cpu().numpy()[:, None]
            actual = np.where(kept, actual, np.nan)
        return actual


def agreement(item_scores: np.ndarray, s: Scoring) -> list[MetricRow]:
    """The study's agreement metrics between estimated [T, K] and measured effects of the same items."""
    return score(item_scores, s.actual(), s.names, s.top_k, s.bootstrap, s.seed, s.test_ids)


def pointwise_metrics(spec: Retraining, s: Scoring) -> list[MetricRow]:
    """Items are training points: the estimate of an item is the point's score."""
    return agreement(s.scores, s)


def grouped_metrics(spec: Retraining, s: Scoring) -> list[MetricRow]:
    """Items are groups (``members`` [K, n]): the estimate of a group is the sum of its members' scores."""
    assert s.ground_truth.members is not None, "grouped protocols store their members"
    scores = torch.from_numpy(s.scores)
    return agreement((scores @ s.ground_truth.members.cpu().to(scores.dtype).T).numpy(), s)


Rankings = dict[str, Tensor]  # estimator label -> scores [T, n]


@dataclass(frozen=True)
class Protocol:
    """What the runner side asks of a ground-truth protocol: ``run`` measures the actual effects (from the
    spec, the trained problem, the rankings it follows and a seed) and ``metrics`` scores one estimator
    against them. Every protocol module exposes one, registered in ``runners.protocols.PROTOCOLS``."""

    run: Callable[[Any, Problem, Rankings, int], GroundTruth]
    metrics: Callable[[Any, Scoring], list[MetricRow]] = pointwise_metrics


def pointwise(per_item: torch.Tensor, items: np.ndarray, removals: list[np.ndarray], n: int) -> torch.Tensor:
    """[R, T, n] from per-item results [R, K, T] (item k removes point items[k]); NaN where not selected."""
    R, _, T = per_item.shape
    out = torch.full((R, T, n), float("nan"), dtype=torch.float64)
    column = {int(i): k for k, i in enumerate(items)}
    for t, rows in enumerate(removals):
        ks = torch.as_tensor([column[int(i)] for i in rows], dtype=torch.long)
        out[:, t, torch.as_tensor(rows, dtype=torch.long)] = per_item[:, ks, t]
    return out


def default_tolerance(tol: float | None, dtype: torch.dtype) -> float:
    """A converged solver's gradient-norm tolerance: as given, else 1e-10 in float64 and 1e-5 in float32."""
    return tol if tol is not None else (1e-10 if dtype == torch.float64 else 1e-5)


def solved_ground_truth(p: Problem, items: np.ndarray, removals: list[np.ndarray], measured: Tensor, refit: Refit,
                        probes: int) -> GroundTruth:
    """The ground truth of refits solved to convergence, from their measurements [1 + probes + K, T] in the
    order control, resolution probes, removals (items), and the refits (each one's final gradient norm,
    iterations and whether it reached its own tolerance); the refits view lists the control and the removals."""
    if p.progress is not None:
        p.progress(len(items) + 1 + probes)
    per_item = (measured[1 + probes:] - measured[0]).unsqueeze(0)  # [1, K, T]
    keep = [0, *range(1 + probes, measured.shape[0])]
    solver = ([-1] + [int(i) for i in items], refit.grad_norm[keep].tolist(), refit.iterations[keep].tolist(),
              refit.converged()[keep].tolist(), refit.start_grad_norm[keep].tolist(), refit.tolerance[keep].tolist())
    return GroundTruth(per_repeat=pointwise(per_item, items, removals, p.n), solver=solver,
                       probes=(measured[1:1 + probes] - measured[0]).unsqueeze(0),
                       floor=rounding_floor(measured[:1], p.x_train.dtype))
