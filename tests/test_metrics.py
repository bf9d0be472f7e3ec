"""Agreement metrics against direct numpy computations."""

from __future__ import annotations

import numpy as np

from runners.metrics import score


def ranks(v: np.ndarray) -> np.ndarray:
    out = np.empty(len(v))
    out[np.argsort(v)] = np.arange(len(v))
    return out


def test_per_test_point_and_pooled():
    rng = np.random.default_rng(0)
    est = rng.normal(size=(2, 20))
    act = est + 0.3 * rng.normal(size=(2, 20))
    act[1, :5] = np.nan
    rows = {(t, m): (v, k) for t, m, v, k in score(est, act, ["pearson", "spearman", "sign_agreement"])}
    e1, a1 = est[1, 5:], act[1, 5:]
    assert np.isclose(rows[(1, "pearson")][0], np.corrcoef(e1, a1)[0, 1])
    assert np.isclose(rows[(1, "spearman")][0], np.corrcoef(ranks(e1), ranks(a1))[0, 1])
    assert rows[(1, "pearson")][1] == 15
    assert np.isclose(rows[(0, "sign_agreement")][0], np.mean(np.sign(est[0]) == np.sign(act[0])))
    mask = np.isfinite(act)
    assert np.isclose(rows[(None, "pearson")][0], np.corrcoef(est[mask], act[mask])[0, 1])
    assert rows[(None, "pearson")][1] == 35


def test_degenerate_inputs_give_nan():
    rows = score(np.ones((1, 5)), np.arange(5.0)[None], ["pearson"])
    assert np.isnan(rows[0][2])
