"""Seeds as an axis: metrics pooled over the cells that differ only in their seed, per-cell aggregates, and
paired differences, all with the intervals of ``inflang.results.intervals``.

A study with ``repeats: S`` has S cells per point of its sweep, one per seed. For each sweep point,
estimator (NULL for the ground truth's own rows) and metric, the pooled row holds
- ``value``: the mean over seeds of the mean over test points;
- ``sd``: the standard deviation of the per-seed means (NULL for one seed);
- ``ci_low``, ``ci_high``: the 95% interval over the top level: Student's t over the per-seed means (two or
  more seeds), else over the one seed's test points;
- ``seeds`` and ``test_points``: what the numbers rest on.
The noise ceiling is pooled before its square root: the reliability is pooled, and the ceiling and its
interval are sqrt(max(., 0)) of the reliability's (through the Spearman-Pearson relation for Spearman).
The driver writes these rows (``pooled_rows``, read through ``sweep_results``) and each task's aggregate over
its test points (``aggregate_rows``, the ``test_index IS NULL`` rows of ``metrics``) after every run; both
are pure functions of the stored per-test-point rows.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import duckdb
import numpy as np

from inflang.metrics import ceiling_root, is_correlation, is_noise_ceiling, is_proportion, metric_range, reliability_of
from inflang.results import intervals, stats
from inflang.results.store import per_test_point_rows, task_test_point_rows


@dataclass
class SeedRows:
    """One seed's per-test-point values of one metric, and their item-level replicates (None if absent)."""

    repeat: int
    test_ids: list[int]
    values: np.ndarray
    replicates: np.ndarray | None  # [T, B]

    @property
    def finite(self) -> bool:
        return bool(np.isfinite(self.values).any())

    def mean(self) -> float:
        return float(np.mean(self.values[np.isfinite(self.values)])) if self.finite else math.nan

    def by_test_point(self) -> dict[Hashable, float]:
        """test id -> value, NaN where undefined (which test points a seed has is its ids, not its finite values)."""
        return {t: float(v) for t, v in zip(self.test_ids, self.values, strict=True)}


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
    return {key: [_seed_rows(repeat, points) for repeat, points in sorted(seeds.items())]
            for key, seeds in grouped.items()}


def _seed_rows(repeat: int, points: Sequence[tuple[int, float, Any]]) -> SeedRows:
    reps = None
    if all(p[2] is not None for p in points) and len({len(p[2]) for p in points}) == 1:
        reps = np.array([p[2] for p in points], dtype=np.float64)
    values = np.array([p[1] for p in points], dtype=np.float64)
    if reps is not None:
        reps[~np.isfinite(values)] = np.nan
    return SeedRows(repeat, [p[0] for p in points], values, reps)


# --- units: seeds when there are two or more, else the one seed's test points -------------------------------

def seed_count(groups: Sequence[Sequence[SeedRows]]) -> int:
    """Seeds with a finite value among the rows."""
    return len({r.repeat for rows in groups for r in rows if r.finite})


def finite_count(groups: Sequence[Sequence[SeedRows]]) -> int:
    """(seed, test point) values that are finite among the rows."""
    return sum(int(np.isfinite(r.values).sum()) for rows in groups for r in rows if r.finite)


def by_seed(groups: Sequence[Sequence[SeedRows]]) -> bool:
    """Whether the units are seeds: two or more seeds with a finite value among the rows."""
    return seed_count(groups) >= 2


def units(rows: Sequence[SeedRows], seeds: bool) -> dict[Hashable, float]:
    """unit -> value: per-seed means, or the test points of the (one) seed (NaN where undefined, so that
    ``intervals.combine`` pairs on the units measured, not on the finite ones)."""
    if seeds:
        return {r.repeat: r.mean() for r in rows}
    out: dict[Hashable, float] = {}
    for r in rows:
        if r.finite:
            out.update(r.by_test_point())
    return out


def difference_arms(left: Sequence[SeedRows], right: Sequence[SeedRows], seeds: bool) -> list[intervals.Arm]:
    """The arms of mean(left) - mean(right): one arm of paired differences (per seed, the mean over shared test
    points of left - right when both measured the same ones, else the difference of the means; per test point
    of one seed where both have the same test points), or two arms (+1, -1) when test points cannot pair."""
    if seeds:
        other = {r.repeat: r for r in right if r.finite}
        paired: dict[Hashable, float] = {}
        for a in left:
            b = other.get(a.repeat)
            if a.finite and b is not None:
                paired[a.repeat] = _seed_difference(a, b)
        return [(1.0, paired)]
    ones, others = [r for r in left if r.finite], [r for r in right if r.finite]
    if len(ones) == 1 and len(others) == 1 and ones[0].test_ids == others[0].test_ids:
        la, lb = ones[0].by_test_point(), others[0].by_test_point()
        return [(1.0, {t: la[t] - lb[t] for t in la if t in lb})]
    return [(1.0, units(ones, False)), (-1.0, units(others, False))]


def _seed_difference(a: SeedRows, b: SeedRows) -> float:
    if a.test_ids == b.test_ids:
        both = np.isfinite(a.values) & np.isfinite(b.values)
        return float(np.mean(a.values[both] - b.values[both])) if both.any() else math.nan
    return a.mean() - b.mean()


def binomial_count(metric: str, groups: Sequence[Sequence[SeedRows]]) -> tuple[int, int] | None:
    """(ones, test points) of a metric that is 0 or 1 per test point by definition (``flipped``), else None (a
    correlation that happens to be 1 everywhere is not a proportion)."""
    if not is_proportion(metric):
        return None
    values = np.concatenate([r.values[np.isfinite(r.values)] for rows in groups for r in rows] or [np.zeros(0)])
    if len(values) == 0 or not np.isin(values, (0.0, 1.0)).all():
        return None
    return int(values.sum()), len(values)


def at_bound(metric: str, groups: Sequence[Sequence[SeedRows]], seeds: bool,
             test_points: bool = False) -> tuple[int, int] | None:
    """(units whose every finite value among the groups lies exactly at a bound of the metric, units with a finite
    value): the units are seeds (their means) or the one seed's test points; with ``test_points`` (differences)
    every seed's test points, (seed, test point) pairs. None for unbounded metrics and 0/1 proportions (whose
    interval is exact)."""
    bounds = metric_range(metric)
    if bounds is None or is_proportion(metric):
        return None
    found: dict[Hashable, bool] = {}
    for rows in groups:
        pairs = ({(r.repeat, t): v for r in rows if r.finite for t, v in r.by_test_point().items()}
                 if seeds and test_points else units(rows, seeds))
        for unit, value in pairs.items():
            if math.isfinite(value):
                found[unit] = found.get(unit, True) and value in bounds
    return sum(found.values()), len(found)


def level(rows: Sequence[SeedRows], metric: str) -> intervals.TMean | None:
    """The mean over seeds of the mean over test points, with its interval."""
    seeds = by_seed([rows])
    found = intervals.combine([(1.0, units(rows, seeds))], True, metric_range(metric),
                              binomial_count(metric, [rows]), fisher=is_correlation(metric))
    return None if found is None else replace(found, at_bound=at_bound(metric, [rows], seeds))


def _ceiling_pooled(key: Key, reliability: Pooled) -> Pooled:
    """The noise ceiling row from the pooled reliability's: its value and bounds through ``stats.ceiling``
    (which keeps NaN)."""
    kind = ceiling_root(key[2]) or key[2]

    def root(value: float | None) -> float | None:
        return None if value is None else float(stats.ceiling(kind, np.asarray(value)))

    return Pooled(key[0], key[1], key[2], float(stats.ceiling(kind, np.asarray(reliability.value))), None,
                  root(reliability.ci_low), root(reliability.ci_high), reliability.seeds, reliability.test_points)


def pool(key: Key, rows: list[SeedRows]) -> Pooled:
    """The pooled row of one (swept values, estimator, metric)."""
    means = [r.mean() for r in rows if r.finite]
    estimate = level(rows, key[2])
    interval = estimate.interval() if estimate is not None else None
    if estimate is not None and estimate.crowded:  # most units at the bound: no interval covers
        interval = None
    value = estimate.value if estimate is not None else math.nan
    return Pooled(key[0], key[1], key[2], value, float(np.std(means, ddof=1)) if len(means) >= 2 else None,
                  interval.low if interval else None, interval.high if interval else None, seed_count([rows]),
                  finite_count([rows]))


def pool_rows(grouped: dict[Key, list[SeedRows]]) -> list[Pooled]:
    """Pooled rows of every key; noise ceilings from the pooled reliability of the same key."""
    out: dict[Key, Pooled] = {}
    for key, rows in grouped.items():
        if not is_noise_ceiling(key[2]):
            out[key] = pool(key, rows)
    for key, rows in grouped.items():
        if is_noise_ceiling(key[2]):
            reliability = out.get((key[0], key[1], reliability_of(key[2])))
            out[key] = _ceiling_pooled(key, reliability) if reliability is not None else pool(key, rows)
    return [out[k] for k in sorted(out, key=lambda k: (k[0], k[1] or "", k[2]))]


def pool_study(con: duckdb.DuckDBPyConnection, study: str) -> list[Pooled]:
    """Every pooled row of a study, from the rows its tasks stored."""
    return pool_rows(per_seed(con, study))


# --- per-task aggregates (the test_index NULL rows of ``metrics``) ---------------------------------------------

def task_aggregates(con: duckdb.DuckDBPyConnection, hashes: Sequence[str]) -> dict[str, list[list[Any]]]:
    """Columns of ``aggregate_rows`` (task_hash, metric, value, n_pairs, ci_low, ci_high) for the given tasks:
    per metric, the mean over test points with its interval over them (one seed)."""
    points: dict[Key, list[tuple[int, float, int]]] = defaultdict(list)
    for task_hash, metric, test_index, value, n_pairs in task_test_point_rows(con, hashes):
        points[(task_hash, None, metric)].append((int(test_index), math.nan if value is None else float(value),
                                                  int(n_pairs or 0)))
    grouped = {key: [SeedRows(0, [p[0] for p in rows], np.array([p[1] for p in rows]), None)]
               for key, rows in points.items()}
    columns: dict[str, list[Any]] = {name: [] for name in ("task_hash", "metric", "value", "n_pairs", "ci_low",
                                                           "ci_high")}
    for p in pool_rows(grouped):  # the task hash stands where the swept values stand in a study's rows
        row = (p.params, p.metric, p.value, sum(x[2] for x in points[(p.params, None, p.metric)]), p.ci_low,
               p.ci_high)
        for name, value in zip(columns, row, strict=True):
            columns[name].append(value)
    return columns


@dataclass(frozen=True)
class Difference:
    """left - right for one matched (swept values, estimator), paired by seed and test point."""

    params: str
    estimator: str | None
    estimate: float
    ci_low: float | None
    ci_high: float | None
    seeds: int  # seeds present on both sides
    test_points: int  # test points paired (or, unpaired, the fewer of the two sides)

    @property
    def no_spread(self) -> bool:
        """Whether the interval is a point up to rounding (every paired unit differs by the same amount)."""
        if self.ci_low is None or self.ci_high is None:
            return False
        return intervals.width_is_rounding(self.ci_low, self.ci_high)

    @property
    def resolved(self) -> bool | None:
        """True when the interval excludes 0, False when it contains it, None without an interval or with one of
        no width (no spread between the paired units: nothing to resolve against, as a claim's "no spread")."""
        if self.ci_low is None or self.ci_high is None or self.no_spread:
            return None
        return self.ci_low > 0 or self.ci_high < 0


def difference(key: tuple[str, str | None], left: list[SeedRows], right: list[SeedRows]) -> Difference:
    """The paired difference of two sides' pooled means: seeds matched by repeat number (unmatched seeds left
    out); with two or more matched seeds the t-interval over their per-seed differences, with one the interval
    over that seed's test points (paired where both sides measured the same ones); the interval as ``pool``'s."""
    ones = {r.repeat: r for r in left if r.finite}
    others = {r.repeat: r for r in right if r.finite}
    matched = sorted(set(ones) & set(others))
    if not matched:
        return Difference(key[0], key[1], math.nan, None, None, 0, 0)
    seeds = len(matched) >= 2
    a, b = [ones[r] for r in matched], [others[r] for r in matched]
    estimate = intervals.combine(difference_arms(a, b, seeds), seeds)
    interval = estimate.interval() if estimate is not None else None
    points = sum(int((np.isfinite(x.values) & np.isfinite(y.values)).sum()) if x.test_ids == y.test_ids else
                 min(int(np.isfinite(x.values).sum()), int(np.isfinite(y.values).sum()))
                 for x, y in zip(a, b, strict=True))
    return Difference(key[0], key[1], estimate.value if estimate is not None else math.nan,
                      interval.low if interval else None, interval.high if interval else None, len(matched), points)
