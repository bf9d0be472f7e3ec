"""Claims: a study's hypotheses checked against its cells, each with a statistic, a 95% interval from
``inflang.results.intervals`` and a verdict (docs/language.md, "Claims"). The statistic is gathered in
``inflang.results.evidence``; a claim is checked against the sweep at load time in ``inflang.compiling.claim_checks``.

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
  (``inflang.results.intervals.Share``).
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
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import duckdb

from inflang.compiling.claim_checks import Params, matches, same
from inflang.metrics import CEILING_OF, is_model_quantity, is_noise_ceiling, reliability_of
from inflang.results import intervals
from inflang.results.diagnostics import GROUND_TRUTH, MODEL, claim_health
from inflang.results.evidence import ByPoint, Evidence, gather, ground_metric, no_width, rows_for
from inflang.results.power import MIN_SEEDS  # seeds a claim about training seeds needs
from inflang.results.sequential import Design
from inflang.results.settle import settle
from inflang.results.store import (
    added_repeats,
    added_seconds,
    cells_of,
    diagnostic_rows,
    seed_seconds,
    sequential_designs,
)
from inflang.spec.claims import Claim, lower_is_better
from inflang.units import duration


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
    health: str = ""  # the health checks that warn in the cells the claim rests on (inflang.results.diagnostics)
    # unresolved: fixed seeds that would resolve it with 80% power (inflang.results.settle)
    seeds_needed: int | None = None
    seeds_to_negligible: int | None = None  # with smallest_effect: seeds to call the observed effect negligible
    seeds_for_smallest_effect: int | None = None  # with smallest_effect: seeds to resolve an effect of that size
    settle: str = ""  # what would settle it, in words, with the price of the seeds where it is known
    settle_seconds: float | None = None  # the measured seconds the added seeds of ``seeds_needed`` would take
    # judged sequentially (``inflang.results.sequential``), with looks up to this many seeds
    max_seeds: int | None = None
    seeds_added: int | None = None  # sequential: the seeds it reads beyond those it had when its looks began
    seconds_added: float | None = None  # sequential: the measured seconds of the tasks of those added seeds


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


def settled(evidence: Evidence, verdict: Verdict) -> Verdict:
    """The verdict with what would settle it (``inflang.results.settle``: seeds needed at 80% power, in words)."""
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
        if is_model_quantity(claim.metric) and value.units < 2:
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
    if no_width(value):
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
    its share of alpha (``inflang.results.sequential``)."""
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
        ceiling = claim.metric in CEILING_OF or is_noise_ceiling(claim.metric)
        reliability.append(rows(reliability_of(claim.metric)) if ceiling else None)
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
    return [p[claim.trend.axis] for p in cells if claim.trend.axis in p and matches(p, claim.where)]


def claim_cells(claim: Claim, cells: Sequence[tuple[str, Params]]) -> set[str]:
    """The cells a claim rests on: those matching ``where``, and for a contrast those at its two values."""
    kept = {c for c, p in cells if matches(p, claim.where)}
    if claim.contrast is not None:
        axis, sides = claim.contrast.axis, (claim.contrast.better, claim.contrast.than)
        kept = {c for c, p in cells if c in kept and axis in p and any(same(p[axis], v) for v in sides)}
    return kept


def _subjects(claim: Claim) -> set[str]:
    """Whose health a claim's verdict depends on: a model quantity the model's; a ground-truth quantity the
    model's and the ground truth's; an agreement metric those and its estimators'."""
    if is_model_quantity(claim.metric):
        return {MODEL}
    if ground_metric(claim.metric):
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
