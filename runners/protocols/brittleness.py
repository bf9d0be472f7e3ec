"""Brittleness (Ilyas, Park, Engstrom, Leclerc & Madry 2022; Yang, Jain & Wallace 2023): how many training
points must be removed to flip a test prediction?

For each test point and each ranking (an estimator's scores, and a random order as the baseline), the
training points are taken in the order that supports the test point's current prediction most: by
estimate, descending, for a correctly classified point (removing it raises the test loss, pushing the point
toward misclassification) and ascending for a misclassified one. For every k of the grid ``k`` the model is
retrained without the first k points (all of a test point's k values and rankings in one ensemble, with
the control), and the point *flips* when the sign of its margin (true-class logit minus the largest other
logit: correct versus misclassified) after retraining differs from the control's. The brittleness of the
point under a ranking is the smallest k of the grid that flips it; none within ``max(k)`` counts as not
flipped.

Per estimator the metrics are ``flip_k`` (per test point, NaN when not flipped), ``flip_k_capped`` (the same,
with a not-flipped point counted as 2 max(k), for means and comparisons that keep every point), ``flipped``
(0 or 1, with its mean ``flip_rate`` over test points) and ``median_flip_k`` (not-flipped points count as
larger than every k; NaN when at least half did not flip); the random baseline's are the same names with
``random_`` in front, estimator NULL. A test point whose control model (the retraining with nothing
removed) predicts otherwise than the trained model, which chose the order, is undecided: NaN throughout.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from inflang.results import intervals, stats
from inflang.spec import BrittlenessProtocol
from runners.ensemble import stack
from runners.errors import TaskFailure
from runners.metrics import MetricRow
from runners.protocols.common import (
    GroundTruth,
    Problem,
    Protocol,
    Rankings,
    Scoring,
    measure_ensemble,
    retrain_weighted,
)

BASELINE = "random"


def support_order(scores: np.ndarray, correct: bool) -> np.ndarray:
    """Training points from most to least supporting the current prediction (stable for ties)."""
    return np.argsort(-scores if correct else scores, kind="stable")


def first_flip(flipped: np.ndarray, grid: list[int]) -> float:
    """The smallest k of the grid whose retrained model flipped, NaN if none."""
    hits = [k for k, f in zip(grid, flipped, strict=True) if f]
    return float(min(hits)) if hits else math.nan


def median_flip(ks: np.ndarray) -> float:
    """Median of per-point k, not-flipped (NaN) points counted as larger than any k; NaN if they are the
    majority."""
    if len(ks) == 0:
        return math.nan
    filled = np.where(np.isnan(ks), np.inf, ks)
    median = float(np.median(filled))
    return median if math.isfinite(median) else math.nan


def run(spec: BrittlenessProtocol, p: Problem, rankings: Rankings, seed: int) -> GroundTruth:
    labels = [label for label in spec.ranking_order(tuple(rankings)) if label in rankings]
    grid = sorted(set(spec.k))
    if max(grid) > p.n:
        raise TaskFailure(f"brittleness: k = {max(grid)} is more than the {p.n} training points")
    T = p.x_test.shape[0]
    margins = measure_ensemble(p.module, stack(p.setup.trained, 1), p.x_test, p.y_test, "margin")[0]
    rng = np.random.default_rng(seed)
    sources: list[np.ndarray] = [rankings[label].cpu().numpy() for label in labels]
    orders = []  # per test point, per source: the removal order
    for t in range(T):
        correct = bool(margins[t] > 0)
        per_source = [support_order(s[t], correct) for s in sources]
        if spec.random:
            per_source.append(rng.permutation(p.n))
        orders.append(per_source)
    S = len(orders[0]) if orders else 0
    weights = torch.ones(T * S * len(grid), p.n, dtype=torch.float64)
    owner = []  # test point of each item
    for t in range(T):
        for s in range(S):
            for g, k in enumerate(grid):
                row = (t * S + s) * len(grid) + g
                weights[row, torch.as_tensor(orders[t][s][:k], dtype=torch.long)] = 0.0
                owner.append(t)
    retrained = retrain_weighted(spec.model_copy(update={"measure": "margin"}), p, weights)
    effects = retrained.effects  # [R, K, T]
    R = effects.shape[0]
    per_repeat = torch.full((R, T, weights.shape[0]), float("nan"), dtype=torch.float64)
    items = torch.arange(weights.shape[0])
    tests = torch.as_tensor(owner, dtype=torch.long)
    per_repeat[:, tests, items] = effects[:, items, tests]
    control = retrained.control.mean(dim=0).cpu().numpy()  # [T] margins of the control models
    after = control[tests.numpy()] + per_repeat.mean(dim=0)[tests, items].cpu().numpy()
    flips = np.sign(after) != np.sign(control[tests.numpy()])
    # the removal order followed the trained model's prediction; where the control's differs (scratch
    # retraining near the boundary), what "supporting the prediction" meant is lost: the point is undecided
    decided = np.sign(control) == np.sign(margins.cpu().numpy())
    flip_k = np.full((S, T), np.nan)
    for t in range(T):
        for s in range(S):
            rows = [(t * S + s) * len(grid) + g for g in range(len(grid))]
            flip_k[s, t] = first_flip(flips[rows], grid)
    baseline = flip_rows(flip_k[-1], decided, max(grid), stats.REPLICATES, BASELINE + "_") if spec.random else []
    return GroundTruth(per_repeat=per_repeat, members=weights == 0, probes=retrained.probes, floor=retrained.floor,
                       extra={"flip_k": torch.as_tensor(flip_k), "decided": torch.as_tensor(decided)},
                       metric_rows=baseline)


def flip_rows(ks: np.ndarray, decided: np.ndarray, max_k: int, replicates: int, prefix: str = "") -> list[MetricRow]:
    """Per test point flip_k (NaN when not flipped), flip_k_capped (not flipped counts as 2 max(k), so means
    and comparisons keep every point) and flipped (0 or 1); over them flip_rate and median_flip_k (see the
    module doc). Undecided points (``decided`` False) are NaN throughout. flip_k_capped and flipped carry
    constant replicates (there are no items to resample); pooling and claims take their intervals over seeds
    (or test points with one seed), flipped's never narrower than the exact binomial one; flip_rate's
    interval is the exact (Clopper-Pearson) interval of its count."""
    ks = np.where(decided, ks, np.nan)
    flipped = np.where(decided, (~np.isnan(ks)).astype(float), np.nan)
    capped = np.where(decided, np.where(np.isnan(ks), 2.0 * max_k, ks), np.nan)

    def constant(value: float) -> np.ndarray | None:
        return np.full(replicates, value) if replicates else None

    rows = [MetricRow(t, f"{prefix}flip_k", float(k), 1) for t, k in enumerate(ks)]
    rows += [MetricRow(t, f"{prefix}flip_k_capped", float(k), 1, replicates=constant(float(k)))
             for t, k in enumerate(capped)]
    rows += [MetricRow(t, f"{prefix}flipped", float(f), 1, replicates=constant(float(f)))
             for t, f in enumerate(flipped)]
    kept = flipped[np.isfinite(flipped)]
    rate = float(kept.mean()) if len(kept) else math.nan
    exact = intervals.clopper_pearson(int(kept.sum()), len(kept)) if len(kept) else None
    rows.append(MetricRow(None, f"{prefix}flip_rate", rate, len(kept), exact.low if exact else None,
                          exact.high if exact else None))
    rows.append(MetricRow(None, f"{prefix}median_flip_k", median_flip(ks[np.asarray(decided, dtype=bool)]),
                          len(kept)))
    return rows


def metrics(spec: BrittlenessProtocol, s: Scoring) -> list[MetricRow]:
    """One estimator's brittleness rows: its row of the ground truth's flip_k (by its ranking's place)."""
    if s.ranking is None:  # an estimator the study did not ask brittleness to follow (``by``) has no rows
        return []
    extra = s.ground_truth.extra
    return flip_rows(extra["flip_k"].cpu().numpy()[s.ranking], extra["decided"].cpu().numpy().astype(bool),
                     max(spec.k), s.bootstrap)


PROTOCOL = Protocol(run=run, metrics=metrics)
