"""The statistics behind every number inflang prints: agreement metrics, the reliability of a repeated
ground truth and its noise ceiling, and the hierarchical bootstrap. numpy and scipy only, so the
metrics task, pooling over seeds and ``inflang compare`` share one implementation.

Agreement metrics (per test point, over its items: training points or groups), each vectorised over rows
of [B, K] arrays so that bootstrap replicates are computed at once:
- pearson; spearman (Pearson of average ranks); kendall (tau-b, scipy);
- sign_agreement: the fraction of items with sign(estimate) == sign(actual);
- top_k_overlap: |top-k by |estimate| & top-k by |actual|| / k, k = min(top_k, K) (positions, stable order).
Every metric is NaN with fewer than 3 items; the correlations also when one side is constant.

Hierarchical bootstrap (Efron & Tibshirani 1993; Saravanan et al. 2020 for nested data): a replicate
resamples seeds, then test points within each drawn seed, then items within each drawn test point, all
with replacement, and averages the metric over test points and then over seeds. Item draws are seeded by
(cell seed, test point), so two cells that share a split and a test point draw the same items: differences
between estimators, or between settings of one seed, are paired at every level.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

REPLICATES = 1000  # default bootstrap replicates
MAX_SPLITS = 50  # split-halves averaged for the reliability (all of them when there are fewer)


# --- agreement metrics over rows ---------------------------------------------------------------------

def _pearson_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    x = x - x.mean(axis=-1, keepdims=True)
    y = y - y.mean(axis=-1, keepdims=True)
    sxx, syy = (x * x).sum(axis=-1), (y * y).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (x * y).sum(axis=-1) / np.sqrt(sxx * syy)
    constant = (np.ptp(x, axis=-1) == 0) | (np.ptp(y, axis=-1) == 0)
    return np.where(constant, np.nan, np.clip(r, -1.0, 1.0))


def _top_mask(v: np.ndarray, k: int) -> np.ndarray:
    order = np.argsort(-np.abs(v), axis=-1, kind="stable")[..., :k]
    mask = np.zeros(v.shape, dtype=bool)
    np.put_along_axis(mask, order, True, axis=-1)
    return mask


def metric_rows(name: str, est: np.ndarray, act: np.ndarray, top_k: int = 10) -> np.ndarray:
    """The metric ``name`` of every row of est, act [B, K] (or of one pair of [K] vectors): [B] (or a 0-d
    array)."""
    est, act = np.asarray(est, dtype=np.float64), np.asarray(act, dtype=np.float64)
    K = est.shape[-1]
    if K < 3:
        return np.full(est.shape[:-1], np.nan)
    if name == "sign_agreement":
        return (np.sign(est) == np.sign(act)).mean(axis=-1)
    if name == "top_k_overlap":
        k = min(top_k, K)
        return (_top_mask(est, k) & _top_mask(act, k)).sum(axis=-1) / k
    if name == "pearson":
        return _pearson_rows(est, act)
    if name == "spearman":
        return _pearson_rows(sps.rankdata(est, axis=-1), sps.rankdata(act, axis=-1))
    if name == "kendall":
        flat_e, flat_a = est.reshape(-1, K), act.reshape(-1, K)
        out = np.empty(flat_e.shape[0])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for b in range(flat_e.shape[0]):
                e, a = flat_e[b], flat_a[b]
                out[b] = np.nan if np.ptp(e) == 0 or np.ptp(a) == 0 else sps.kendalltau(e, a).statistic
        return out.reshape(est.shape[:-1])
    raise KeyError(name)


def metric(name: str, est: np.ndarray, act: np.ndarray, top_k: int = 10) -> float:
    """The metric of one test point's items."""
    return float(metric_rows(name, est, act, top_k))


def item_draws(items: int, replicates: int, seed: int) -> np.ndarray:
    """[replicates, items] positions drawn with replacement (the item level of the bootstrap)."""
    return np.random.default_rng(seed).integers(0, items, (replicates, items)) if items else \
        np.zeros((replicates, 0), dtype=np.int64)


# --- reliability and noise ceiling ------------------------------------------------------------------

def split_halves(repeats: int, seed: int = 0, limit: int = MAX_SPLITS) -> list[tuple[list[int], list[int]]]:
    """Splits of the repeats into halves of sizes floor(R/2) and ceil(R/2): all distinct ones when there are
    at most ``limit``, else ``limit`` drawn at random (seeded)."""
    a = repeats // 2
    every: list[tuple[list[int], list[int]]] = []
    for first in itertools.combinations(range(repeats), a):
        rest = tuple(i for i in range(repeats) if i not in first)
        if 2 * a == repeats and rest < first:
            continue  # the same split with the halves swapped
        every.append((list(first), list(rest)))
    if len(every) <= limit:
        return every
    rng = np.random.default_rng(seed)
    return [every[i] for i in sorted(rng.choice(len(every), size=limit, replace=False))]


def spearman_brown(r: float | np.ndarray, a: int, b: int) -> np.ndarray:
    """Reliability of the mean of a + b repeats from the correlation r between the means of a and of b.

    Under y_r = t + e_r (t and the e_r independent, var e_r = s^2) and lam = var t / s^2,
    r = lam sqrt(ab) / sqrt((lam a + 1)(lam b + 1)); solving for lam >= 0 and returning
    rho = lam R / (lam R + 1), R = a + b. For a = b this is Spearman-Brown's 2r / (1 + r). A negative r
    (the halves disagree) gives -rho(|r|): negative reliability, ceiling 0.
    """
    r = np.asarray(r, dtype=np.float64)
    sign, m = np.sign(r), np.minimum(np.abs(r), 1.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        m2 = m * m
        lam = (m2 * (a + b) + np.sqrt(m2 * m2 * (a + b) ** 2 + 4 * a * b * (1 - m2) * m2)) / (2 * a * b * (1 - m2))
        rho = np.where(m >= 1.0, 1.0, lam * (a + b) / (lam * (a + b) + 1))
    return sign * rho


def pearson_from_spearman(r_s: np.ndarray) -> np.ndarray:
    """The Pearson correlation of a bivariate normal pair with Spearman correlation r_s: 2 sin(pi r_s / 6)."""
    return 2 * np.sin(np.pi * np.asarray(r_s) / 6)


def spearman_from_pearson(r: np.ndarray) -> np.ndarray:
    """The Spearman correlation of a bivariate normal pair with Pearson correlation r: (6/pi) asin(r / 2)."""
    return 6 / np.pi * np.arcsin(np.asarray(r) / 2)


def reliability_rows(kind: str, per_repeat: np.ndarray, splits: Sequence[tuple[list[int], list[int]]],
                     draws: np.ndarray | None = None) -> np.ndarray:
    """Reliability of the repeat mean from per_repeat [R, K] (one test point's items, all finite):
    the split-half correlation averaged over ``splits`` and corrected to R repeats (``spearman_brown``).
    For ``kind='spearman'`` the averaged Spearman correlation is first converted to the Pearson scale
    (``pearson_from_spearman``). With ``draws`` [B, K] it is computed on every item replicate: [B]."""
    R = per_repeat.shape[0]
    a, b = R // 2, R - R // 2
    rows = per_repeat if draws is None else per_repeat[:, draws]  # [R, K] or [R, B, K]
    name = "spearman" if kind == "spearman" else "pearson"
    r = np.mean([metric_rows(name, rows[first].mean(axis=0), rows[rest].mean(axis=0)) for first, rest in splits],
                axis=0)
    if kind == "spearman":
        r = pearson_from_spearman(r)
    return spearman_brown(r, a, b)


def ceiling(kind: str, reliability: np.ndarray) -> np.ndarray:
    """The noise ceiling: the correlation the true effects have with the repeat mean, sqrt(max(rho, 0));
    for Spearman mapped back with ``spearman_from_pearson``. NaN stays NaN."""
    root = np.sqrt(np.clip(np.asarray(reliability, dtype=np.float64), 0.0, None))
    return spearman_from_pearson(root) if kind == "spearman" else root


# --- hierarchical bootstrap ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Interval:
    low: float
    high: float


def _finite_mean(values: np.ndarray, axis: int) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.nanmean(values, axis=axis)


def percentile_interval(replicates: np.ndarray, level: float = 0.95) -> Interval | None:
    finite = replicates[np.isfinite(replicates)]
    if len(finite) < 2:
        return None
    tail = 100 * (1 - level) / 2
    return Interval(float(np.percentile(finite, tail)), float(np.percentile(finite, 100 - tail)))


def test_point_replicates(replicates: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` replicates of the mean over test points: per replicate, test points drawn with replacement
    (among those with a finite value), each contributing one of its item-level replicates at random.
    ``replicates`` [T, B]; NaN rows are test points where the metric is undefined."""
    usable = np.flatnonzero(np.isfinite(replicates).any(axis=1))
    if len(usable) == 0:
        return np.full(count, np.nan)
    rows = replicates[usable]
    T, B = rows.shape
    pick = rng.integers(0, T, (count, T))
    column = rng.integers(0, B, (count, T))
    return _finite_mean(rows[pick, column], axis=1)


def seed_replicates(per_seed: Sequence[np.ndarray], count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` replicates of the mean over seeds of the mean over test points: seeds drawn with
    replacement, each drawn seed contributing a test-point-level replicate of its own (``per_seed[s]`` is
    seed s's [T_s, B] item-level replicates)."""
    inner = np.stack([test_point_replicates(r, count, rng) for r in per_seed])  # [S, count]
    S = inner.shape[0]
    if S == 1:
        return inner[0]
    pick = rng.integers(0, S, (count, S))
    column = rng.integers(0, count, (count, S))
    return _finite_mean(inner[pick, column], axis=1)


def paired_seed_replicates(left: Sequence[np.ndarray], right: Sequence[np.ndarray],
                           paired_points: Sequence[bool], count: int, rng: np.random.Generator) -> np.ndarray:
    """Replicates of mean(left) - mean(right) over matched seeds (left[s] and right[s] come from the same
    seed). Seeds are drawn once for both sides; within a seed whose test points are the same on both sides
    (``paired_points[s]``) the test points and item replicate columns are drawn once too, so the difference
    is paired at every level (the item draws already are, see the module docstring)."""
    S = len(left)
    inner = np.empty((S, count))
    for s in range(S):
        a, b = left[s], right[s]
        if paired_points[s]:
            both = np.isfinite(a).any(axis=1) & np.isfinite(b).any(axis=1)  # pair only points both sides have
            a, b = a[both], b[both]
            T, B = a.shape
            if T == 0:
                inner[s] = np.nan
                continue
            pick = rng.integers(0, T, (count, T))
            column = rng.integers(0, min(B, b.shape[1]), (count, T))
            inner[s] = _finite_mean(a[pick, column], axis=1) - _finite_mean(b[pick, column], axis=1)
        else:
            inner[s] = test_point_replicates(a, count, rng) - test_point_replicates(b, count, rng)
    if S == 1:
        return inner[0]
    pick = rng.integers(0, S, (count, S))
    column = rng.integers(0, count, (count, S))
    return _finite_mean(inner[pick, column], axis=1)


def mean_over_seeds(per_seed_values: Sequence[np.ndarray]) -> float:
    """The point estimate: the mean over test points within each seed, then over seeds (NaNs skipped)."""
    means = [float(_finite_mean(np.asarray(v, dtype=np.float64), axis=0)) if np.isfinite(v).any() else math.nan
             for v in per_seed_values]
    finite = [m for m in means if math.isfinite(m)]
    return float(np.mean(finite)) if finite else math.nan
