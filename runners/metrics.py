"""Agreement between estimated and actual effects, per test point and aggregated, and the noise ceiling.

For each test point, over the items (training points or groups) with a finite actual value:
- pearson, spearman, kendall: scipy.stats correlations;
- sign_agreement: the fraction of items where sign(estimate) == sign(actual);
- top_k_overlap: |top-k by |estimate| & top-k by |actual|| / k (precision at k), k = min(top_k, items).
A metric is NaN with fewer than 3 items or a constant side. The aggregate (test_index NULL) is the mean over
test points (NaNs skipped); with ``bootstrap: B`` its 95% interval is the 2.5th and 97.5th percentiles of B
means recomputed after resampling items with replacement within each test point.

Noise ceiling (repeats R >= 2): per test point, the correlation between the mean actual over the even and
over the odd repeats (split halves), corrected to the full R with Spearman-Brown, 2 r / (1 + r).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class MetricRow:
    test: int | None  # position of the test point, None for the aggregate
    metric: str
    value: float
    n_pairs: int
    ci_low: float | None = None
    ci_high: float | None = None


def metric(name: str, est: np.ndarray, act: np.ndarray, top_k: int = 10) -> float:
    if len(est) < 3:
        return float("nan")
    if name == "sign_agreement":
        return float(np.mean(np.sign(est) == np.sign(act)))
    if name == "top_k_overlap":
        k = min(top_k, len(est))
        top_est = set(np.argsort(-np.abs(est), kind="stable")[:k].tolist())
        top_act = set(np.argsort(-np.abs(act), kind="stable")[:k].tolist())
        return len(top_est & top_act) / k
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


def _mean(values: list[float]) -> float:
    finite = [v for v in values if np.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def score(estimates: np.ndarray, actual: np.ndarray, names: list[str], top_k: int = 10, bootstrap: int = 0,
          seed: int = 0) -> list[MetricRow]:
    """Rows per test point and aggregated, for [T, K] estimates and actual values (NaN = not evaluated)."""
    mask = np.isfinite(actual)
    pairs = [(estimates[t][mask[t]], actual[t][mask[t]]) for t in range(estimates.shape[0])]
    rows: list[MetricRow] = []
    rng = np.random.default_rng(seed)
    for name in names:
        per_point = [metric(name, e, a, top_k) for e, a in pairs]
        rows += [MetricRow(t, name, v, len(pairs[t][0])) for t, v in enumerate(per_point)]
        low = high = None
        if bootstrap:
            means = []
            for _ in range(bootstrap):
                resampled = []
                for e, a in pairs:
                    pick = rng.integers(0, len(e), len(e)) if len(e) else np.array([], dtype=int)
                    resampled.append(metric(name, e[pick], a[pick], top_k))
                means.append(_mean(resampled))
            finite = np.array([m for m in means if np.isfinite(m)])
            if len(finite):
                low, high = float(np.percentile(finite, 2.5)), float(np.percentile(finite, 97.5))
        rows.append(MetricRow(None, name, _mean(per_point), int(sum(len(e) for e, _ in pairs)), low, high))
    return rows


def noise_ceiling(per_repeat: np.ndarray) -> list[MetricRow]:
    """Split-half noise ceilings from [R, T, K] repeated measurements (R >= 2), Spearman and Pearson."""
    R, T, _ = per_repeat.shape
    if R < 2:
        return []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        first = np.nanmean(per_repeat[0::2], axis=0)
        second = np.nanmean(per_repeat[1::2], axis=0)
    rows: list[MetricRow] = []
    for kind in ("spearman", "pearson"):
        values = []
        for t in range(T):
            ok = np.isfinite(first[t]) & np.isfinite(second[t])
            if ok.sum() < 3 or np.ptp(first[t][ok]) == 0 or np.ptp(second[t][ok]) == 0:
                r = float("nan") if ok.sum() < 3 else (1.0 if np.allclose(first[t][ok], second[t][ok]) else 0.0)
            else:
                r = metric(kind, first[t][ok], second[t][ok])
            ceiling = 2 * r / (1 + r) if np.isfinite(r) and r > -1 else float("nan")
            values.append(ceiling)
            rows.append(MetricRow(t, f"noise_ceiling_{kind}", ceiling, int(ok.sum())))
        rows.append(MetricRow(None, f"noise_ceiling_{kind}", _mean(values), int(np.isfinite(first).sum())))
    return rows


def gap_rows(a: np.ndarray, b: np.ndarray, prefix: str) -> list[MetricRow]:
    """How response a [T, K] relates to response b on the pairs both have: {prefix}_spearman, _pearson,
    _mean_gap (mean of a - b: signed, so the terms of a decomposition add up) and _mean_abs_gap."""
    ok = np.isfinite(a) & np.isfinite(b)
    rows: list[MetricRow] = []
    for name in ("spearman", "pearson", "mean_gap", "mean_abs_gap"):
        values = []
        for t in range(a.shape[0]):
            x, y = a[t][ok[t]], b[t][ok[t]]
            if name == "mean_gap":
                v = float(np.mean(x - y)) if len(x) else float("nan")
            elif name == "mean_abs_gap":
                v = float(np.mean(np.abs(x - y))) if len(x) else float("nan")
            else:
                v = metric(name, x, y)
            values.append(v)
            rows.append(MetricRow(t, f"{prefix}_{name}", v, int(ok[t].sum())))
        rows.append(MetricRow(None, f"{prefix}_{name}", _mean(values), int(ok.sum())))
    return rows
