"""Claims: a study's hypotheses checked against its cells, each with a statistic, a 95% interval from the
hierarchical bootstrap of ``inflang.stats`` and a verdict (docs/language.md, "Claims").

Statistics, over the sweep points the claim covers (``where``), from each point's mean over seeds of the
mean over test points:
- ``at_least`` / ``at_most``: the mean over points;
- ``trend``: the slope of the metric against the rank of the axis value (0, 1, 2, ... in sorted order), in
  metric units per step, within each combination of the other swept values, averaged over combinations;
- ``contrast``: the mean over combinations of the other swept values of metric(better) - metric(than);
- ``compare``: the mean over points of metric(better estimator) - metric(other estimator), paired per seed,
  test point and training point;
- ``between_test_points``: max(0, 1 - (mean item-level bootstrap variance of a test point's metric) /
  (variance of the metric across test points)), averaged over seeds and points: in [0, 1].
Replicates draw seeds once for all points (paired by seed), then test points and items within each; the
verdict is ``supported`` when the interval lies on the claimed side (of 0, or of the threshold),
``contradicted`` when it lies on the other, ``unresolved`` otherwise, and ``not evaluable`` when cells the
claim needs failed or carry no replicates.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import duckdb
import numpy as np

from inflang import stats
from inflang.hashing import derive_seed
from inflang.pooling import SeedRows, per_seed
from inflang.spec.claims import GROUND_TRUTH_METRICS, MODEL_QUANTITIES, Claim
from inflang.store import model_quantity_rows

GAP_METRICS = tuple(f"{prefix}_{name}" for prefix in ("influence_vs_pbrf", "influence_vs_retrained",
                                                        "pbrf_vs_converged_loo", "converged_loo_vs_retrained")
                    for name in ("spearman", "pearson", "mean_gap", "mean_abs_gap"))
Params = dict[str, Any]
Problem = tuple[tuple[str | int, ...], str, str | None]


@dataclass(frozen=True)
class Verdict:
    claim: str
    form: str
    statistic: str  # what ``estimate`` is, in words
    estimate: float
    ci_low: float | None
    ci_high: float | None
    seeds: int
    test_points: int  # (cell, test point) pairs the statistic rests on
    verdict: str  # supported | contradicted | unresolved | not evaluable
    relative_to_ceiling: float | None = None
    detail: str = ""
    threshold: float = 0.0  # the line the interval has to clear: at_least/at_most, or 0 for differences


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, int | float) and isinstance(b, int | float) and not isinstance(a, bool) \
            and not isinstance(b, bool):
        return float(a) == float(b)
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def _numeric(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _matches(params: Params, where: dict[str, Any]) -> bool:
    return all(k in params and _same(params[k], v) for k, v in where.items())


def _shown(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, str) else value


# --- validation against the study's cells ----------------------------------------------------------------

def claim_problems(claims: Sequence[Claim], cells: Sequence[tuple[Params, Any]]) -> list[Problem]:
    """(path, message, hint) for every claim that names a metric, estimator, axis or value the study's cells
    (swept values, validated study) do not have."""
    problems: list[Problem] = []
    studies = [s for _, s in cells]
    labels = sorted({e.label or e.name for s in studies for e in s.estimators})
    metric_names = sorted({m for s in studies for m in s.ground_truth.estimator_metrics(tuple(s.metrics.names))})
    ground = {m for s in studies for m in s.ground_truth.ground_truth_metrics()}
    if any(s.ground_truth.repeats >= 2 for s in studies):
        ground |= {m for m in GROUND_TRUTH_METRICS if m.startswith(("noise_ceiling", "reliability"))}
    if any(s.ground_truth.probes_per_repeat for s in studies):
        ground |= {"resolution", "below_resolution"}
    decompose = any(getattr(s.ground_truth, "decompose", False) for s in studies)
    gaps = set(GAP_METRICS) if decompose else set()
    model = {q for q in MODEL_QUANTITIES if q != "hessian_top_eigenvalue" or any(s.hessian for s in studies)}
    axes: dict[str, list[Any]] = {}
    for params, _ in cells:
        for k, v in params.items():
            if not any(_same(v, x) for x in axes.setdefault(k, [])):
                axes[k].append(v)
    names = [c.name for c in claims]
    for i, claim in enumerate(claims):
        at: tuple[str | int, ...] = ("claims", i)
        if claim.name in names[:i]:
            problems.append((at + ("name",), f"a second claim is named '{claim.name}'", "give each claim its own name"))
        per_estimator = claim.metric in metric_names or claim.metric.startswith(("influence_vs_",))
        known = set(metric_names) | ground | gaps | model
        if claim.metric not in known:
            problems.append((at + ("metric",), f"'{claim.metric}' is not a quantity this study produces",
                             f"one of: {', '.join(sorted(known))}"))
            continue
        if claim.compare is not None:
            if not per_estimator:
                problems.append((at + ("metric",), f"compare needs an agreement metric of the estimators, not "
                                 f"'{claim.metric}'", f"one of: {', '.join(metric_names)}"))
            for side in ("better", "than"):
                label = getattr(claim.compare, side)
                if label not in labels:
                    problems.append((at + ("compare", side), f"no estimator labelled '{label}' in this study",
                                     f"one of: {', '.join(labels)}"))
        elif per_estimator and claim.estimator is None:
            problems.append((at + ("metric",), f"'{claim.metric}' is a metric of each estimator; say which",
                             f"add estimator: (one of {', '.join(labels)})"))
        elif not per_estimator and claim.estimator is not None:
            problems.append((at + ("estimator",), f"'{claim.metric}' belongs to the "
                             f"{'model' if claim.metric in model else 'ground truth'}, not to an estimator",
                             "leave out estimator"))
        elif claim.estimator is not None and claim.estimator not in labels:
            problems.append((at + ("estimator",), f"no estimator labelled '{claim.estimator}' in this study",
                             f"one of: {', '.join(labels)}"))
        for key, value in claim.where.items():
            if key not in axes:
                problems.append((at + ("where", key), f"'{key}' is not swept in this study",
                                 f"swept: {', '.join(axes) or 'nothing'}"))
            elif not any(_same(value, x) for x in axes[key]):
                problems.append((at + ("where", key), f"the sweep gives {key} no value {_shown(value)}",
                                 f"values: {', '.join(_shown(x) for x in axes[key])}"))
        kept = [p for p, _ in cells if _matches(p, claim.where)]
        axis_spec = claim.trend or claim.contrast
        if axis_spec is not None:
            form = "trend" if claim.trend is not None else "contrast"
            if axis_spec.axis not in axes:
                problems.append((at + (form, "axis"), f"'{axis_spec.axis}' is not swept in this study",
                                 f"swept: {', '.join(axes) or 'nothing'}"))
                continue
            values = [p[axis_spec.axis] for p in kept if axis_spec.axis in p]
            if claim.contrast is not None:
                for side in ("better", "than"):
                    v = getattr(claim.contrast, side)
                    if not any(_same(v, x) for x in values):
                        problems.append((at + ("contrast", side), f"no cell has {axis_spec.axis} = {_shown(v)}"
                                         + (" where the claim looks" if claim.where else ""),
                                         f"values: {', '.join(_shown(x) for x in axes[axis_spec.axis])}"))
            elif not all(_numeric(v) for v in values):
                problems.append((at + ("trend", "axis"), f"a trend needs a numeric axis, and {axis_spec.axis} has "
                                 f"values {', '.join(_shown(x) for x in axes[axis_spec.axis])}",
                                 "use contrast: for two non-numeric values"))
            elif len({float(v) for v in values}) < 2:
                problems.append((at + ("trend", "axis"), f"a trend needs at least two values of {axis_spec.axis} "
                                 "among the cells the claim looks at", None))
        if not kept and claim.where:
            problems.append((at + ("where",), "no cell has all these values", None))
    return problems


# --- evaluation --------------------------------------------------------------------------------------------

Inner = Callable[[int, np.random.Generator], np.ndarray]  # (replicates, rng) -> [replicates]


def _mean_inner(rows: SeedRows) -> Inner | None:
    """Replicates of one seed's mean over test points (test points, then items); None without replicates."""
    if rows.replicates is None:
        if len(rows.values) == 1 and np.isfinite(rows.values[0]):  # a model quantity: no test points
            value = float(rows.values[0])
            return lambda count, rng: np.full(count, value)
        if not np.isfinite(rows.values).any():
            return None
        fixed = rows.values[:, None]  # no item replicates (resolution): test points are resampled only
        return lambda count, rng: stats.test_point_replicates(fixed, count, rng)
    reps = rows.replicates
    return lambda count, rng: stats.test_point_replicates(reps, count, rng)


def _paired_inner(a: SeedRows, b: SeedRows) -> Inner | None:
    """Replicates of a's mean minus b's, paired on test points (and items) where both measured the same."""
    if a.replicates is None or b.replicates is None:
        return None
    ra, rb = a.replicates, b.replicates
    paired = a.test_ids == b.test_ids
    return lambda count, rng: stats.paired_seed_replicates([ra], [rb], [paired], count, rng)


def _spread_parts(rows: SeedRows) -> tuple[np.ndarray, np.ndarray] | None:
    """(metric, item-level variance) of the test points where both are finite; None without replicates."""
    if rows.replicates is None:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        within = np.nanvar(rows.replicates, axis=1)
    ok = np.isfinite(rows.values) & np.isfinite(within)
    return rows.values[ok], within[ok]


def _share(values: np.ndarray, within: np.ndarray) -> np.ndarray:
    """max(0, 1 - mean(within) / var(values)) along the last axis: the share of the spread between test
    points not explained by item noise, in [0, 1] (0 where the item noise explains all of it, or the values
    do not vary)."""
    between = values.var(axis=-1, ddof=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        share = 1 - within.mean(axis=-1) / np.where(between > 0, between, 1.0)
    return np.where(between > 0, np.clip(share, 0.0, 1.0), 0.0)


def _spread_inner(rows: SeedRows) -> Inner | None:
    parts = _spread_parts(rows)
    if parts is None or len(parts[0]) < 3:
        return None
    values, within = parts

    def draw(count: int, rng: np.random.Generator) -> np.ndarray:
        pick = rng.integers(0, len(values), (count, len(values)))
        return _share(values[pick], within[pick])

    return draw


def _spread(rows: SeedRows) -> float:
    parts = _spread_parts(rows)
    if parts is None or len(parts[0]) < 3:
        return math.nan
    return float(_share(*parts))


def _joint(points: Sequence[dict[int, Inner]], count: int, rng: np.random.Generator) -> np.ndarray:
    """[P, count]: per point, replicates of the mean over seeds, the seeds drawn once for every point (so
    points are paired by seed); each drawn seed contributes one of its own inner replicates."""
    repeats = sorted({r for p in points for r in p})
    S = len(repeats)
    draw = rng.integers(0, S, (count, S))
    column = rng.integers(0, count, (count, S))
    out = np.full((len(points), count), np.nan)
    for i, point in enumerate(points):
        inner = np.full((S, count), np.nan)
        for j, r in enumerate(repeats):
            if r in point:
                inner[j] = point[r](count, rng)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a replicate that drew only missing seeds
            out[i] = np.nanmean(inner[draw, column], axis=1)
    return out


def _slope(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least-squares slope of y [..., m] on x [m] along the last axis."""
    xc = x - x.mean()
    return ((y - y.mean(axis=-1, keepdims=True)) * xc).sum(axis=-1) / (xc * xc).sum()


def _model_rows(con: duckdb.DuckDBPyConnection, study: str, quantity: str) -> dict[str, list[SeedRows]]:
    out: dict[str, list[SeedRows]] = {}
    for params, repeat, value in model_quantity_rows(con, study, quantity):
        key = json.dumps(json.loads(params), sort_keys=True)
        v = math.nan if value is None else float(value)
        out.setdefault(key, []).append(SeedRows(int(repeat), [-1], np.array([v]), None))
    return out


def _verdict(form: str, claim: Claim, low: float, high: float) -> str:
    if claim.at_least is not None:
        side = (low >= claim.at_least, high < claim.at_least)
    elif claim.at_most is not None:
        side = (high <= claim.at_most, low > claim.at_most)
    elif claim.between_test_points is not None:
        side = (low >= claim.between_test_points.at_least, high < claim.between_test_points.at_least)
    elif claim.trend is not None and claim.trend.direction == "down":
        side = (high < 0, low > 0)
    else:  # trend up, contrast, compare: positive is the claimed side
        side = (low > 0, high < 0)
    return "supported" if side[0] else "contradicted" if side[1] else "unresolved"


def _describe(claim: Claim) -> str:
    if claim.trend is not None:
        return f"slope of {claim.metric} per step of {claim.trend.axis}"
    if claim.contrast is not None:
        c = claim.contrast
        return f"{claim.metric} at {c.axis}={_shown(c.better)} minus at {_shown(c.than)}"
    if claim.compare is not None:
        return f"{claim.metric} of {claim.compare.better} minus {claim.compare.than}"
    if claim.between_test_points is not None:
        return f"share of {claim.metric}'s spread between test points that is real"
    bound = f">= {claim.at_least:g}" if claim.at_least is not None else f"<= {claim.at_most:g}"
    return f"mean {claim.metric} ({bound})"


def evaluate(con: duckdb.DuckDBPyConnection, study: str, claims: Sequence[Claim],
             count: int = stats.REPLICATES) -> list[Verdict]:
    """Every claim of a study, from the rows its tasks stored."""
    return [evaluate_one(con, study, claim, count) for claim in claims]


def evaluate_one(con: duckdb.DuckDBPyConnection, study: str, claim: Claim,
                 count: int = stats.REPLICATES) -> Verdict:
    form, statistic = claim.form, _describe(claim)

    def unevaluable(why: str) -> Verdict:
        return Verdict(claim.name, form, statistic, math.nan, None, None, 0, 0, "not evaluable", None, why,
                       _threshold(claim))

    by_point: dict[str, dict[str | None, list[SeedRows]]] = {}
    if claim.metric in MODEL_QUANTITIES:
        by_point = {k: {None: rows} for k, rows in _model_rows(con, study, claim.metric).items()}
    else:
        grouped = per_seed(con, study, claim.metric)
        for (params, estimator, _), rows in grouped.items():
            by_point.setdefault(params, {})[estimator] = rows
    points = sorted(k for k in by_point if _matches(json.loads(k), claim.where))
    if not points:
        return unevaluable("no finished cell has the claim's values")
    rng = np.random.default_rng(derive_seed(study, "claim", claim.name))
    estimator = None if claim.metric in MODEL_QUANTITIES or claim.metric in GROUND_TRUTH_METRICS or \
        claim.metric.startswith(("pbrf_vs_", "converged_loo_vs_", "random_")) else claim.estimator

    def rows_of(point: str, label: str | None) -> list[SeedRows] | None:
        return by_point[point].get(label)

    if claim.compare is not None:
        inners: list[dict[int, Inner]] = []
        estimates, used = [], []
        for point in points:
            a, b = rows_of(point, claim.compare.better), rows_of(point, claim.compare.than)
            if not a or not b:
                continue
            right = {r.repeat: r for r in b if np.isfinite(r.values).any()}
            pairs = [(x, right[x.repeat]) for x in a if x.repeat in right and np.isfinite(x.values).any()]
            inner = {x.repeat: _paired_inner(x, y) for x, y in pairs}
            if not pairs or any(f is None for f in inner.values()):
                return unevaluable(f"cells of {point} carry no bootstrap replicates")
            inners.append({k: f for k, f in inner.items() if f is not None})
            estimates.append(float(np.mean([np.nanmean(x.values) - np.nanmean(y.values) for x, y in pairs])))
            used.append([x for x, _ in pairs])
        if not inners:
            return unevaluable(f"no cell has both {claim.compare.better} and {claim.compare.than}")
        reps = np.nanmean(_joint(inners, count, rng), axis=0)
        estimate = float(np.mean(estimates))
        return _finish(con, study, claim, form, statistic, estimate, reps, used, points)

    selected: dict[str, list[SeedRows]] = {}
    for point in points:
        found = rows_of(point, estimator)
        if found:
            selected[point] = found
    if not selected:
        return unevaluable(f"no rows of {claim.metric}" + (f" for {estimator}" if estimator else ""))
    make = _spread_inner if claim.between_test_points is not None else _mean_inner
    inners_by_point: dict[str, dict[int, Inner]] = {}
    for point, rows in selected.items():
        inner = {r.repeat: make(r) for r in rows if np.isfinite(r.values).any()}
        if not inner or any(f is None for f in inner.values()):
            if claim.between_test_points is not None:
                return unevaluable(f"cells of {point} need at least 3 test points with bootstrap replicates")
            return unevaluable(f"cells of {point} carry no bootstrap replicates")
        inners_by_point[point] = {k: f for k, f in inner.items() if f is not None}
    keys = list(inners_by_point)
    joint = _joint([inners_by_point[k] for k in keys], count, rng)
    if claim.between_test_points is not None:
        point_estimates = [float(np.nanmean([_spread(r) for r in selected[k]])) for k in keys]
    else:
        point_estimates = [stats.mean_over_seeds([r.values for r in selected[k]]) for k in keys]
    used = [selected[k] for k in keys]
    axis_spec = claim.trend or claim.contrast
    if axis_spec is None:  # at_least, at_most, between_test_points: the mean over points
        return _finish(con, study, claim, form, statistic, float(np.nanmean(point_estimates)),
                       np.nanmean(joint, axis=0), used, keys)
    axis = axis_spec.axis
    groups: dict[str, list[int]] = {}
    for i, k in enumerate(keys):
        params = json.loads(k)
        if axis not in params:
            continue
        others = {p: v for p, v in params.items() if p != axis}
        groups.setdefault(json.dumps(others, sort_keys=True), []).append(i)
    estimates, replicates = [], []
    involved: set[int] = set()  # the cells the statistic rests on (their seeds and test points are counted)
    # the rank of an axis value is its place among all the axis's values (0, 1, 2, ...), in numeric order
    levels = sorted({float(json.loads(k)[axis]) for k in keys if _numeric(json.loads(k).get(axis))})
    for members in groups.values():
        values = [json.loads(keys[i])[axis] for i in members]
        if claim.trend is not None:
            if len(members) < 2 or not all(_numeric(v) for v in values):
                continue
            ranks = np.array([levels.index(float(v)) for v in values], dtype=float)
            estimates.append(float(_slope(ranks, np.array([point_estimates[i] for i in members]))))
            replicates.append(_slope(ranks, joint[members].T))
            involved.update(members)
        else:
            assert claim.contrast is not None
            better = [i for i, v in zip(members, values, strict=True) if _same(v, claim.contrast.better)]
            than = [i for i, v in zip(members, values, strict=True) if _same(v, claim.contrast.than)]
            if not better or not than:
                continue
            estimates.append(point_estimates[better[0]] - point_estimates[than[0]])
            replicates.append(joint[better[0]] - joint[than[0]])
            involved.update((better[0], than[0]))
    if not estimates:
        return unevaluable(f"no finished cells to compare along {axis}")
    return _finish(con, study, claim, form, statistic, float(np.mean(estimates)),
                   np.nanmean(np.stack(replicates), axis=0), [used[i] for i in sorted(involved)],
                   [keys[i] for i in sorted(involved)])


def _finish(con: duckdb.DuckDBPyConnection, study: str, claim: Claim, form: str, statistic: str, estimate: float,
            replicates: np.ndarray, used: Sequence[Sequence[SeedRows]], points: Sequence[str]) -> Verdict:
    interval = stats.percentile_interval(replicates)
    seeds = len({r.repeat for rows in used for r in rows})
    test_points = sum(int(np.isfinite(r.values).sum()) for rows in used for r in rows)
    ceiling = None
    if claim.metric in ("spearman", "pearson") and claim.between_test_points is None and math.isfinite(estimate):
        rows = per_seed(con, study, f"noise_ceiling_{claim.metric}")
        values = [stats.mean_over_seeds([r.values for r in rows_]) for (params, _, _), rows_ in rows.items()
                  if params in points]
        finite = [v for v in values if math.isfinite(v)]
        if finite and np.mean(finite) > 0:
            ceiling = estimate / float(np.mean(finite))
    if interval is None or not math.isfinite(estimate):
        return Verdict(claim.name, form, statistic, estimate, None, None, seeds, test_points, "not evaluable",
                       ceiling, "no interval: the cells carry no bootstrap replicates", _threshold(claim))
    if claim.metric in MODEL_QUANTITIES and seeds < 2:
        return Verdict(claim.name, form, statistic, estimate, None, None, seeds, test_points, "not evaluable",
                       ceiling, f"{claim.metric} is one number per model: an interval needs repeats >= 2 seeds",
                       _threshold(claim))
    return Verdict(claim.name, form, statistic, estimate, interval.low, interval.high, seeds, test_points,
                   _verdict(form, claim, interval.low, interval.high), ceiling, "", _threshold(claim))


def _threshold(claim: Claim) -> float:
    if claim.at_least is not None:
        return claim.at_least
    if claim.at_most is not None:
        return claim.at_most
    if claim.between_test_points is not None:
        return claim.between_test_points.at_least
    return 0.0
