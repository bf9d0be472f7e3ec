"""Seeds as an axis: metrics pooled over the cells that differ only in their seed, and paired differences.

A study with ``repeats: S`` has S cells per point of its sweep, one per seed. For each sweep point,
estimator (NULL for noise ceilings) and metric, the pooled row holds
- ``value``: the mean over seeds of the mean over test points;
- ``sd``: the standard deviation of the per-seed means (NULL for one seed);
- ``ci_low``, ``ci_high``: the 95% hierarchical bootstrap interval (seeds, then test points, then items;
  ``inflang.stats.seed_replicates``), from the item-level replicates the metrics tasks stored;
- ``seeds`` and ``test_points``: what the numbers rest on.
The driver writes these rows (``pooled_rows``, read through the ``sweep_results`` view) after every run;
they are a pure function of the stored per-test-point rows, so rewriting them changes nothing else.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import duckdb
import numpy as np

from inflang import stats
from inflang.hashing import derive_seed
from inflang.store import per_test_point_rows


@dataclass
class SeedRows:
    """One seed's per-test-point values of one metric, and their item-level replicates (None if absent)."""

    repeat: int
    test_ids: list[int]
    values: np.ndarray
    replicates: np.ndarray | None  # [T, B]


@dataclass(frozen=True)
class Pooled:
    params: str  # JSON of the swept values
    estimator: str | None
    metric: str
    value: float
    sd: float | None
    ci_low: float | None
    ci_high: float | None
    seeds: int
    test_points: int


Key = tuple[str, str | None, str]  # (params JSON, estimator, metric)

def per_seed(con: duckdb.DuckDBPyConnection, study: str, metric: str | None = None) -> dict[Key, list[SeedRows]]:
    """Per (swept values, estimator, metric): every seed's per-test-point rows."""
    grouped: dict[Key, dict[int, list[tuple[int, float, Any]]]] = defaultdict(lambda: defaultdict(list))
    for repeat, params, estimator, name, test_index, value, replicates in per_test_point_rows(con, study, metric):
        canonical = json.dumps(json.loads(params), sort_keys=True)
        grouped[(canonical, estimator, name)][int(repeat)].append(
            (int(test_index), math.nan if value is None else float(value), replicates))
    out: dict[Key, list[SeedRows]] = {}
    for key, seeds in grouped.items():
        rows = []
        for repeat, points in sorted(seeds.items()):
            reps = None
            if all(p[2] is not None for p in points) and len({len(p[2]) for p in points}) == 1:
                reps = np.array([p[2] for p in points], dtype=np.float64)
            values = np.array([p[1] for p in points], dtype=np.float64)
            if reps is not None:
                reps[~np.isfinite(values)] = np.nan
            rows.append(SeedRows(repeat, [p[0] for p in points], values, reps))
        out[key] = rows
    return out


def _seed_means(rows: list[SeedRows]) -> list[float]:
    return [float(np.mean(r.values[np.isfinite(r.values)])) for r in rows if np.isfinite(r.values).any()]


def pool(key: Key, rows: list[SeedRows], seed: int) -> Pooled:
    """The pooled row of one (swept values, estimator, metric)."""
    means = _seed_means(rows)
    value = float(np.mean(means)) if means else math.nan
    sd = float(np.std(means, ddof=1)) if len(means) >= 2 else None
    low = high = None
    usable = [r for r in rows if np.isfinite(r.values).any()]
    if usable and all(r.replicates is not None for r in usable):
        count = min(r.replicates.shape[1] for r in usable if r.replicates is not None)
        rng = np.random.default_rng(derive_seed(seed, *key))
        interval = stats.percentile_interval(
            stats.seed_replicates([r.replicates for r in usable if r.replicates is not None], count, rng))
        if interval is not None:
            low, high = interval.low, interval.high
    return Pooled(key[0], key[1], key[2], value, sd, low, high, len(usable),
                  sum(int(np.isfinite(r.values).sum()) for r in usable))


def pool_study(con: duckdb.DuckDBPyConnection, study: str) -> list[Pooled]:
    """Every pooled row of a study, from the rows its tasks stored."""
    return [pool(key, rows, derive_seed(study, "pool")) for key, rows in sorted(
        per_seed(con, study).items(), key=lambda kv: (kv[0][0], kv[0][1] or "", kv[0][2]))]


@dataclass(frozen=True)
class Difference:
    """left - right for one matched (swept values, estimator), paired by seed and test point."""

    params: str
    estimator: str | None
    estimate: float
    ci_low: float | None
    ci_high: float | None
    seeds: int  # seeds present on both sides

    @property
    def resolved(self) -> bool | None:
        """True when the interval excludes 0, False when it contains it, None without an interval."""
        if self.ci_low is None or self.ci_high is None:
            return None
        return self.ci_low > 0 or self.ci_high < 0


def difference(key: tuple[str, str | None], left: list[SeedRows], right: list[SeedRows], seed: int) -> Difference:
    """The paired difference of two sides' pooled means: seeds matched by repeat number (unmatched seeds
    left out), test points paired where both sides measured the same ones."""
    by_repeat = {r.repeat: r for r in right}
    matched = [(a, by_repeat[a.repeat]) for a in left if a.repeat in by_repeat
               and np.isfinite(a.values).any() and np.isfinite(by_repeat[a.repeat].values).any()]
    if not matched:
        return Difference(key[0], key[1], math.nan, None, None, 0)
    estimate = float(np.mean([np.nanmean(a.values) - np.nanmean(b.values) for a, b in matched]))
    low = high = None
    if all(a.replicates is not None and b.replicates is not None for a, b in matched):
        count = min(min(a.replicates.shape[1], b.replicates.shape[1]) for a, b in matched  # type: ignore[union-attr]
                    )
        paired = [a.test_ids == b.test_ids for a, b in matched]
        rng = np.random.default_rng(derive_seed(seed, *key))
        interval = stats.percentile_interval(stats.paired_seed_replicates(
            [a.replicates for a, _ in matched], [b.replicates for _, b in matched],  # type: ignore[misc]
            paired, count, rng))
        if interval is not None:
            low, high = interval.low, interval.high
    return Difference(key[0], key[1], estimate, low, high, len(matched))
