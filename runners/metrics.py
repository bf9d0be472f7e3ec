"""Agreement between estimated and actual effects: per test point and pooled over all test points.

pearson, spearman, kendall: scipy.stats correlations over the pairs with a finite actual value;
sign_agreement: the fraction of those pairs where sign(estimate) == sign(actual). A metric is NaN when
fewer than 3 pairs exist or either side is constant.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import stats


def _one(name: str, est: np.ndarray, act: np.ndarray) -> float:
    if len(est) < 3:
        return float("nan")
    if name == "sign_agreement":
        return float(np.mean(np.sign(est) == np.sign(act)))
    if np.ptp(est) == 0 or np.ptp(act) == 0:
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if name == "pearson":
            return float(stats.pearsonr(est, act).statistic)
        if name == "spearman":
            return float(stats.spearmanr(est, act).statistic)
        if name == "kendall":
            return float(stats.kendalltau(est, act).statistic)
    raise KeyError(name)


def score(estimates: np.ndarray, actual: np.ndarray, names: list[str]) -> list[tuple[int | None, str, float, int]]:
    """Rows (test point position or None for pooled, metric, value, pairs) for [T, n] matrices."""
    rows: list[tuple[int | None, str, float, int]] = []
    mask = np.isfinite(actual)
    for t in range(estimates.shape[0]):
        e, a = estimates[t][mask[t]], actual[t][mask[t]]
        rows.extend((t, name, _one(name, e, a), int(len(e))) for name in names)
    e, a = estimates[mask], actual[mask]
    rows.extend((None, name, _one(name, e, a), int(len(e))) for name in names)
    return rows
