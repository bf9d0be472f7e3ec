"""Claims: a study's hypotheses checked against its cells, each with a statistic, a 95% interval from
``inflang.intervals`` and a verdict (docs/language.md, "Claims").

Statistics, over the sweep points the claim covers (``where``), from each point's mean over seeds of the
mean over test points:
- ``at_least`` / ``at_most``: the mean over points;
- ``trend``: the slope of the metric against the rank of the axis value (0, 1, 2, ... in sorted order), in
  metric units per step, within each combination of the other swept values, averaged over combinations;
- ``contrast``: the mean over combinations of the other swept values of metric(better) - metric(than);
- ``compare``: the mean over points of metric(better estimator) - metric(other estimator), paired per seed
  and test point;
- ``between_test_points``: the share of the metric's spread between test points that is real rather than
  item noise, summed over every cell the claim covers and jackknifed over the distinct test points
  (``inflang.intervals.Share``).
Each of the first four is a linear combination of the points' means, so its interval is one t-interval over
the top level (seeds, paired across points; the test points of the one seed when there is only one). The
verdict is ``supported`` when the interval lies on the claimed side (of 0, or of the threshold), ``contradicted``
when it lies on the other, ``negligible`` when a trend, contrast or compare declares ``smallest_effect`` and its
interval lies inside +-smallest_effect, ``unresolved`` otherwise (and for a trend whose slope is resolved but one of
whose adjacent steps is resolved against it), and ``not evaluable`` when cells the claim needs failed, the data
cannot give an interval, or the interval has no width (no spread). For metrics where lower is better (``flip_k``,
losses, gaps; or ``better: lower``) a contrast or comparison claims a negative difference. With ``claims_adjust``
the intervals of the study's claims are widened as a family (Holm or Bonferroni).
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import duckdb
import numpy as np

from inflang import intervals, stats
from inflang.diagnostics import GROUND_TRUTH, MODEL, claim_health
from inflang.pooling import (
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
from inflang.power import MIN_SEEDS  # seeds a claim about training seeds needs
from inflang.sequential import Design
from inflang.settle import settle
from inflang.spec.claims import GROUND_TRUTH_METRICS, MODEL_QUANTITIES, Claim, lower_is_better
from inflang.store import (
    added_repeats,
    added_seconds,
    cells_of,
    diagnostic_rows,
    model_quantity_rows,
    seed_seconds,
    sequential_designs,
)
from inflang.units import duration

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
    verdict: str  # supported | contradicted | negligible | unresolved | not evaluable
    relative_to_ceiling: float | None = None
    detail: str = ""
    threshold: float = 0.0  # the line the interval has to clear: at_least/at_most, or 0 for differences
    p_value: float = math.nan  # the smallest alpha whose (1 - alpha) interval excludes the threshold
    level: float = intervals.LEVEL  # the interval's confidence level (below 0.95 never; above it when adjusted)
    health: str = ""  # the health checks that warn in the cells the claim rests on (inflang.diagnostics)
    seeds_needed: int | None = None  # unresolved: fixed seeds that would resolve it with 80% power (inflang.settle)
    seeds_to_negligible: int | None = None  # with smallest_effect: seeds to call the observed effect negligible
    seeds_for_smallest_effect: int | None = None  # with smallest_effect: seeds to resolve an effect of that size
    settle: str = ""  # what would settle it, in words, with the price of the seeds where it is known
    settle_seconds: float | None = None  # the measured seconds the added seeds of ``seeds_needed`` would take
    max_seeds: int | None = None  # judged sequentially (``inflang.sequential``), with looks up to this many seeds
    seeds_added: int | None = None  # sequential: the seeds it reads beyond those it had when its looks began
    seconds_added: float | None = None  # sequential: the measured seconds of the tasks of those added seeds


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
        if self.value is None or _no_width(self.value) or _crowded(self.value):
            return math.nan
        return intervals.p_value(self.value, self.threshold)


def _crowded(value: intervals.Statistic) -> bool:
    inner = value.inner if isinstance(value, intervals.Mapped) else value
    return isinstance(inner, intervals.TMean) and inner.crowded


def _no_width(value: intervals.Statistic) -> bool:
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
    if metric in MODEL_QUANTITIES:
        return {k: {None: rows} for k, rows in _model_rows(con, study, metric).items()}
    by_point: ByPoint = {}
    for (params, estimator, _), rows in per_seed(con, study, metric).items():
        by_point.setdefault(params, {})[estimator] = rows
    return by_point


def _ground_metric(metric: str) -> bool:
    return metric in MODEL_QUANTITIES or metric in GROUND_TRUTH_METRICS or metric.startswith(
        ("pbrf_vs_", "converged_loo_vs_", "random_"))


def _ceiling_of(reliability: ByPoint | None, point: str, kind: str) -> float | None:
    """The noise ceiling of a sweep point, from its reliability pooled over seeds and test points."""
    rows = (reliability or {}).get(point, {}).get(None)
    found = level(rows, f"reliability_{kind}") if rows else None
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
    points = sorted(k for k in by_point if _matches(json.loads(k), claim.where))
    fixed = bool(points) and all(_selection(json.loads(k), test_points) == "indices" for k in points)
    if fixed and evidence.by_seeds and evidence.value is not None and claim.metric not in MODEL_QUANTITIES \
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
    evidence = Evidence(claim, _describe(claim))
    points = sorted(k for k in by_point if _matches(json.loads(k), claim.where))
    if not points:
        evidence.why = "no finished cell has the claim's values"
        return evidence
    kind = claim.metric if claim.metric in ("spearman", "pearson") else None
    if claim.compare is not None:
        return _gather_compare(evidence, claim, by_point, points, reliability if kind else None, kind)
    estimator = None if _ground_metric(claim.metric) else claim.estimator
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
    pooled_root = claim.metric.startswith("noise_ceiling_") and levels and reliability is not None
    if pooled_root:  # the ceiling is pooled before its root: the claim is asked of the reliability
        name = claim.metric.replace("noise_ceiling_", "reliability_")
        source = {k: (reliability or {}).get(k, {}).get(None) or [] for k in involved}
        if not all(source.values()):
            evidence.why = f"no {name} rows behind {claim.metric}"
            return evidence
    arms = [(c, units(source[keys[i]], seeds)) for i, c in sorted(coefficients.items()) if c != 0.0]
    # a 0/1 quantity's level is a proportion: its interval is at least the exact binomial one of the successes
    # and trials pooled over every point it covers (never the no-width t interval of all ones)
    combined = intervals.combine(arms, seeds, intervals.metric_range(name) if levels else None,
                                 binomial_count(name, [source[k] for k in involved]) if levels else None,
                                 fisher=levels and intervals.is_correlation(name))
    if combined is not None:
        combined = replace(combined, at_bound=at_bound(name, [source[k] for k in involved], seeds, not levels))
    if combined is None:
        evidence.why = "a point the claim compares has no finite value"
        return evidence
    value: intervals.Statistic | None = combined
    if combined is not None and pooled_root:
        root = claim.metric.removeprefix("noise_ceiling_")
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
    if not seeds and claim.metric not in MODEL_QUANTITIES:
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
        parts.append(f"at {_shown(value)} {mean / ceiling:.2f} of its noise ceiling {ceiling:.2f}")
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
    levels = sorted({float(v) for v in swept if _numeric(v)})
    per_group: list[dict[int, float]] = []
    for members in groups.values():
        values = [json.loads(keys[i])[axis] for i in members]
        if claim.trend is not None:
            if len(members) < 2 or not all(_numeric(v) for v in values):
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
            better = [i for i, v in zip(members, values, strict=True) if _same(v, claim.contrast.better)]
            than = [i for i, v in zip(members, values, strict=True) if _same(v, claim.contrast.than)]
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
        if _numeric(params.get(axis)):
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
            shown.setdefault((a, b), f"{axis} {_shown(va)} -> {_shown(vb)}")
    out = []
    for step in sorted(pairs):
        weights: dict[int, float] = {}
        for i, j in pairs[step]:
            weights[j] = weights.get(j, 0.0) + 1 / len(pairs[step])
            weights[i] = weights.get(i, 0.0) - 1 / len(pairs[step])
        out.append((shown[step], weights))
    return out


def _against(claim: Claim, evidence: Evidence, level_: float) -> list[str]:
    """A trend's adjacent steps whose interval lies strictly against its direction, in words."""
    assert claim.trend is not None
    up = claim.trend.direction == "up"
    out = []
    for label, step in evidence.steps:
        found = step.interval(level_)
        if found is not None and (found.high < 0 if up else found.low > 0):
            out.append(f"{label} {'falls' if up else 'rises'}, "
                       f"{intervals.interval_text(step.value, found.low, found.high, level_)}")
    return out


def _verdict(claim: Claim, low: float, high: float) -> str:
    """Strictly on one side of the line (an interval that reaches it is unresolved, as its p-value says)."""
    if claim.at_least is not None:
        side = (low > claim.at_least, high < claim.at_least)
    elif claim.at_most is not None:
        side = (high < claim.at_most, low > claim.at_most)
    elif claim.between_test_points is not None:
        side = (low > claim.between_test_points.at_least, high < claim.between_test_points.at_least)
    elif claim.trend is not None:
        side = (high < 0, low > 0) if claim.trend.direction == "down" else (low > 0, high < 0)
    elif lower_is_better(claim):  # contrast, compare: the better side has the lower metric
        side = (high < 0, low > 0)
    else:
        side = (low > 0, high < 0)
    return "supported" if side[0] else "contradicted" if side[1] else "unresolved"


def _describe(claim: Claim) -> str:
    lower = " (lower is better)" if lower_is_better(claim) else ""
    if claim.trend is not None:
        return f"slope of {claim.metric} per step of {claim.trend.axis}"
    if claim.contrast is not None:
        c = claim.contrast
        return f"{claim.metric} at {c.axis}={_shown(c.better)} minus at {_shown(c.than)}{lower}"
    if claim.compare is not None:
        return f"{claim.metric} of {claim.compare.better} minus {claim.compare.than}{lower}"
    if claim.between_test_points is not None:
        return f"share of {claim.metric}'s spread between test points that is real"
    bound = f">= {claim.at_least:g}" if claim.at_least is not None else f"<= {claim.at_most:g}"
    return f"mean {claim.metric} ({bound})"


def settled(evidence: Evidence, verdict: Verdict) -> Verdict:
    """The verdict with what would settle it (``inflang.settle``: seeds needed at 80% power, in words)."""
    what = settle(evidence.claim, evidence.value, evidence.by_seeds, verdict.verdict, verdict.detail,
                  verdict.level, verdict.seeds, verdict.max_seeds)
    return replace(verdict, seeds_needed=what.seeds_needed, seeds_to_negligible=what.seeds_to_negligible,
                   seeds_for_smallest_effect=what.seeds_for_smallest_effect, settle=what.note)


def decide(evidence: Evidence, level_: float = intervals.LEVEL) -> Verdict:
    claim = evidence.claim
    base = dict(claim=claim.name, form=claim.form, statistic=evidence.statistic, seeds=evidence.seeds,
                test_points=evidence.test_points, threshold=evidence.threshold, level=level_,
                relative_to_ceiling=None)
    if evidence.value is None:
        return Verdict(estimate=math.nan, ci_low=None, ci_high=None, verdict="not evaluable", detail=evidence.why,
                       **base)  # type: ignore[arg-type]
    value = evidence.value
    if evidence.by_seeds and value.units < MIN_SEEDS:
        return Verdict(estimate=value.value, ci_low=None, ci_high=None, verdict="not evaluable",
                       detail=f"needs at least {MIN_SEEDS} seeds measured at every point it compares (found "
                       f"{value.units}): a t interval from 2 rests on one degree of freedom, so its width is mostly "
                       "chance; add repeats", **base)  # type: ignore[arg-type]
    interval = value.interval(level_)
    estimate = value.value
    if evidence.ceiling and math.isfinite(estimate):
        base["relative_to_ceiling"] = estimate / evidence.ceiling
    if interval is None or not math.isfinite(estimate):
        if claim.metric in MODEL_QUANTITIES and value.units < 2:
            why = f"{claim.metric} is one number per model: an interval needs repeats >= {MIN_SEEDS} seeds"
        elif isinstance(value, intervals.TMean) and value.paired and value.units < 2:
            unit = "seeds" if evidence.by_seeds else "test points"
            why = (f"fewer than 2 {unit} finite at every point the claim compares (found {value.units}; the points "
                   f"share their {unit}, so they pair on those finite in all of them, and {value.dropped} "
                   "measured at only some were left out)")
        else:
            why = "no interval: fewer than 2 units (seeds, or test points of one seed) with a finite value"
        return Verdict(estimate=estimate, ci_low=None, ci_high=None, verdict="not evaluable", detail=why,
                       **base)  # type: ignore[arg-type]
    if _no_width(value):
        return Verdict(estimate=estimate, ci_low=None, ci_high=None, verdict="not evaluable",
                       detail=_no_spread(evidence, value), **base)  # type: ignore[arg-type]
    inner = value.inner if isinstance(value, intervals.Mapped) else value
    if isinstance(inner, intervals.TMean) and inner.crowded and inner.at_bound is not None:
        levels = claim.form in ("at_least", "at_most")
        unit = ("seeds' means" if levels else "(seed, test point) pairs") if evidence.by_seeds else "test points"
        every = "" if levels else " at every point and estimator the claim compares"
        return Verdict(estimate=estimate, ci_low=None, ci_high=None, verdict="not evaluable",
                       detail=f"{inner.at_bound[0]} of {inner.at_bound[1]} {unit} give {claim.metric} exactly at its "
                       f"bound{every}: the statistic depends on how far the few others fall, which too few units "
                       "show for an interval to cover; add test points or seeds", **base)  # type: ignore[arg-type]
    verdict = _verdict(claim, interval.low, interval.high)
    notes = list(evidence.notes)
    smallest = claim.smallest_effect
    if smallest is not None and -smallest < interval.low and interval.high < smallest:
        # both one-sided tests reject an effect of +-smallest_effect (each at (1 - level) / 2)
        if verdict != "unresolved":
            notes.insert(0, f"resolved {'above' if interval.low > 0 else 'below'} 0, but by less than the "
                         f"smallest effect that matters ({smallest:g})")
        verdict = "negligible"
    if claim.trend is not None and verdict not in ("contradicted", "negligible"):
        against = _against(claim, evidence, level_)
        if against:  # a slope resolved one way with a step resolved the other is not a trend that way
            notes.insert(0, "not monotone: " + "; ".join(against))
            verdict = "unresolved"
    return Verdict(estimate=estimate, ci_low=interval.low, ci_high=interval.high,
                   verdict=verdict, detail="; ".join(notes),
                   p_value=evidence.p_value(), **base)  # type: ignore[arg-type]


def _no_spread(evidence: Evidence, value: intervals.Statistic) -> str:
    """Why an interval of no width gives no verdict."""
    if isinstance(value, intervals.Share):
        why = "the item bootstrap shows no variation within any test point"
    else:
        unit = "seed" if evidence.by_seeds else "test point"
        inner = value.inner if isinstance(value, intervals.Mapped) else value
        what = "the same difference" if evidence.claim.form in ("trend", "contrast", "compare") else "the same value"
        why = f"every {unit} gives {what}" if isinstance(inner, intervals.TMean) and inner.units >= 2 else \
            "the data show no variation"
    return (f"no spread: {why}, so the interval has no width; it would say only that no variation was seen, not "
            "how far the value could be from its line")


def family_levels(evidence: Sequence[Evidence], adjust: str, level_: float = intervals.LEVEL,
                  designs: Sequence[Design | None] | None = None) -> list[float]:
    """The confidence level of each claim's interval: ``level_`` unadjusted, or as Holm's step-down or
    Bonferroni needs them for a family-wise error of at most 1 - ``level_`` (over the evaluable claims). A claim
    judged sequentially (its ``designs`` entry) enters with its overall p-value and gets the per-look level of
    its share of alpha (``inflang.sequential``)."""
    plans = list(designs) if designs is not None else [None] * len(evidence)
    p_values = [e.p_value() if d is None else d.overall_p(e.p_value()) for e, d in zip(evidence, plans, strict=True)]
    if adjust == "holm":
        overall = intervals.holm_levels(p_values, level_)
    elif adjust == "bonferroni":
        overall = intervals.bonferroni_levels(p_values, level_)
    else:
        overall = [level_] * len(evidence)
    return [lv if d is None else d.look_level(lv) for lv, d in zip(overall, plans, strict=True)]


def evaluate_rows(claims: Sequence[Claim], rows: Sequence[ByPoint], reliability: Sequence[ByPoint | None],
                  adjust: str = "none", cells: Sequence[Params] | None = None,
                  test_points: str | None = None, with_settle: bool = False,
                  designs: Sequence[Design | None] | None = None) -> list[Verdict]:
    """Verdicts of a family of claims from in-memory rows (one ``ByPoint`` per claim); ``cells``: the swept
    values of every cell of the study (a trend's ranks count every swept value); ``test_points``: the study's
    ``test_points.select`` (with ``indices`` a seed-level interval is about those test points); with
    ``with_settle``, also what would settle each unresolved one (``settled``); ``designs``: per claim, its
    sequential design (None: fixed seeds), whose rows are to be cut to one look already (``first_seeds``)."""
    plans = list(designs) if designs is not None else [None] * len(claims)
    looks = [0 if d is None else look_seeds(c, r, d.seeds) for c, r, d in zip(claims, rows, plans, strict=True)]
    rows = [r if d is None else first_seeds(r, n) for r, d, n in zip(rows, plans, looks, strict=True)]
    reliability = [r if d is None or r is None else first_seeds(r, n)
                   for r, d, n in zip(reliability, plans, looks, strict=True)]
    evidence = [gather(c, r, rel, _axis_values(c, cells), test_points)
                for c, r, rel in zip(claims, rows, reliability, strict=True)]
    found = [decide(e, lv) for e, lv in zip(evidence, family_levels(evidence, adjust, designs=plans), strict=True)]
    found = [v if d is None else _sequential(v, d, n) for v, d, n in zip(found, plans, looks, strict=True)]
    found = [v if d is None or n >= d.first else _before_first(v, d, n)
             for v, d, n in zip(found, plans, looks, strict=True)]
    return [settled(e, v) for e, v in zip(evidence, found, strict=True)] if with_settle else found


def _sequential(verdict: Verdict, design: Design, look: int) -> Verdict:
    """A verdict read at a look (``look`` seeds) of its sequential design: its overall p-value, the design in its
    detail."""
    said = design.describe(look, verdict.level)
    return replace(verdict, p_value=design.overall_p(verdict.p_value), max_seeds=design.last,
                   seeds_added=max(look - design.first, 0), detail="; ".join(d for d in (verdict.detail, said) if d))


def _before_first(verdict: Verdict, design: Design, look: int) -> Verdict:
    """A sequential claim whose cells have fewer seeds than its design's first look (a failed cell, fewer repeats
    declared since) has no look to read."""
    return replace(verdict, verdict="not evaluable", ci_low=None, ci_high=None, p_value=math.nan,
                   detail=f"its sequential design looks at {design.first}-{design.last} seeds, and its cells have "
                   f"{look} without a gap (a failed cell, or fewer repeats declared since): no look to read")


def look_seeds(claim: Claim, by_point: ByPoint, most: int) -> int:
    """A sequential claim's look: n, the fewest seeds any point it reads has without a gap (repeats 0 .. n-1),
    at most ``most``; the look reads those n seeds of every point (``first_seeds``), so it depends on n alone,
    however the seeds were added to the points its cells share with other claims."""
    own = {claim.compare.better, claim.compare.than} if claim.compare is not None else {claim.estimator}
    n = most
    for key in sorted(claim_cells(claim, [(k, json.loads(k)) for k in by_point])):
        kept = [seeds for e, seeds in by_point[key].items() if e in own] or list(by_point[key].values())
        for seeds in kept:
            present = {r.repeat for r in seeds}
            n = min(n, next(i for i in range(len(present) + 1) if i not in present))
    return n


def first_seeds(by_point: ByPoint, n: int) -> ByPoint:
    """The rows of the first ``n`` seeds (repeats 0 .. n-1) of every point."""
    return {k: {e: [r for r in seeds if r.repeat < n] for e, seeds in by_estimator.items()}
            for k, by_estimator in by_point.items()}


def evaluate(con: duckdb.DuckDBPyConnection, study: str, claims: Sequence[Claim],
             adjust: str = "none", test_points: str | None = None) -> list[Verdict]:
    """Every claim of a study, from the rows its tasks stored; ``test_points``: the study's
    ``test_points.select``."""
    cache: dict[str, ByPoint] = {}

    def rows(metric: str) -> ByPoint:
        if metric not in cache:
            cache[metric] = rows_for(con, study, metric)
        return cache[metric]

    reliability: list[ByPoint | None] = []
    for claim in claims:
        if claim.metric in ("spearman", "pearson"):
            reliability.append(rows(f"reliability_{claim.metric}"))
        elif claim.metric.startswith("noise_ceiling_"):
            reliability.append(rows(claim.metric.replace("noise_ceiling_", "reliability_")))
        else:
            reliability.append(None)
    cells = cells_of(con, study)
    recorded = sequential_designs(con, study)
    # a claim declared or edited after seeds were added by looking is judged under the study's design too
    implied = Design(min(f for f, _, _ in recorded.values()), max(la for _, la, _ in recorded.values())) \
        if recorded and added_repeats(con, study) else None
    designs = [Design(*recorded[key]) if (key := (c.name, definition(c))) in recorded else implied for c in claims]
    verdicts = evaluate_rows(claims, [rows(c.metric) for c in claims], reliability, adjust, [p for _, p in cells],
                             test_points, with_settle=True, designs=designs)
    verdicts = [_priced(v, seed_seconds(con, study, sorted(claim_cells(c, cells)))) for v, c in
                zip(verdicts, claims, strict=True)]
    verdicts = [v if d is None else replace(v, seconds_added=added_seconds(
        con, study, sorted(claim_cells(c, cells)), d.first, d.first + (v.seeds_added or 0))) for v, c, d in
        zip(verdicts, claims, designs, strict=True)]
    found = diagnostic_rows(con, study)
    if not found:
        return verdicts
    return [replace(v, health=claim_health(found, claim_cells(c, cells), _subjects(c)))
            for v, c in zip(verdicts, claims, strict=True)]


def _priced(verdict: Verdict, per_seed: float | None) -> Verdict:
    """The price of the seeds a verdict needs beyond those it has: the added seeds (to resolve it, else to call it
    negligible) times the mean measured seconds of one seed's tasks in the cells the claim reads."""
    needed = verdict.seeds_needed if verdict.seeds_needed is not None else verdict.seeds_to_negligible
    if needed is None or per_seed is None or needed <= verdict.seeds:
        return verdict
    seconds = (needed - verdict.seeds) * per_seed
    what = "" if needed == verdict.seeds_needed else " (to call it negligible)"
    return replace(verdict, settle_seconds=seconds, settle=f"{verdict.settle}; {needed - verdict.seeds} more seeds"
                   f"{what} of its cells take about {duration(seconds)} here (measured: {duration(per_seed)} a seed)")


def _axis_values(claim: Claim, cells: Sequence[Params] | None) -> list[Any] | None:
    """Every value a trend's axis takes among the cells matching the claim's ``where`` (None: no cells given)."""
    if claim.trend is None or cells is None:
        return None
    return [p[claim.trend.axis] for p in cells if claim.trend.axis in p and _matches(p, claim.where)]


def claim_cells(claim: Claim, cells: Sequence[tuple[str, Params]]) -> set[str]:
    """The cells a claim rests on: those matching ``where``, and for a contrast those at its two values."""
    kept = {c for c, p in cells if _matches(p, claim.where)}
    if claim.contrast is not None:
        axis, sides = claim.contrast.axis, (claim.contrast.better, claim.contrast.than)
        kept = {c for c, p in cells if c in kept and axis in p and any(_same(p[axis], v) for v in sides)}
    return kept


def _subjects(claim: Claim) -> set[str]:
    """Whose health a claim's verdict depends on: a model quantity the model's; a ground-truth quantity the
    model's and the ground truth's; an agreement metric those and its estimators'."""
    if claim.metric in MODEL_QUANTITIES:
        return {MODEL}
    if _ground_metric(claim.metric):
        return {MODEL, GROUND_TRUTH}
    if claim.compare is not None:
        return {claim.compare.better, claim.compare.than, MODEL, GROUND_TRUTH}
    return {MODEL, GROUND_TRUTH} | ({claim.estimator} if claim.estimator else set())


def evaluate_one(con: duckdb.DuckDBPyConnection, study: str, claim: Claim, test_points: str | None = None
                 ) -> Verdict:
    """One claim on its own (no family adjustment)."""
    return evaluate(con, study, [claim], test_points=test_points)[0]


def family_notes(rows: list[dict[str, Any]]) -> list[str]:
    """Per study, how many claims it declares and what that means for false verdicts; the † claims."""
    notes = []
    for study in dict.fromkeys(r["study"] for r in rows):
        own = [r for r in rows if r["study"] == study]
        m, adjust = len(own), own[0]["adjust"] or "none"
        if adjust == "none":
            chance = 1 - 0.95 ** m
            each = "each at 95% over its looks" if any(r.get("sequential") for r in own) else "each interval at 95%"
            notes.append(f"{study}: {m} claim{'s' if m != 1 else ''}, {each}" + (
                f": were every claim's statistic exactly at its line, the chance of at least one verdict supported "
                f"or contradicted would be up to {100 * chance:.0f}%; claims_adjust: holm keeps it at 5%"
                if m > 1 else ""))
        else:
            notes.append(f"{study}: {m} claims, {adjust}-adjusted: at most a 5% chance of any false supported or "
                         "contradicted among them")
        sequential = [r for r in own if r.get("sequential")]
        if sequential:
            notes.append(f"{study}: {len(sequential)} claim{'s' if len(sequential) != 1 else ''} judged sequentially "
                         f"(--until-settled, looks up to {max(r['max_seeds'] for r in sequential)} seeds): each "
                         "look's interval is at the level shown, so that all of a claim's looks together err no more "
                         "often than the level above")
        late = [r for r in own if r["declared_after_results"]]
        if late:
            first = min(str(r["declared_at"])[:16] for r in late)
            notes.append(f"† {len(late)} claim{'s' if len(late) != 1 else ''} declared or edited after the study had "
                         f"results (from {first} UTC): chosen with the data in view, read them as exploratory")
    return notes


def marked_verdict(row: dict[str, Any]) -> str:
    """A claims-table row's verdict with its marks: † declared or edited after the study had results, ⚠ a health
    check warns in the cells it rests on."""
    return row["verdict"] + (" †" if row["declared_after_results"] else "") + (" ⚠" if row["health"] else "")


def definition(claim: Claim) -> str:
    """A claim's definition as canonical JSON (what it asks, whatever its layout in the file)."""
    return json.dumps(claim.model_dump(mode="json", exclude_none=True), sort_keys=True)
