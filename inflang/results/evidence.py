"""What a claim's verdict rests on (``Evidence``): the claim's statistic over the stored rows of the sweep
points it covers, as one of ``inflang.results.intervals``' statistics, with what it rests on (seeds, test points, cells
left out) and, where a noise ceiling was measured, the statistic relative to it. ``inflang.results.claims`` decides the
verdict from it."""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import duckdb
import numpy as np

from inflang.compiling.claim_checks import Params, matches, numeric, same, value_text
from inflang.metrics import (
    CEILING_OF,
    belongs_to_estimator,
    ceiling_root,
    is_correlation,
    is_model_quantity,
    is_noise_ceiling,
    metric_range,
    reliability_of,
)
from inflang.results import intervals, stats
from inflang.results.pooling import (
    SeedRows,
    at_bound,
    binomial_count,
    by_seed,
    difference_arms,
    finite_count,
    level,
    per_seed,
    seed_count,
    units,
)
from inflang.results.store import (
    model_quantity_rows,
)
from inflang.spec.claims import Claim, lower_is_better

ByPoint = dict[str, dict[str | None, list[SeedRows]]]  # params JSON -> estimator -> seeds' rows


@dataclass
class Evidence:
    """What a claim's verdict rests on, before the family decides its interval's level."""

    claim: Claim
    statistic: str
    value: intervals.Statistic | None = None
    why: str = ""  # why there is no statistic
    seeds: int = 0
    test_points: int = 0
    ceiling: float | None = None
    notes: list[str] = field(default_factory=list)
    by_seeds: bool = False  # its units are seeds (else the test points of one seed)
    steps: list[tuple[str, intervals.TMean]] = field(default_factory=list)  # a trend's adjacent steps

    @property
    def threshold(self) -> float:
        return self.claim.threshold

    def p_value(self) -> float:
        """NaN without a verdict (no statistic, an interval of no width, or most units at the bound), so a family
        does not count it."""
        if self.value is None or no_width(self.value) or crowded(self.value):
            return math.nan
        return intervals.p_value(self.value, self.threshold)


def crowded(value: intervals.Statistic) -> bool:
    inner = value.inner if isinstance(value, intervals.Mapped) else value
    return isinstance(inner, intervals.TMean) and inner.crowded


def no_width(value: intervals.Statistic) -> bool:
    """Whether the statistic's interval has no width up to rounding (``intervals.no_spread``)."""
    return value.interval(intervals.LEVEL) is not None and intervals.no_spread(value)


def _model_rows(con: duckdb.DuckDBPyConnection, study: str, quantity: str) -> dict[str, list[SeedRows]]:
    out: dict[str, list[SeedRows]] = {}
    for params, repeat, value in model_quantity_rows(con, study, quantity):
        key = json.dumps(json.loads(params), sort_keys=True)
        v = math.nan if value is None else float(value)
        out.setdefault(key, []).append(SeedRows(int(repeat), [-1], np.array([v]), None))
    return out


def rows_for(con: duckdb.DuckDBPyConnection, study: str, metric: str) -> ByPoint:
    """The per-seed rows of a metric (or model quantity) per sweep point and estimator."""
    if is_model_quantity(metric):
        return {k: {None: rows} for k, rows in _model_rows(con, study, metric).items()}
    by_point: ByPoint = {}
    for (params, estimator, _), rows in per_seed(con, study, metric).items():
        by_point.setdefault(params, {})[estimator] = rows
    return by_point


def ground_metric(metric: str) -> bool:
    return not belongs_to_estimator(metric)


def _ceiling_of(reliability: ByPoint | None, point: str, kind: str) -> float | None:
    """The noise ceiling of a sweep point, from its reliability pooled over seeds and test points."""
    rows = (reliability or {}).get(point, {}).get(None)
    found = level(rows, reliability_of(kind)) if rows else None
    if found is None or not math.isfinite(found.value):
        return None
    return float(stats.ceiling(kind, np.asarray(found.value)))


def _arms_ceiling(reliability: ByPoint | None, points: Sequence[str], kind: str) -> float | None:
    found = [_ceiling_of(reliability, p, kind) for p in points]
    kept = [c for c in found if c is not None]
    return float(np.mean(kept)) if kept and len(kept) == len(found) else None


def gather(claim: Claim, by_point: ByPoint, reliability: ByPoint | None = None,
           axis_values: Sequence[Any] | None = None, test_points: str | None = None) -> Evidence:
    """The statistic of one claim from its rows (``rows_for``); ``reliability``: the rows of
    ``reliability_<metric>`` for ceilings (claims on spearman or pearson); ``axis_values``: every value the
    study sweeps a trend's axis over (ranks count them whether or not their cells finished); ``test_points``:
    the study's ``test_points.select`` (a swept ``test_points.select`` overrides it per point)."""
    evidence = _gather(claim, by_point, reliability, axis_values)
    points = sorted(k for k in by_point if matches(json.loads(k), claim.where))
    fixed = bool(points) and all(_selection(json.loads(k), test_points) == "indices" for k in points)
    if fixed and evidence.by_seeds and evidence.value is not None and not is_model_quantity(claim.metric) \
            and claim.between_test_points is None:
        evidence.notes.append("the same test points in every seed: the interval over seeds is about these fixed "
                              "test points (select: indices), not the population of test points")
    return evidence


def _selection(params: Params, default: str | None) -> str | None:
    """A point's ``test_points.select``: swept (as a path or within a swept ``test_points``), else the study's."""
    if "test_points.select" in params:
        return params["test_points.select"]
    swept = params.get("test_points")
    return swept.get("select", "highest_loss") if isinstance(swept, dict) else default


def _gather(claim: Claim, by_point: ByPoint, reliability: ByPoint | None,
            axis_values: Sequence[Any] | None) -> Evidence:
    evidence = Evidence(claim, describe(claim))
    points = sorted(k for k in by_point if matches(json.loads(k), claim.where))
    if not points:
        evidence.why = "no finished cell has the claim's values"
        return evidence
    kind = claim.metric if claim.metric in CEILING_OF else None
    if claim.compare is not None:
        return _gather_compare(evidence, claim, by_point, points, reliability if kind else None, kind)
    estimator = None if ground_metric(claim.metric) else claim.estimator
    selected = {p: by_point[p][estimator] for p in points if by_point[p].get(estimator)}
    if not selected:
        evidence.why = f"no rows of {claim.metric}" + (f" for {estimator}" if estimator else "")
        return evidence
    if claim.between_test_points is not None:
        return _gather_share(evidence, claim, selected)
    keys = list(selected)
    coefficients = _coefficients(claim, keys, axis_values)
    if coefficients is None:
        axis = (claim.trend or claim.contrast).axis  # type: ignore[union-attr]
        evidence.why = f"no finished cells to compare along {axis}"
        return evidence
    involved = [keys[i] for i in sorted(coefficients)]
    seeds = by_seed([selected[k] for k in involved])
    levels = claim.form in ("at_least", "at_most")
    name, source = claim.metric, selected
    pooled_root = is_noise_ceiling(claim.metric) and levels and reliability is not None
    if pooled_root:  # the ceiling is pooled before its root: the claim is asked of the reliability
        name = reliability_of(claim.metric)
        source = {k: (reliability or {}).get(k, {}).get(None) or [] for k in involved}
        if not all(source.values()):
            evidence.why = f"no {name} rows behind {claim.metric}"
            return evidence
    arms = [(c, units(source[keys[i]], seeds)) for i, c in sorted(coefficients.items()) if c != 0.0]
    # a 0/1 quantity's level is a proportion: its interval is at least the exact binomial one of the successes
    # and trials pooled over every point it covers (never the no-width t interval of all ones)
    combined = intervals.combine(arms, seeds, metric_range(name) if levels else None,
                                 binomial_count(name, [source[k] for k in involved]) if levels else None,
                                 fisher=levels and is_correlation(name))
    if combined is not None:
        combined = replace(combined, at_bound=at_bound(name, [source[k] for k in involved], seeds, not levels))
    if combined is None:
        evidence.why = "a point the claim compares has no finite value"
        return evidence
    value: intervals.Statistic | None = combined
    if combined is not None and pooled_root:
        root = ceiling_root(claim.metric) or claim.metric
        value = intervals.Mapped(combined, lambda r: float(stats.ceiling(root, np.asarray(r))))
    evidence.value = value
    evidence.seeds = seed_count([selected[k] for k in involved])
    evidence.test_points = finite_count([selected[k] for k in involved])
    evidence.by_seeds = seeds
    _unit_notes(evidence, value, seeds, claim)
    if claim.trend is not None:
        for label, weights in _steps(claim, keys):
            step = intervals.combine([(c, units(source[keys[i]], seeds)) for i, c in weights.items()], seeds)
            if step is not None:
                evidence.steps.append((label, step))
    if kind and levels:
        evidence.ceiling = _arms_ceiling(reliability, involved, kind)
    elif kind and claim.contrast is not None and reliability is not None:
        _contrast_ceilings(evidence, claim, keys, coefficients, selected, reliability, kind)
    return evidence


def _gather_compare(evidence: Evidence, claim: Claim, by_point: ByPoint, points: Sequence[str],
                    reliability: ByPoint | None, kind: str | None) -> Evidence:
    assert claim.compare is not None
    better, than = claim.compare.better, claim.compare.than
    pairs = {p: (by_point[p][better], by_point[p][than]) for p in points
             if by_point[p].get(better) and by_point[p].get(than)}
    if not pairs:
        evidence.why = f"no cell has both {better} and {than}"
        return evidence
    seeds = by_seed([rows for pair in pairs.values() for rows in pair])
    arms = [(c / len(pairs), ys) for a, b in pairs.values() for c, ys in difference_arms(a, b, seeds)]
    combined = intervals.combine(arms, seeds)
    rows = [side for pair in pairs.values() for side in pair]
    evidence.value = None if combined is None else replace(combined, at_bound=at_bound(claim.metric, rows, seeds,
                                                                                     True))
    evidence.seeds = seed_count([a for a, _ in pairs.values()])
    evidence.test_points = finite_count([a for a, _ in pairs.values()])
    evidence.by_seeds = seeds
    _unit_notes(evidence, evidence.value, seeds, claim)
    if kind:
        ceiling = _arms_ceiling(reliability, list(pairs), kind)
        if ceiling:
            shares = [np.mean([level(rows, claim.metric).value for rows in side])  # type: ignore[union-attr]
                      for side in zip(*pairs.values(), strict=True)]
            evidence.notes.append(f"{better} {shares[0] / ceiling:.2f} and {than} {shares[1] / ceiling:.2f} of "
                                  f"the noise ceiling {ceiling:.2f}")
    return evidence


def _gather_share(evidence: Evidence, claim: Claim, selected: dict[str, list[SeedRows]]) -> Evidence:
    cells = []
    for rows in selected.values():
        for r in rows:
            if not r.finite:
                continue
            if r.replicates is None:
                evidence.why = "the cells carry no item-level bootstrap replicates (metrics: bootstrap: 0)"
                return evidence
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                cells.append((r.test_ids, r.values, np.nanvar(r.replicates, axis=1)))
    value = intervals.share(cells)
    if value.clusters < intervals.MIN_TEST_POINTS:
        evidence.why = (f"needs at least {intervals.MIN_TEST_POINTS} distinct test points with replicates (found "
                        f"{value.clusters}): the spread between test points is estimated over them")
        return evidence
    if not value.spread > 0:
        evidence.why = f"{claim.metric} does not vary between test points"
        return evidence
    if not math.isfinite(value.estimate):
        evidence.why = "one test point carries the whole spread between test points: leaving it out leaves none"
        return evidence
    evidence.value = value
    evidence.seeds = seed_count(list(selected.values()))
    evidence.test_points = finite_count(list(selected.values()))
    return evidence


def _unit_notes(evidence: Evidence, value: intervals.Statistic | None, seeds: bool, claim: Claim) -> None:
    if isinstance(value, intervals.TMean) and value.dropped:
        unit = "seed" if seeds else "test point"
        evidence.notes.append(f"{value.dropped} {unit}{'s' if value.dropped > 1 else ''} left out: not measured at "
                              "every point the claim compares")
    if not seeds and not is_model_quantity(claim.metric):
        evidence.notes.append("one seed: the interval is over test points, about this trained model, not over "
                              "training seeds")


def _contrast_ceilings(evidence: Evidence, claim: Claim, keys: Sequence[str], coefficients: dict[int, float],
                       selected: dict[str, list[SeedRows]], reliability: ByPoint, kind: str) -> None:
    parts = []
    for side, sign in (("better", 1.0), ("than", -1.0)):
        arm = [keys[i] for i, c in coefficients.items() if c * sign > 0]
        ceiling = _arms_ceiling(reliability, arm, kind)
        if not ceiling:
            return
        mean = float(np.mean([level(selected[k], claim.metric).value for k in arm]))  # type: ignore[union-attr]
        value = getattr(claim.contrast, side)
        parts.append(f"at {value_text(value)} {mean / ceiling:.2f} of its noise ceiling {ceiling:.2f}")
    evidence.notes.append("; ".join(parts))


def _coefficients(claim: Claim, keys: Sequence[str], axis_values: Sequence[Any] | None = None
                  ) -> dict[int, float] | None:
    """Point index -> weight in the statistic (a linear combination of the points' means); None when a trend
    or contrast finds nothing to compare."""
    axis_spec = claim.trend or claim.contrast
    if axis_spec is None:
        return {i: 1.0 / len(keys) for i in range(len(keys))}
    axis = axis_spec.axis
    groups: dict[str, list[int]] = {}
    for i, k in enumerate(keys):
        params = json.loads(k)
        if axis in params:
            others = {p: v for p, v in params.items() if p != axis}
            groups.setdefault(json.dumps(others, sort_keys=True), []).append(i)
    # the rank of an axis value is its place among all the axis's values (0, 1, 2, ...), in numeric order
    swept = axis_values if axis_values is not None else [json.loads(k).get(axis) for k in keys]
    levels = sorted({float(v) for v in swept if numeric(v)})
    per_group: list[dict[int, float]] = []
    for members in groups.values():
        values = [json.loads(keys[i])[axis] for i in members]
        if claim.trend is not None:
            if len(members) < 2 or not all(numeric(v) for v in values):
                continue
            if not all(float(v) in levels for v in values):
                continue
            ranks = np.array([levels.index(float(v)) for v in values], dtype=float)
            centred = ranks - ranks.mean()
            if not (centred * centred).sum() > 0:
                continue
            per_group.append({i: float(w) for i, w in zip(members, centred / (centred * centred).sum(),
                                                          strict=True)})
        else:
            assert claim.contrast is not None
            better = [i for i, v in zip(members, values, strict=True) if same(v, claim.contrast.better)]
            than = [i for i, v in zip(members, values, strict=True) if same(v, claim.contrast.than)]
            if better and than:
                per_group.append({better[0]: 1.0, than[0]: -1.0})
    if not per_group:
        return None
    out: dict[int, float] = {}
    for weights in per_group:
        for i, w in weights.items():
            out[i] = out.get(i, 0.0) + w / len(per_group)
    return out


def _steps(claim: Claim, keys: Sequence[str]) -> list[tuple[str, dict[int, float]]]:
    """A trend's adjacent steps: per pair of axis values next to each other among a combination of the other
    swept values' finished points, (label, point index -> weight) of metric(next) - metric(this), averaged over
    the combinations that have both; none when the points hold fewer than 3 values of the axis (one step is
    the trend itself)."""
    assert claim.trend is not None
    axis = claim.trend.axis
    groups: dict[str, list[tuple[float, int, Any]]] = {}
    for i, k in enumerate(keys):
        params = json.loads(k)
        if numeric(params.get(axis)):
            others = json.dumps({p: v for p, v in params.items() if p != axis}, sort_keys=True)
            groups.setdefault(others, []).append((float(params[axis]), i, params[axis]))
    if len({v for members in groups.values() for v, _, _ in members}) < 3:
        return []
    pairs: dict[tuple[float, float], list[tuple[int, int]]] = {}
    shown: dict[tuple[float, float], str] = {}
    for members in groups.values():
        ordered = sorted(members)
        for (a, i, va), (b, j, vb) in zip(ordered, ordered[1:], strict=False):
            pairs.setdefault((a, b), []).append((i, j))
            shown.setdefault((a, b), f"{axis} {value_text(va)} -> {value_text(vb)}")
    out = []
    for step in sorted(pairs):
        weights: dict[int, float] = {}
        for i, j in pairs[step]:
            weights[j] = weights.get(j, 0.0) + 1 / len(pairs[step])
            weights[i] = weights.get(i, 0.0) - 1 / len(pairs[step])
        out.append((shown[step], weights))
    return out


def describe(claim: Claim) -> str:
    """The claim's statistic in words."""
    lower = " (lower is better)" if lower_is_better(claim) else ""
    if claim.trend is not None:
        return f"slope of {claim.metric} per step of {claim.trend.axis}"
    if claim.contrast is not None:
        c = claim.contrast
        return f"{claim.metric} at {c.axis}={value_text(c.better)} minus at {value_text(c.than)}{lower}"
    if claim.compare is not None:
        return f"{claim.metric} of {claim.compare.better} minus {claim.compare.than}{lower}"
    if claim.between_test_points is not None:
        return f"share of {claim.metric}'s spread between test points that is real"
    bound = f">= {claim.at_least:g}" if claim.at_least is not None else f"<= {claim.at_most:g}"
    return f"mean {claim.metric} ({bound})"
