"""The quantities behind every number inflang prints: agreement metrics, their item-level bootstrap replicates,
and the reliability of a repeated ground truth with its noise ceiling. numpy and scipy only, so the metrics
task, pooling over seeds and ``inflang compare`` share one implementation; intervals are ``inflang.results.intervals``.

Agreement metrics (per test point, over its items: training points or groups), each vectorised over rows
of [B, K] arrays so that bootstrap replicates are computed at once:
- pearson; spearman (Pearson of average ranks); kendall (tau-b, scipy);
- sign_agreement: the fraction of items with sign(estimate) == sign(actual);
- top_k_overlap: |top-k by |estimate| & top-k by |actual|| / k, k = min(top_k, K) (positions, stable order).
Every metric is NaN with fewer than 3 items; the correlations also when one side is constant.

Item-level bootstrap (Efron & Tibshirani 1993): per test point, B replicates of its metric over its items
drawn with replacement, seeded by (cell seed, test point), so two cells that share a split and a test point
draw the same items. They give each test point's item-level variance (the noise in ``between_test_points``);
the intervals of means come from the top level of the data (``inflang.results.intervals``).
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

REPLICATES = 1000  # default bootstrap replicates
MAX_SPLITS = 50  # split-halves averaged for the reliability (all of them when there are fewer)


def scipy_stats() -> Any:
    """scipy.stats, imported when an interval or rank is first computed (here and in ``inflang.results.intervals``):
    commands that compute none (ls, query, validate, plan) start without it."""
    from scipy import stats

    return stats


def scipy_special() -> Any:
    """scipy.special (a fraction of scipy.stats' import time; README, "Speed of the ground truth"): Student's t
    quantiles and tail areas."""
    from scipy import special

    return special


# --- agreement metrics over rows ---------------------------------------------------------------------

def _pearson_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    x = x - x.mean(axis=-1, keepdims=True)
    y = y - y.mean(axis=-1, keepdims=True)
    sxx, syy = (x * x).sum(axis=-1), (y * y).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (x * y).sum(axis=-1) / np.sqrt(sxx * syy)
    constant = (np.ptp(x, axis=-1) == 0) | (np.ptp(y, axis=-1) == 0)
    return np.where(constant, np.nan, np.clip(r, -1.0, 1.0))


def average_ranks(v: np.ndarray) -> np.ndarray:
    """Ranks 1..K along the last axis, tied values sharing the mean of their ranks (scipy.stats.rankdata's
    'average', exactly: the ranks are half-integers); a row that holds NaN is NaN throughout. NumPy alone, so a
    small study does not wait for scipy.stats' import."""
    v = np.asarray(v, dtype=np.float64)
    K = v.shape[-1]
    if v.size == 0:
        return v.copy()
    flat = v.reshape(-1, K)
    order = np.argsort(flat, axis=1, kind="stable")
    ordered = np.take_along_axis(flat, order, axis=1)
    position = np.broadcast_to(np.arange(K), ordered.shape)
    starts = np.ones(ordered.shape, dtype=bool)
    starts[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    ends = np.ones(ordered.shape, dtype=bool)
    ends[:, :-1] = starts[:, 1:]
    first = np.maximum.accumulate(np.where(starts, position, 0), axis=1)
    last = np.minimum.accumulate(np.where(ends, position, K)[:, ::-1], axis=1)[:, ::-1]
    ranks = np.empty_like(flat)
    np.put_along_axis(ranks, order, (first + last) / 2 + 1, axis=1)
    ranks[np.isnan(flat).any(axis=1)] = np.nan
    return ranks.reshape(v.shape)


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
        return _pearson_rows(average_ranks(est), average_ranks(act))
    if name == "kendall":
        flat_e, flat_a = est.reshape(-1, K), act.reshape(-1, K)
        out = np.empty(flat_e.shape[0])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for b in range(flat_e.shape[0]):
                e, a = flat_e[b], flat_a[b]
                out[b] = np.nan if np.ptp(e) == 0 or np.ptp(a) == 0 else scipy_stats().kendalltau(e, a).statistic
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
