"""Per-test-point metrics, their item-level bootstrap replicates, and the aggregate over test points (the
driver's, ``inflang.results.pooling``) with its interval, against direct numpy and scipy computations."""

from __future__ import annotations

import numpy as np
from scipy import stats as sps

from inflang.results import intervals, stats
from inflang.results.pooling import SeedRows, level
from runners.metrics import item_seed, noise_ceiling, score


def ranks(v: np.ndarray) -> np.ndarray:
    out = np.empty(len(v))
    out[np.argsort(v)] = np.arange(len(v))
    return out


def by_key(rows):
    return {(r.test, r.metric): r for r in rows}


def test_per_test_point_and_mean_aggregate():
    rng = np.random.default_rng(0)
    est = rng.normal(size=(2, 20))
    act = est + 0.3 * rng.normal(size=(2, 20))
    act[1, :5] = np.nan
    rows = by_key(score(est, act, ["pearson", "spearman", "sign_agreement", "top_k_overlap"], top_k=5,
                        replicates=0))
    e1, a1 = est[1, 5:], act[1, 5:]
    assert np.isclose(rows[(1, "pearson")].value, np.corrcoef(e1, a1)[0, 1])
    assert np.isclose(rows[(1, "spearman")].value, np.corrcoef(ranks(e1), ranks(a1))[0, 1])
    assert rows[(1, "pearson")].n_pairs == 15
    assert np.isclose(rows[(0, "sign_agreement")].value, np.mean(np.sign(est[0]) == np.sign(act[0])))
    top = lambda v: set(np.argsort(-np.abs(v))[:5])  # noqa: E731
    assert rows[(0, "top_k_overlap")].value == len(top(est[0]) & top(act[0])) / 5
    assert (None, "pearson") not in rows  # the driver aggregates over test points
    values = np.array([rows[(t, "pearson")].value for t in (0, 1)])
    found = level([SeedRows(0, [0, 1], values, None)], "pearson")
    assert found is not None and np.isclose(found.value, values.mean())
    interval = found.interval()
    q = sps.t.ppf(0.975, 1)
    z = np.arctanh(values)  # a correlation's level: the union of the t interval and Fisher's (E tanh at its ends)
    fisher = intervals.fisher_mean(z.mean() - q * z.std(ddof=1) / np.sqrt(2), z.std(ddof=1))
    low = min(values.mean() - q * values.std(ddof=1) / np.sqrt(2), fisher)
    assert interval is not None and np.isclose(interval.low, max(low, -1.0))


def test_replicates_resample_the_items_of_each_test_point():
    """Replicate b of test point t is the metric on the items drawn by item_draws(K, B, item_seed(seed, id, K))."""
    rng = np.random.default_rng(1)
    est = rng.normal(size=(3, 40))
    act = est + rng.normal(size=(3, 40))
    rows = by_key(score(est, act, ["spearman"], replicates=50, seed=9, test_ids=[11, 12, 13]))
    draws = stats.item_draws(40, 50, item_seed(9, 12, 40))
    expected = [stats.metric("spearman", est[1][d], act[1][d]) for d in draws]
    assert np.allclose(rows[(1, "spearman")].replicates, expected)
    # two estimators of one cell draw the same items: their replicates pair up
    other = by_key(score(est * 2 + 1, act, ["spearman"], replicates=50, seed=9, test_ids=[11, 12, 13]))
    assert np.allclose(other[(1, "spearman")].replicates, expected)


def test_interval_includes_the_spread_between_test_points():
    """Three test points with very different correlations: the interval spans the spread between them, which
    resampling items within fixed test points would leave out."""
    rng = np.random.default_rng(2)
    est = rng.normal(size=(3, 200))
    act = np.stack([est[0], -est[1], rng.normal(size=200)]) + 0.01 * rng.normal(size=(3, 200))
    rows = by_key(score(est, act, ["pearson"], replicates=400))
    values = np.array([rows[(t, "pearson")].value for t in range(3)])
    found = level([SeedRows(0, [0, 1, 2], values, None)], "pearson")
    interval = found.interval() if found is not None else None
    assert interval is not None and interval.low < -0.5 and interval.high > 0.5


def test_degenerate_inputs_give_nan():
    rows = score(np.ones((1, 5)), np.arange(5.0)[None], ["pearson"], replicates=10)
    assert np.isnan(rows[0].value)


def test_noise_ceiling_is_the_root_of_the_reliability():
    rng = np.random.default_rng(2)
    signal = rng.normal(size=(2, 50))
    noisy = np.stack([signal] * 4) + rng.normal(size=(4, 2, 50))
    rows = by_key(noise_ceiling(noisy, replicates=0))
    halves = stats.split_halves(4)
    r = np.mean([np.corrcoef(noisy[a, 0].mean(0), noisy[b, 0].mean(0))[0, 1] for a, b in halves])
    assert np.isclose(rows[(0, "reliability_pearson")].value, 2 * r / (1 + r))
    assert np.isclose(rows[(0, "noise_ceiling_pearson")].value, np.sqrt(2 * r / (1 + r)))
    assert rows[(0, "noise_ceiling_spearman")].value < 0.99
    # a negative split-half correlation is reliability below 0 and a ceiling of 0, never a negative ceiling
    anti = np.stack([signal, -signal])
    rows = by_key(noise_ceiling(anti, replicates=0))
    assert rows[(0, "reliability_pearson")].value < 0 and rows[(0, "noise_ceiling_pearson")].value == 0
    # a constant half has no correlation: NaN, not 1 or 0
    flat = np.stack([np.ones((2, 50)), signal])
    assert np.isnan(by_key(noise_ceiling(flat, replicates=0))[(0, "noise_ceiling_spearman")].value)
