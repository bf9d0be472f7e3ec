"""The proximal Bregman response function (Bae, Ng, Lo, Ghassemi & Grosse 2022, "If influence functions
are the answer, then what is the question?"), batched over removals on the retraining engine.

From the trained parameters theta_s, model m (removing training point z_m) minimises

    (1/N) sum_i D(h(theta, x_i), h(theta_s, x_i)) - (1/N) loss(z_m, theta)
        + ((weight_decay + damping)/2) ||theta - theta_s||^2,

with h the logits and D the Bregman divergence of the cross-entropy in logit space,
D(z, z_s) = logsumexp(z) - logsumexp(z_s) - softmax(z_s) . (z - z_s) (independent of the label); for
regression targets, the squared error's (1/2) ||z - z_s||^2.
The regulariser enters through its own Bregman divergence, (weight_decay/2)||theta - theta_s||^2, so that
theta_s is a stationary point with nothing removed. The first-order response is
theta - theta_s = (1/N) (G + (weight_decay + damping) I)^-1 g_m, G the Gauss-Newton matrix of the data term:
exact influence with ``curvature: ggn`` and the same damping. actual = measure(theta) - measure(theta_s),
minibatches (if any) applying to the Bregman term; the removed point's term is evaluated every step.

``solver: newton`` solves each objective to |grad| <= tol instead (``runners.newton``), with the chord matrix
G + (weight_decay + damping) I: the objective's exact Hessian at theta_s but for the removed point's own term, so
the chord converges in a few iterations where that term is small; refits that do not converge in ``max_iter``
are kept and reported per removal.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from inflang.compiling.hashing import derive_seed
from inflang.spec import PbrfProtocol
from runners.curvature import objective_ggn
from runners.ensemble import Batch, DataTerm, Layout, Stacked, stack, train_ensemble
from runners.forward import ensemble_logits
from runners.newton import ProximalBregman, Refit, newton_solve
from runners.objective import FlatModel, bregman, per_example_loss
from runners.protocols.common import (
    GroundTruth,
    Problem,
    Protocol,
    Rankings,
    chunks,
    default_tolerance,
    measure_ensemble,
    nudged_copies,
    perturbed,
    pointwise,
    retraining,
    rounding_floor,
    solved_ground_truth,
    update_rule,
)
from runners.selection import select_removals


def pbrf_term(p: Problem, z_s: Tensor, removed: Tensor, active: Tensor) -> DataTerm:
    """The data part of the PBRF objective for models whose removed point is ``removed`` [M] (active [M]
    is 0 for the control)."""
    x_removed = p.x_train[removed].unsqueeze(1)  # [M, 1, d]
    y_removed = p.y_train[removed].unsqueeze(1)
    N = p.n
    count = removed.shape[0]

    def term(logits: Tensor, batch: Batch, params: Stacked) -> Tensor:
        if batch is None:
            anchor, denom = z_s.expand(count, -1, -1), N
        elif batch.dim() == 1:
            anchor, denom = z_s[batch].expand(count, -1, -1), len(batch)
        else:
            anchor, denom = z_s[batch], batch.shape[1]
        divergence = bregman(logits, anchor, p.y_train.is_floating_point()).sum(1) / denom
        own = per_example_loss(ensemble_logits(p.module, params, x_removed, per_model=True), y_removed,
                               p.training.label_smoothing)[:, 0]
        return divergence - active * own / N

    return term


def run(spec: PbrfProtocol, p: Problem, rankings: Rankings, seed: int) -> GroundTruth:
    scores = rankings.get(spec.removals.by) if spec.removals.by else None
    return proximal_bregman(spec, p, select_removals(spec.removals, p.n, p.x_test.shape[0], scores, seed))


def newton_pbrf(p: Problem, items: np.ndarray, damping: float, tol: float, max_iter: int, measure: str,
                probes: int = 0, strict: bool = True, ggn: Tensor | None = None,
                rtol: float | None = None) -> tuple[Tensor, Refit]:
    """The PBRF of every removal in ``items``, after the control and ``probes`` controls started a rounding unit
    away (common.nudged), solved from theta_s to |grad| <= tol by ``newton_solve`` with the chord matrix
    G + (weight_decay + damping) I: (measured [1 + probes + K, T], the refits). ``strict``: a refit that has not
    converged in ``max_iter`` iterations fails the task (else it is returned as it stands). ``ggn``: the
    Gauss-Newton matrix at theta_s (weight decay included) where the caller has it. ``rtol``: each refit's
    tolerance is rtol times its starting gradient norm, not below ``tol``."""
    flat = FlatModel(p.module, p.setup.trained)
    count = 1 + probes + len(items)
    removed = torch.as_tensor(np.concatenate([[0] * (1 + probes), items]), dtype=torch.long)
    active = torch.ones(count, dtype=p.x_train.dtype)
    active[:1 + probes] = 0.0  # nothing removed: their optimum is theta_s
    objective = ProximalBregman(flat, p.x_train, p.y_train, removed, active, p.training.weight_decay + damping,
                                p.training.label_smoothing)
    chord = objective_ggn(p.module, p.setup.trained, p.x_train, p.y_train, p.training.weight_decay) if ggn is None \
        else ggn.clone()
    chord.diagonal().add_(damping)
    P = flat.theta.numel()
    starts = flat.theta.expand(count, P).clone()
    if probes:
        starts[1:1 + probes] = nudged_copies(flat.theta, probes, derive_seed(p.setup.order_seeds[0],
                                                                             "resolution probes"))
    solved = newton_solve(objective, starts, count, chord, tol, max_iter, 0.0, strict=strict, rtol=rtol)
    params = Layout(stack(p.setup.trained, 1)).views(solved.theta)
    return measure_ensemble(p.module, params, p.x_test, p.y_test, measure), solved


def _newton(spec: PbrfProtocol, p: Problem, items: np.ndarray, removals: list[np.ndarray]) -> GroundTruth:
    if spec.rtol is None:
        tol = default_tolerance(spec.tol, p.x_train.dtype)
    else:  # a floor under the relative tolerances: about the rounding of a gradient
        tol = spec.tol if spec.tol is not None else (1e-15 if p.x_train.dtype == torch.float64 else 1e-7)
    extra = spec.probes_per_repeat
    measured, refit = newton_pbrf(p, items, spec.damping, tol, spec.max_iter, spec.measure, extra, strict=False,
                                  rtol=spec.rtol)
    return solved_ground_truth(p, items, removals, measured, refit, extra)


def proximal_bregman(spec: PbrfProtocol, p: Problem, removals: list[np.ndarray]) -> GroundTruth:
    items = np.unique(np.concatenate(removals)) if removals else np.array([], dtype=np.int64)
    if spec.solver == "newton":
        return _newton(spec, p, items, removals)
    rule = update_rule(spec, p.training)
    rule = type(rule)(optimizer=rule.optimizer, lr=rule.lr, weight_decay=0.0, momentum=rule.momentum)
    steps = spec.retrain_steps(p.training.total_steps(p.n))
    theta_s = p.setup.trained
    with torch.no_grad():
        z_s = ensemble_logits(p.module, stack(theta_s, 1), p.x_train)[0]
    R, T = len(p.setup.order_seeds), p.x_test.shape[0]
    out = torch.zeros(R, len(items), T, dtype=torch.float64)
    probes = torch.zeros(R, spec.probes_per_repeat, T, dtype=torch.float64)
    control = torch.zeros(R, T, dtype=torch.float64)
    proximity = p.training.weight_decay + spec.damping
    names = [k for k, _ in p.module.named_parameters()]
    for r, seed in enumerate(p.setup.order_seeds):
        for lo, hi, extra in chunks(spec, p, len(items)):
            count = 1 + extra + hi - lo
            removed = torch.as_tensor(np.concatenate([[0] * (1 + extra), items[lo:hi]]), dtype=torch.long)
            active = torch.ones(count, dtype=p.x_train.dtype)
            active[:1 + extra] = 0.0  # the control and the probes: nothing removed, so they stay at theta_s
            starts = stack(theta_s, count)
            if extra:  # resolution probes: the control started a rounding unit away (common.perturbed)
                shifted = perturbed(theta_s, names, extra, derive_seed(seed, "resolution probes"))
                for k in names:
                    starts[k][1:1 + extra] = shifted[k]
            with retraining():
                final = train_ensemble(p.module, starts, p.x_train, rule, steps,
                                       p.training.batch_size, [seed] * count, pbrf_term(p, z_s, removed, active),
                                       anchor=stack(theta_s, count), proximity=proximity,
                                       noise_seed=p.setup.noise_seed(r))
            measured = measure_ensemble(p.module, final, p.x_test, p.y_test, spec.measure)
            probes[r, :extra] = measured[1:1 + extra] - measured[0]
            out[r, lo:hi] = measured[1 + extra:] - measured[0]
            control[r] = measured[0]
            if p.progress is not None:
                p.progress(count)
    return GroundTruth(per_repeat=pointwise(out, items, removals, p.n), probes=probes,
                       floor=rounding_floor(control, p.x_train.dtype))


PROTOCOL = Protocol(run=run)
