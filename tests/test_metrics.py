"""Agreement metrics and the noise ceiling against direct numpy computations."""

from __future__ import annotations

import numpy as np

from runners.metrics import noise_ceiling, score


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
    rows = by_key(score(est, act, ["pearson", "spearman", "sign_agreement", "top_k_overlap"], top_k=5))
    e1, a1 = est[1, 5:], act[1, 5:]
    assert np.isclose(rows[(1, "pearson")].value, np.corrcoef(e1, a1)[0, 1])
    assert np.isclose(rows[(1, "spearman")].value, np.corrcoef(ranks(e1), ranks(a1))[0, 1])
    assert rows[(1, "pearson")].n_pairs == 15
    assert np.isclose(rows[(0, "sign_agreement")].value, np.mean(np.sign(est[0]) == np.sign(act[0])))
    top = lambda v: set(np.argsort(-np.abs(v))[:5])  # noqa: E731
    assert rows[(0, "top_k_overlap")].value == len(top(est[0]) & top(act[0])) / 5
    mean = np.mean([rows[(0, "pearson")].value, rows[(1, "pearson")].value])
    assert np.isclose(rows[(None, "pearson")].value, mean) and rows[(None, "pearson")].n_pairs == 35
    assert rows[(None, "pearson")].ci_low is None


def test_bootstrap_interval_brackets_the_aggregate():
    rng = np.random.default_rng(1)
    est = rng.normal(size=(3, 40))
    act = est + rng.normal(size=(3, 40))
    row = by_key(score(est, act, ["spearman"], bootstrap=300))[(None, "spearman")]
    assert row.ci_low < row.value < row.ci_high
    assert 0.05 < row.ci_high - row.ci_low < 0.6


def test_degenerate_inputs_give_nan():
    rows = score(np.ones((1, 5)), np.arange(5.0)[None], ["pearson"])
    assert np.isnan(rows[0].value)


def test_noise_ceiling_is_one_without_noise_and_drops_with_it():
    rng = np.random.default_rng(2)
    signal = rng.normal(size=(2, 50))
    clean = np.stack([signal] * 4)
    rows = by_key(noise_ceiling(clean))
    assert np.isclose(rows[(None, "noise_ceiling_spearman")].value, 1.0)
    noisy = clean + rng.normal(size=clean.shape)
    rows = by_key(noise_ceiling(noisy))
    half = lambda x: np.corrcoef(x[0::2].mean(0)[0], x[1::2].mean(0)[0])[0, 1]  # noqa: E731
    r = half(noisy)
    assert np.isclose(rows[(0, "noise_ceiling_pearson")].value, 2 * r / (1 + r))
    assert rows[(None, "noise_ceiling_spearman")].value < 0.95
    assert noise_ceiling(clean[:1]) == []
