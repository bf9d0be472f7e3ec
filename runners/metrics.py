"""Agreement between estimated and actual effects per test point, their bootstrap replicates, and the noise
ceiling of a repeated ground truth; the statistics themselves are ``inflang.results.stats``.

Per test point, over the items (training points or groups) with a finite actual value: the metric and B
item-level bootstrap replicates of it (items drawn with replacement, seeded by the cell's seed and the
test point's row id, so every estimator of a cell draws the same items). Only per-test-point rows come from
here: the driver aggregates them over test points and pools them over seeds (``inflang.results.pooling``).

Noise ceiling (repeats R >= 2), per test point over the items finite in every repeat:
``reliability_*`` is the reliability of the R-repeat mean (split-half correlation averaged over the
splits of the repeats into floor(R/2) and ceil(R/2), corrected to R with Spearman-Brown, generalised to
unequal halves) and ``noise_ceiling_* = sqrt(max(reliability, 0))``, the correlation the true effects
have with the repeat mean; the Spearman versions go through the normal-theory relation between Spearman
and Pearson correlations (``inflang.results.stats``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from inflang.compiling.hashing import derive_seed
from inflang.results import stats


@dataclass(frozen=True)
class MetricRow:
    test: int | None  # position of the test point, None for the aggregate
    metric: str
    value: float
    n_pairs: int
    ci_low: float | None = None
    ci_high: float | None = None
    replicates: np.ndarray | None = None  # per test point: item-level bootstrap replicates [B]


def item_seed(cell_seed: int, test_id: int, items: int) -> int:
    """The seed of one test point's item draws: shared by every cell of one seed, so differences pair."""
    return derive_seed(cell_seed, "items", int(test_id), int(items))


def score(estimates: np.ndarray, actual: np.ndarray, names: list[str], top_k: int = 10,
          replicates: int = stats.REPLICATES, seed: int = 0, test_ids: list[int] | None = None) -> list[MetricRow]:
    """Rows per test point (with their item replicates), for [T, K] estimates and actual
    values (NaN = not evaluated). ``seed`` is the cell's seed, ``test_ids`` the test points' row ids."""
    T = estimates.shape[0]
    ids = list(range(T)) if test_ids is None else [int(i) for i in test_ids]
    mask = np.isfinite(actual)
    pairs = [(estimates[t][mask[t]], actual[t][mask[t]]) for t in range(T)]
    draws = [stats.item_draws(len(e), replicates, item_seed(seed, ids[t], len(e))) if replicates else None
             for t, (e, _) in enumerate(pairs)]
    rows: list[MetricRow] = []
    for name in names:
        per_point = []
        for t, (e, a) in enumerate(pairs):
            d = draws[t]
            reps = stats.metric_rows(name, e[d], a[d], top_k) if d is not None and len(e) else None
            per_point.append(MetricRow(t, name, stats.metric(name, e, a, top_k), len(e), replicates=reps))
        rows += per_point
    return rows


def noise_ceiling(per_repeat: np.ndarray, replicates: int = stats.REPLICATES, seed: int = 0,
                  test_ids: list[int] | None = None) -> list[MetricRow]:
    """``reliability_*`` and ``noise_ceiling_*`` (spearman, pearson) per test point, from
    [R, T, K] repeated measurements (R >= 2; nothing for R = 1)."""
    R, T, _ = per_repeat.shape
    if R < 2:
        return []
    ids = list(range(T)) if test_ids is None else [int(i) for i in test_ids]
    splits = stats.split_halves(R, derive_seed(seed, "split halves"))
    rows: list[MetricRow] = []
    for kind in ("spearman", "pearson"):
        reliability: list[MetricRow] = []
        ceilings: list[MetricRow] = []
        for t in range(T):
            ok = np.isfinite(per_repeat[:, t]).all(axis=0)
            y = per_repeat[:, t][:, ok]
            K = int(ok.sum())
            rho = float(stats.reliability_rows(kind, y, splits)) if K >= 3 else float("nan")
            reps = None
            if replicates and K >= 3:
                draws = stats.item_draws(K, replicates, item_seed(seed, ids[t], K))
                reps = stats.reliability_rows(kind, y, splits, draws)
            reliability.append(MetricRow(t, f"reliability_{kind}", rho, K, replicates=reps))
            ceilings.append(MetricRow(t, f"noise_ceiling_{kind}", float(stats.ceiling(kind, np.asarray(rho))), K,
                                      replicates=None if reps is None else stats.ceiling(kind, reps)))
        rows += reliability + ceilings
    return rows


def resolution_rows(actual: np.ndarray, resolution: np.ndarray) -> list[MetricRow]:
    """``resolution`` (the ground truth's resolution, in the measured quantity's units) and
    ``below_resolution`` (the fraction of evaluated items with |actual| below it), per test point, from
    actual [T, K] (NaN = not evaluated) and resolution [T]."""
    rows: list[MetricRow] = []
    below: list[float] = []
    counts: list[int] = []
    for t in range(actual.shape[0]):
        values = actual[t][np.isfinite(actual[t])]
        counts.append(len(values))
        below.append(float(np.mean(np.abs(values) < resolution[t])) if len(values) else float("nan"))
        rows.append(MetricRow(t, "resolution", float(resolution[t]), len(values)))
    rows += [MetricRow(t, "below_resolution", b, c) for t, (b, c) in enumerate(zip(below, counts, strict=True))]
    return rows


def gap_rows(a: np.ndarray, b: np.ndarray, prefix: str) -> list[MetricRow]:
    """How response a [T, K] relates to response b on the pairs both have: {prefix}_spearman, _pearson,
    _mean_gap (mean of a - b: signed, so the terms of a decomposition add up) and _mean_abs_gap."""
    ok = np.isfinite(a) & np.isfinite(b)
    rows: list[MetricRow] = []
    for name in ("spearman", "pearson", "mean_gap", "mean_abs_gap"):
        for t in range(a.shape[0]):
            x, y = a[t][ok[t]], b[t][ok[t]]
            if name == "mean_gap":
                v = float(np.mean(x - y)) if len(x) else float("nan")
            elif name == "mean_abs_gap":
                v = float(np.mean(np.abs(x - y))) if len(x) else float("nan")
            else:
                v = stats.metric(name, x, y)
            rows.append(MetricRow(t, f"{prefix}_{name}", v, int(ok[t].sum())))
    return rows
