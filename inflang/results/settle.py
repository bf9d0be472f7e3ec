"""What would settle an unresolved claim: the seeds a fixed-seed study would need, at the spread between seeds
observed so far, to reach a verdict with 80% power (``inflang.results.power``), for the claim's own interval: Student's
t over seeds, joined by Fisher's z for levels of correlations and by Clopper-Pearson for levels of 0/1 metrics
(the larger count, since a union resolves only when both do); for ``between_test_points`` the distinct test
points its jackknife needs. docs/language.md, "Seeds needed".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from inflang.results import intervals, power


@dataclass(frozen=True)
class Settle:
    seeds_needed: int | None = None  # to resolve the observed effect (from its threshold) with 80% power
    seeds_to_negligible: int | None = None  # with smallest_effect: to call the observed effect negligible
    seeds_for_smallest_effect: int | None = None  # with smallest_effect: to resolve an effect of that size
    note: str = ""  # in words (without the price, which needs the database)


def _seeds_text(n: int | None) -> str:
    return f"more than {power.MAX_SEEDS} seeds" if n is None else f"{n} seeds"


def _largest(*counts: int | None) -> int | None:
    """The largest count; None (beyond reach) if any is."""
    return None if any(c is None for c in counts) else max(c for c in counts if c is not None)


def settle(claim: Any, value: intervals.Statistic | None, by_seeds: bool, verdict: str, detail: str,
           level: float, seeds: int, last_look: int | None = None) -> Settle:
    """The seeds (or test points) that would settle a claim whose verdict is unresolved, or not evaluable for
    lack of seeds (``seeds``: those it has); an empty ``Settle`` otherwise. ``last_look``: a sequential claim's
    last look (``inflang.results.sequential``), whose counts past it are named."""
    short_of_seeds = verdict == "not evaluable" and by_seeds and isinstance(value, intervals.TMean) \
        and 2 <= value.units < power.MIN_SEEDS and "seeds" in detail
    if not (verdict == "unresolved" or short_of_seeds) or value is None:
        return Settle()
    threshold = float(claim.threshold)
    if isinstance(value, intervals.Share):
        return _test_points(value, threshold, level)
    if isinstance(value, intervals.Mapped):
        return Settle(note="seeds needed are not computed for a noise ceiling's level (its interval is the "
                      "reliability's, mapped)")
    if not by_seeds:
        return Settle(note="a pilot of at least 3 seeds would measure the spread between seeds, from which the "
                      "seeds needed follow (one seed: the interval is over its test points)")
    slope = value.interval(level)
    if detail.startswith("not monotone") and slope is not None and slope.excludes(0.0):
        return Settle(note="the slope is resolved but an adjacent step is resolved against it: more seeds would "
                      "not make it monotone")
    n, sd = value.units, value.se * math.sqrt(value.units)
    delta = value.value - threshold
    if not sd > 0 and value.binomial is None:
        return Settle(note="the seeds gave the same value: no spread to plan more seeds from")
    if delta == 0:
        return Settle(note=f"the observed value is exactly at {threshold:g}: no number of seeds resolves an effect "
                      "there")
    needed = _largest(power.seeds_to_resolve(delta, sd, level), *_fisher(value, threshold, level),
                      *_binomial(value, threshold, level))
    rough = " (rough: the spread of 2 seeds)" if n < power.MIN_SEEDS else ""
    parts = [f"{_seeds_text(needed)} would resolve the observed {delta:+.3g} from {threshold:g} with 80% power "
             f"at the spread between seeds seen (sd {sd:.3g}){rough}; now {seeds}"]
    negligible = smallest_size = None
    e = getattr(claim, "smallest_effect", None)
    if e is not None:
        negligible = power.seeds_to_negligible(delta, sd, e, level)
        smallest_size = power.seeds_to_resolve(e, sd, level)
        parts.append(("an observed effect this large cannot become negligible" if negligible is None and
                      abs(delta) >= e else f"{_seeds_text(negligible)} to call it negligible (inside +-{e:g})")
                     + f"; {_seeds_text(smallest_size)} to resolve an effect of {e:g}")
    note = "; ".join(parts)
    if last_look is not None:  # None below is a count past power.MAX_SEEDS, except an effect too large to vanish
        counts = [("to resolve it", needed, True)] + ([] if e is None else [
            ("to call it negligible", negligible, abs(delta) < e), (f"to resolve an effect of {e:g}", smallest_size,
                                                                   True)])
        note += _past(last_look, [what for what, n, counts_here in counts
                                  if counts_here and (n is None or n > last_look)])
    return Settle(needed, negligible, smallest_size, note)


def _past(last_look: int, past: list[str]) -> str:
    """What a sequential claim's note adds for the counts (``past``, in words) beyond its last look."""
    if not past:
        return ""
    listed = past[0] if len(past) == 1 else ", ".join(past[:-1]) + " and " + past[-1]
    fresh = past[0] in ("to resolve it", "to call it negligible")
    return (f" (counted at each look's level; the seeds {listed} lie past this claim's last look, {last_look} "
            "seeds, which its sequential design fixed" + (
                "; settling it needs a fresh study with a larger --max-seeds, chosen before its first look)"
                if fresh else ")"))


def _fisher(value: intervals.TMean, threshold: float, level: float) -> list[int | None]:
    """A correlation's level: the seeds Fisher's interval needs (on the z scale)."""
    if value.fisher is None or not -1 < threshold < 1:
        return []
    z, _, z_sd = value.fisher
    # Fisher's ends are mean correlations E tanh(N(end, z_sd^2)): the line on the z scale is where that is t
    line = _root(lambda x: intervals.fisher_mean(x, z_sd) - threshold)
    return [power.seeds_to_resolve(z - line, z_sd, level)]


def _root(f: Any) -> float:
    """The x where the increasing f crosses 0."""
    from scipy.optimize import brentq

    low, high = -1.0, 1.0
    while f(low) > 0:
        low *= 2
    while f(high) < 0:
        high *= 2
    return float(brentq(f, low, high, xtol=1e-10))


def _binomial(value: intervals.TMean, threshold: float, level: float) -> list[int | None]:
    """A 0/1 metric's level: the seeds its Clopper-Pearson interval needs, each seed adding its trials."""
    if value.binomial is None or value.units < 1:
        return []
    ones, trials = value.binomial
    per_seed = max(1, round(trials / value.units))
    return [power.seeds_to_resolve_proportion(ones / trials, per_seed, threshold, level)]


def _test_points(value: intervals.Share, threshold: float, level: float) -> Settle:
    """``between_test_points``: the distinct test points at which the jackknife t interval (K - 1 degrees of
    freedom) resolves the observed share from its threshold with 80% power, at the spread seen."""
    k = value.clusters
    needed = power.smallest(lambda m: power.t_power(value.estimate - threshold, value.se * math.sqrt(k), m, level),
                            start=max(intervals.MIN_TEST_POINTS, 2))
    shown = f"more than {power.MAX_SEEDS}" if needed is None else str(needed)
    return Settle(note=f"about {shown} distinct test points would resolve the observed share from {threshold:g} "
                  f"with 80% power (now {k}; more seeds add test points only where each seed selects its own)")
