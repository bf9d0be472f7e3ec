"""How many seeds would settle a claim: the smallest number n of seeds at which a fixed-seed study, with the
between-seed spread observed so far, reaches a verdict with probability ``POWER`` (80%), for the interval the
claim uses (docs/language.md, "Seeds needed").

- **t** (every claim over seeds): the statistic's unit values d_s (one per seed) have standard deviation sd;
  the interval mean +- t_{n-1} sd / sqrt(n) excludes the threshold with probability
  P(|T'| > t_{1-a/2, n-1}), T' noncentral t with n - 1 degrees of freedom and noncentrality
  delta sqrt(n) / sd, delta = true effect - threshold (taken as the observed one).
- **negligible** (two one-sided tests against +-e): both one-sided tests reject with probability about
  P(T'_+ > t) + P(T'_- > t) - 1, noncentralities (e + delta) sqrt(n) / sd and (e - delta) sqrt(n) / sd.
- **Fisher z** (levels of correlations, whose interval is the union of the t and Fisher intervals): the same
  power on the z scale, from the seeds' atanh values, against the z whose mean correlation E tanh(N(z, s_z^2))
  is the threshold; a union resolves only when both do, so at least the larger n.
- **Clopper-Pearson** (levels of 0/1 metrics): the exact interval of the pooled count over n seeds of m trials
  each excludes the threshold with probability sum_k Binomial(k; n m, p) [CP(k, n m) excludes it] (the
  union with the t interval: at least the larger n).
Planning for the observed effect is optimistic where the observed effect is a chance high (the winner's
curse); the seeds are a guide to the scale of the work, not a promise.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from inflang.results.intervals import t_quantile
from inflang.results.stats import scipy_stats

POWER = 0.8
MAX_SEEDS = 1000  # beyond this, "more than 1000"
MIN_SEEDS = 3  # a claim over seeds needs at least 3: with 2, a t interval's width is mostly chance


def t_power(delta: float, sd: float, n: int, level: float) -> float:
    """P(the two-sided t interval over n unit values of sd excludes the threshold), true shift delta."""
    if sd <= 0:
        return 1.0 if delta != 0 else 0.0
    q = t_quantile(level, n - 1)
    nct = scipy_stats().nct
    ncp = abs(delta) * math.sqrt(n) / sd
    return float(nct.sf(q, n - 1, ncp) + nct.cdf(-q, n - 1, ncp))


def tost_power(delta: float, sd: float, margin: float, n: int, level: float) -> float:
    """P(the two-sided interval lies inside (-margin, +margin)), true effect delta (|delta| < margin)."""
    if sd <= 0:
        return 1.0 if abs(delta) < margin else 0.0
    q = t_quantile(level, n - 1)
    nct = scipy_stats().nct
    upper = nct.sf(q, n - 1, (margin - delta) * math.sqrt(n) / sd)
    lower = nct.sf(q, n - 1, (margin + delta) * math.sqrt(n) / sd)
    return max(0.0, float(upper + lower - 1))


def cp_power(p: float, trials_per_seed: int, n: int, threshold: float, level: float) -> float:
    """P(the Clopper-Pearson interval of n seeds' pooled count excludes the threshold), true proportion p. The
    exact interval of k ones in N lies above t when P(Binomial(N, t) >= k) < alpha / 2 and below it when
    P(Binomial(N, t) <= k) < alpha / 2."""
    total = n * trials_per_seed
    k = np.arange(total + 1)
    binom = scipy_stats().binom
    half = (1 - level) / 2
    excludes = (binom.sf(k - 1, total, threshold) < half) | (binom.cdf(k, total, threshold) < half)
    return float(binom.pmf(k, total, p)[excludes].sum())


def smallest(power_at: Callable[[int], float], start: int = MIN_SEEDS) -> int | None:
    """The smallest n >= start with power_at(n) >= POWER, by doubling then bisection (power grows with n for t
    intervals; a 0/1 level's saws a little with n, so there the count is about the smallest); None beyond
    ``MAX_SEEDS``."""
    if power_at(start) >= POWER:
        return start
    low, high = start, min(2 * start, MAX_SEEDS)
    while power_at(high) < POWER:
        if high == MAX_SEEDS:
            return None
        low, high = high, min(2 * high, MAX_SEEDS)
    while high - low > 1:
        mid = (low + high) // 2
        if power_at(mid) >= POWER:
            high = mid
        else:
            low = mid
    return high


def seeds_to_resolve(delta: float, sd: float, level: float) -> int | None:
    """Seeds at which a t interval resolves a true shift ``delta`` from its threshold with 80% power."""
    if delta == 0:
        return None
    return smallest(lambda n: t_power(delta, sd, n, level))


def seeds_to_negligible(delta: float, sd: float, margin: float, level: float) -> int | None:
    """Seeds at which the interval lies inside +-margin with 80% power, true effect delta; None when
    |delta| >= margin (it would not become negligible)."""
    if abs(delta) >= margin:
        return None
    return smallest(lambda n: tost_power(delta, sd, margin, n, level))


def seeds_to_resolve_proportion(p: float, trials_per_seed: int, threshold: float, level: float) -> int | None:
    """Seeds at which the Clopper-Pearson interval excludes ``threshold`` with 80% power, true proportion p."""
    if p == threshold or trials_per_seed < 1:
        return None
    return smallest(lambda n: cp_power(p, trials_per_seed, n, threshold, level))
