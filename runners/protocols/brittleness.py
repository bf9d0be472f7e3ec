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

Per estimator the metrics are ``flip_k`` (per test point, NaN when not flipped), ``flipped`` (0 or 1, with
its mean ``flip_rate`` over test points) and ``median_flip_k`` (not-flipped points count as larger than every
k; NaN when more than half did not flip); the random baseline's are the same names with ``random_`` in
front, estimator NULL.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from inflang import stats
from inflang.hashing import derive_seed
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
    labels = [label for label in spec.ranked_labels(tuple(rankings)) if label in rankings]
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
    flip_k = np.full((S, T), np.nan)
    for t in range(T):
        for s in range(S):
            rows = [(t * S + s) * len(grid) + g for g in range(len(grid))]
            flip_k[s, t] = first_flip(flips[rows], grid)
    baseline = flip_rows(flip_k[-1], stats.REPLICATES, derive_seed(seed, "baseline"), BASELINE + "_") \
        if spec.random else []
    return GroundTruth(per_repeat=per_repeat, members=weights == 0, probes=retrained.probes, floor=retrained.floor,
                       extra={"flip_k": torch.as_tensor(flip_k)}, metric_rows=baseline)


def flip_rows(ks: np.ndarray, replicates: int, seed: int, prefix: str = "") -> list[MetricRow]:
    """flip_k and flipped per test point, flip_rate and median_flip_k over them (see the module doc).
    ``flip_k`` and ``flipped`` carry constant replicates (there are no items to resample), so pooling and
    claims resample their test points and seeds (a not-flipped point's flip_k is NaN and left out of
    means); flip_rate's interval resamples the test points."""
    flipped = (~np.isnan(ks)).astype(float)

    def constant(value: float) -> np.ndarray | None:
        return np.full(replicates, value) if replicates else None

    rows = [MetricRow(t, f"{prefix}flip_k", float(k), 1, replicates=constant(float(k))) for t, k in enumerate(ks)]
    rows += [MetricRow(t, f"{prefix}flipped", float(f), 1, replicates=constant(float(f)))
             for t, f in enumerate(flipped)]
    rate = float(flipped.mean()) if len(ks) else math.nan
    low = high = None
    if replicates and len(ks):
        draws = stats.test_point_replicates(flipped[:, None], replicates, np.random.default_rng(seed))
        interval = stats.percentile_interval(draws)
        if interval is not None:
            low, high = interval.low, interval.high
    rows.append(MetricRow(None, f"{prefix}flip_rate", rate, len(ks), low, high))
    rows.append(MetricRow(None, f"{prefix}median_flip_k", median_flip(ks), len(ks)))
    return rows


def metrics(spec: BrittlenessProtocol, s: Scoring) -> list[MetricRow]:
    """One estimator's brittleness rows: its row of the ground truth's flip_k (by its ranking's place)."""
    if s.ranking is None:
        raise TaskFailure("brittleness: this estimator's ranking was not part of the ground truth")
    return flip_rows(s.ground_truth.extra["flip_k"].cpu().numpy()[s.ranking], s.bootstrap, s.seed)


PROTOCOL = Protocol(run=run, metrics=metrics)
