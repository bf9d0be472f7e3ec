"""Leave-one-out ground truth (Koh & Liang 2017; Basu et al. 2021 Sec. 4) on the batched engine.

For removal i and test point t, per repeat r: measure_t(theta_{-i,r}) - measure_t(theta_{control,r}), where
theta_{-i,r} is retrained with w_i = 0 (n unchanged) and the control is the same retraining with every
w_j = 1. ``start: optimum`` warm-starts from the trained parameters with a fresh optimizer state;
``start: scratch`` repeats the original training from the same initialisation and batch order.
"""

from __future__ import annotations

import numpy as np
import torch

from inflang.compiling.cost import default_budget
from inflang.compiling.hashing import derive_seed
from inflang.spec import LooProtocol
from runners.ensemble import Layout, stack
from runners.metrics import MetricRow, gap_rows
from runners.newton import chord_matrix, newton_refit
from runners.objective import FlatModel
from runners.protocols.common import (
    GroundTruth,
    Problem,
    Protocol,
    Rankings,
    Scoring,
    default_tolerance,
    measure_ensemble,
    nudged_copies,
    pointwise,
    pointwise_metrics,
    retrain_weighted,
    solved_ground_truth,
)
from runners.protocols.pbrf import newton_pbrf
from runners.selection import select_removals


def run(spec: LooProtocol, p: Problem, rankings: Rankings, seed: int) -> GroundTruth:
    """Select the removals (per test point) and retrain without each."""
    scores = rankings.get(spec.removals.by) if spec.removals.by else None
    return leave_one_out(spec, p, select_removals(spec.removals, p.n, p.x_test.shape[0], scores, seed))


def metrics(spec: LooProtocol, s: Scoring) -> list[MetricRow]:
    """The agreement metrics; with ``decompose``, also the decomposition's first term (influence - PBRF) and
    the whole gap it splits (influence - retrained), per test point."""
    rows = pointwise_metrics(spec, s)
    if "pbrf" in s.ground_truth.responses:
        actual = s.ground_truth.actual.cpu().numpy()
        evaluated = np.where(np.isnan(actual), np.nan, s.scores)
        rows += gap_rows(evaluated, s.ground_truth.responses["pbrf"].cpu().numpy(), "influence_vs_pbrf")
        rows += gap_rows(evaluated, actual, "influence_vs_retrained")
    return rows


PROTOCOL = Protocol(run=run, metrics=metrics)


def leave_one_out(spec: LooProtocol, p: Problem, removals: list[np.ndarray]) -> GroundTruth:
    items = np.unique(np.concatenate(removals)) if removals else np.array([], dtype=np.int64)
    weights = torch.ones(len(items), p.n)
    weights[torch.arange(len(items)), torch.as_tensor(items, dtype=torch.long)] = 0.0
    if spec.solver == "newton":
        return converged(spec, p, items, removals, weights)
    retrained = retrain_weighted(spec, p, weights)
    result = GroundTruth(per_repeat=pointwise(retrained.effects, items, removals, p.n), probes=retrained.probes,
                         floor=retrained.floor)
    if retrained.gradients is not None:
        start, end = retrained.gradients  # [R, K]
        result.convergence = ([int(i) for _ in range(start.shape[0]) for i in items], start.reshape(-1).tolist(),
                              end.reshape(-1).tolist())
    if spec.decompose:
        loo = converged(spec, p, items, removals, weights)
        result.solver, result.convergence = loo.solver, None  # solver_rows hold the converged refits
        tol = default_tolerance(spec.tol, p.x_train.dtype)
        measured, _ = newton_pbrf(p, items, spec.pbrf_damping, tol, spec.max_iter, spec.measure)
        per_item = (measured[1:] - measured[0]).unsqueeze(0)
        result.responses = {"converged_loo": loo.actual, "pbrf": pointwise(per_item, items, removals, p.n)[0]}
    return result


def converged(spec: LooProtocol, p: Problem, items: np.ndarray, removals: list[np.ndarray],
              weights: torch.Tensor) -> GroundTruth:
    """Every removal (and the control) refitted from the optimum to |grad| <= tol by batched Newton
    (``runners.newton``: the chord is the explicit Hessian, or above DENSE_PARAMETERS the Gauss-Newton matrix)."""
    tol = default_tolerance(spec.tol, p.x_train.dtype)
    smoothing = p.training.label_smoothing
    H0 = chord_matrix(p.module, p.setup.trained, p.x_train, p.y_train, p.training.weight_decay, smoothing)
    P = H0.shape[0]
    budget = p.memory_budget if p.memory_budget is not None else default_budget()
    extra = spec.probes_per_repeat
    all_weights = torch.cat([torch.ones(1 + extra, p.n), weights]).to(p.x_train.dtype)
    theta = FlatModel(p.module, p.setup.trained).theta
    starts = theta.expand(all_weights.shape[0], P).clone()
    if extra:  # resolution probes: the control refitted from a start a rounding unit away (common.perturbed)
        starts[1:1 + extra] = nudged_copies(theta, extra, derive_seed(p.setup.order_seeds[0], "resolution probes"))
    refit = newton_refit(p.module, p.setup.trained, p.x_train, p.y_train, all_weights, p.training.weight_decay,
                         H0, tol, spec.max_iter, spec.damping, hessian_chunk=max(1, budget // (32 * P * P)),
                         smoothing=smoothing, starts=starts)
    params = Layout(stack(p.setup.trained, 1)).views(refit.theta)
    measured = measure_ensemble(p.module, params, p.x_test, p.y_test, spec.measure)
    return solved_ground_truth(p, items, removals, measured, refit, extra)
