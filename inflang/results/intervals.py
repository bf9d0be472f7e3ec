"""Intervals and tests for every number inflang prints: one definition, used by the cell and sweep rows, claims,
``inflang compare`` and the report (docs/language.md, "Statistics"). numpy and scipy only.

The data are nested: seeds (training runs), test points within a seed, training points (items) within a test
point. An interval is computed from the **top level** only, which carries the variance of every level below it
exactly once (the sample variance of cluster means is unbiased for the variance of the cluster mean, wherever
the variance lies): the units are the seeds when the numbers rest on two or more, else the test points of the
one seed (then the interval is about that trained model, not about training seeds).

- ``TMean``: a linear combination theta = sum_a c_a mean_u(y_{a,u}) of arms a (sweep points, or estimator
  differences at a point) measured on units u. Paired when every arm has the same units (seeds always pair on
  the seeds all arms have), judged on the units' ids, not on which values are finite: d_u = sum_a c_a y_{a,u}
  over the shared units finite in every arm, theta = mean d, se = sd(d) / sqrt(n), t with n - 1 degrees of
  freedom (no interval below 2 such units). Otherwise Welch: se^2 = sum_a c_a^2 s_a^2 / n_a,
  Welch-Satterthwaite degrees of freedom.
  Student's t quantiles make the interval exact for normal unit values at any n >= 2, so 2 seeds give an
  honest (wide, t_1 = 12.7) interval rather than a bootstrap's narrow one. Levels of bounded metrics are
  clipped to their range; a level of a 0/1 quantity (e.g. ``flipped``) is at least as wide as the exact
  Clopper-Pearson interval of its pooled count. A level of a correlation (values in [-1, 1]) is the union of that
  interval and Fisher's: with z_u = atanh(d_u) (a unit value of exactly +-1, whose z is infinite, counted as the
  most extreme z among the units inside the bounds), mean zbar, sd s_z, the t interval zbar +- q s_z / sqrt(n) of
  the mean z mapped to the mean correlation as E tanh(N(., s_z^2)) at each end, which follows the skew of values
  near the bound and, unlike tanh(zbar), is about the mean correlation (tanh(mean z) lies above it).
- ``Share``: the share of the spread of a metric between test points that is real rather than item noise,
  sigma_b^2 / (sigma_b^2 + sigma_e^2), estimated as 1 - B / A with A = sum_c sum_t (y_ct - mean_c y)^2
  T_c / (T_c - 1) (E = sum_c T_c (sigma_b^2 + W)) and B = sum_c sum_t w_ct (the item-bootstrap variances). Test
  points are clusters, by id: a test point that several cells (sweep points, seeds) share carries its effect
  into each of them, so the delete-one-test-point jackknife over the K distinct test points (each deletion
  recomputing the cell means it touches) gives the estimate (bias-corrected, K theta - (K - 1) mean
  theta_(k), at most 1) and its standard error; the interval is Student's t on K - 1 degrees of freedom, at
  most 1.
- ``p_value``: the smallest alpha at which the (1 - alpha) interval excludes a threshold (the dual of the
  interval, for every kind); ``holm`` adjusts a family of claims (Holm 1979).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from inflang.results.stats import scipy_special, scipy_stats

LEVEL = 0.95

@dataclass(frozen=True)
class Interval:
    low: float
    high: float

    def excludes(self, value: float) -> bool:
        return value < self.low or value > self.high


def clopper_pearson(successes: int, trials: int, level: float = LEVEL) -> Interval:
    """The exact binomial interval of a proportion (e.g. 30 of 30: [0.884, 1])."""
    alpha = 1 - level
    beta = scipy_stats().beta
    low = 0.0 if successes == 0 else float(beta.ppf(alpha / 2, successes, trials - successes + 1))
    high = 1.0 if successes == trials else float(beta.ppf(1 - alpha / 2, successes + 1, trials - successes))
    return Interval(low, high)


@functools.lru_cache(maxsize=4096)
def t_quantile(level: float, df: float) -> float:
    """The two-sided Student's t quantile of a ``level`` interval on ``df`` degrees of freedom."""
    return float(scipy_special().stdtrit(df, 1 - (1 - level) / 2))  # as scipy.stats.t.ppf computes it


_NODES, _WEIGHTS = np.polynomial.hermite_e.hermegauss(40)
_WEIGHTS = _WEIGHTS / _WEIGHTS.sum()


def fisher_mean(z: float, sd: float) -> float:
    """E tanh(Z) for Z ~ N(z, sd^2) (Gauss-Hermite, 40 nodes): the mean correlation of units whose Fisher z is
    normal with mean z and standard deviation sd (below tanh(z): tanh is concave above 0)."""
    return float((np.tanh(z + sd * _NODES) * _WEIGHTS).sum())


@dataclass(frozen=True)
class TMean:
    """theta with standard error ``se`` on ``df`` degrees of freedom (Student's t)."""

    value: float
    se: float
    df: float
    units: int  # how many independent units (seeds or test points) it rests on
    dropped: int = 0  # units left out because an arm did not have them (pairing on the shared ones)
    bounds: tuple[float, float] | None = None
    binomial: tuple[int, int] | None = None  # (successes, trials) of a 0/1 quantity's pooled count
    paired: bool = False  # the arms paired on their shared units (else Welch over independent arms)
    fisher: tuple[float, float, float] | None = None  # (mean, se, sd) of atanh of the unit values (a correlation)
    at_bound: tuple[int, int] | None = None  # (units whose every value lies at a bounded metric's bound, units)

    @property
    def crowded(self) -> bool:
        """More than ``AT_BOUND`` of the units have every value exactly at the bound while the units still differ:
        the statistic depends on how far the few others fall, which they show too rarely for an interval to
        cover."""
        return self.at_bound is not None and self.at_bound[0] > AT_BOUND * self.at_bound[1] \
            and not no_spread(self)

    def interval(self, level: float = LEVEL) -> Interval | None:
        if not (math.isfinite(self.value) and math.isfinite(self.se) and self.df >= 1):
            return None
        q = t_quantile(level, self.df)
        low, high = self.value - q * self.se, self.value + q * self.se
        if self.fisher is not None and all(math.isfinite(x) for x in self.fisher) and not no_spread(self):
            z, z_se, z_sd = self.fisher
            low, high = min(low, fisher_mean(z - q * z_se, z_sd)), max(high, fisher_mean(z + q * z_se, z_sd))
        if self.binomial is not None:
            exact = clopper_pearson(*self.binomial, level)
            low, high = min(low, exact.low), max(high, exact.high)
        if self.bounds is not None:
            low, high = max(low, self.bounds[0]), min(high, self.bounds[1])
        return Interval(low, high)


@dataclass(frozen=True)
class Share:
    """The real share of the between-test-point spread (module docstring): the jackknife estimate over test
    points and its standard error; ``spread`` (A) and ``noise`` (B) as summed over every cell."""

    estimate: float
    se: float
    clusters: int  # K: distinct test points
    spread: float
    noise: float
    units: int  # (cell, test point) pairs

    @property
    def value(self) -> float:
        return self.estimate

    @property
    def df(self) -> float:
        return self.clusters - 1

    def interval(self, level: float = LEVEL) -> Interval | None:
        if not (math.isfinite(self.estimate) and math.isfinite(self.se) and self.clusters >= 2):
            return None
        q = t_quantile(level, self.df)
        return Interval(self.estimate - q * self.se, min(self.estimate + q * self.se, 1.0))


@dataclass(frozen=True)
class Mapped:
    """An increasing function of another statistic (the noise ceiling of a pooled reliability): its value and
    interval are the function of the other's."""

    inner: TMean | Share
    function: Callable[[float], float]

    @property
    def value(self) -> float:
        return self.function(self.inner.value)

    @property
    def units(self) -> int:
        return self.inner.units

    def interval(self, level: float = LEVEL) -> Interval | None:
        found = self.inner.interval(level)
        return None if found is None else Interval(self.function(found.low), self.function(found.high))


Statistic = TMean | Share | Mapped

NO_SPREAD = 1e-12  # a spread below this, relative to the values, is rounding: the units all gave the same value


def no_spread(statistic: Statistic) -> bool:
    """Whether the statistic's interval has no width up to rounding: every unit gave the same value (or the same
    difference). Judged on the statistic itself, before any mapping (a noise ceiling's root maps every
    reliability at or below 0 to 0) or bound; an exact binomial interval always has width."""
    if isinstance(statistic, Mapped):
        return no_spread(statistic.inner)
    if isinstance(statistic, Share):
        return math.isfinite(statistic.value) and statistic.noise <= NO_SPREAD * statistic.spread
    if statistic.binomial is not None or not (math.isfinite(statistic.value) and math.isfinite(statistic.se)):
        return False
    return statistic.se <= NO_SPREAD * max(1.0, abs(statistic.value))


def width_is_rounding(low: float, high: float) -> bool:
    """Whether an interval [low, high] is a point up to rounding (``no_spread`` for a bare interval)."""
    return high - low <= NO_SPREAD * max(1.0, abs(low), abs(high))


def p_value(statistic: Statistic, threshold: float) -> float:
    """The smallest alpha whose (1 - alpha) interval excludes ``threshold`` (two-sided; 1 when even a point
    interval does not; NaN without an interval)."""
    if statistic.interval(LEVEL) is None:
        return math.nan
    plain = math.isfinite(threshold) and (isinstance(statistic, Share) and threshold < 1.0 or isinstance(
        statistic, TMean) and statistic.fisher is None and statistic.binomial is None and (
            statistic.bounds is None or statistic.bounds[0] < threshold < statistic.bounds[1]))
    if plain and isinstance(statistic, TMean | Share) and statistic.se > 0:
        # a t interval: it excludes the threshold once t_{1-a/2} < |value - threshold| / se
        gap = abs(statistic.value - threshold) / statistic.se
        return min(max(2 * float(scipy_special().stdtr(statistic.df, -gap)), 1e-12), 1.0)  # 2 P(T > gap)
    low, high = 1e-12, 1.0 - 1e-12
    if _excludes(statistic, 1 - low, threshold):
        return low
    if not _excludes(statistic, 1 - high, threshold):
        return 1.0
    for _ in range(60):
        mid = (low + high) / 2
        if _excludes(statistic, 1 - mid, threshold):
            high = mid
        else:
            low = mid
    return high


def _excludes(statistic: Statistic, level: float, threshold: float) -> bool:
    interval = statistic.interval(level)
    return interval is not None and interval.excludes(threshold)


def holm_levels(p_values: Sequence[float], level: float = LEVEL) -> list[float]:
    """Per claim, the confidence level of its interval under Holm's step-down procedure for the family: the
    claim with the i-th smallest p (i = 0, 1, ...) is tested at alpha / (m - i) while every smaller p was
    rejected; from the first claim not rejected on, every interval is at the level of that step. The
    verdicts read off these intervals are Holm's decisions, family-wise error <= alpha."""
    alpha = 1 - level
    finite = [i for i, p in enumerate(p_values) if math.isfinite(p)]
    m = len(finite)
    levels = [level] * len(p_values)
    step_level = level
    stopped = False
    for rank, i in enumerate(sorted(finite, key=lambda j: p_values[j])):
        if not stopped:
            step_level = 1 - alpha / (m - rank)
            stopped = p_values[i] >= alpha / (m - rank)
        levels[i] = step_level
    return levels


def bonferroni_levels(p_values: Sequence[float], level: float = LEVEL) -> list[float]:
    """Every claim's interval at 1 - alpha / m, m the claims with a finite p (an interval), as Holm's:
    simultaneous coverage >= 1 - alpha for the m claims."""
    count = sum(math.isfinite(p) for p in p_values)
    return [1 - (1 - level) / max(count, 1)] * len(p_values)


def interval_text(value: float | None, low: float | None = None, high: float | None = None,
                  level: float | None = None) -> str:
    """0.856 [0.71, 0.95], with its level when that is not 95% (" (97.50%)"); '-' for a missing or NaN value."""
    if value is None or math.isnan(value):
        return "-"
    text = f"{value:.3f}" if low is None or high is None else f"{value:.3f} [{low:.2f}, {high:.2f}]"
    return text + (f" ({100 * level:.2f}%)" if level is not None and abs(level - LEVEL) > 1e-9 else "")


# --- builders --------------------------------------------------------------------------------------------

Arm = tuple[float, Mapping[Hashable, float]]  # (coefficient, unit -> value)
MIN_TEST_POINTS = 10  # distinct test points below which ``share`` gives no interval
AT_BOUND = 0.5  # above this share of a bounded level's units exactly at the bound, no interval (``TMean.crowded``)


def fisher_z(values: np.ndarray) -> np.ndarray:
    """atanh of correlations, a value of exactly +-1 (whose z is infinite) counted as the most extreme z among the
    values inside the bounds, with its sign (all at the bounds: +-7.25, the z of 1 - 1e-6)."""
    inside = values[np.abs(values) < 1]
    cap = float(np.abs(np.arctanh(inside)).max()) if len(inside) else math.atanh(1 - 1e-6)
    return np.clip(np.arctanh(np.clip(values, -1 + 1e-15, 1 - 1e-15)), -cap, cap)


def combine(arms: Sequence[Arm], pair_on_common: bool, bounds: tuple[float, float] | None = None,
            binomial: tuple[int, int] | None = None, fisher: bool = False) -> TMean | None:
    """theta = sum_a c_a mean(y_a) with its t-interval (module docstring). An arm maps each unit it was measured
    on to its value, NaN where the value is undefined; whether arms pair is decided on the units they were
    measured on (their ids), never on which values are finite: they pair when every arm has the same units,
    with ``pair_on_common`` (seeds, matched by design) whenever at least 2 are shared, otherwise (test points)
    when the shared ones are at least 2 and at least half of every arm's. Paired arms use the shared units whose
    value is finite in every arm (the others are counted in ``dropped``); fewer than 2 such units give no
    interval (df 0, ``paired``). Arms whose units mostly differ (each sweep point chose its own test points) are
    independent: Welch over each arm's finite values. None when an arm has no finite value. ``fisher`` (a level
    of a correlation, paired): also the t statistics of atanh(d_u), whose interval joins the raw one."""
    ids = [set(ys) for _, ys in arms]
    values = [{u: float(v) for u, v in ys.items() if math.isfinite(v)} for _, ys in arms]
    if not values or any(not v for v in values):
        return None
    common = ids[0].intersection(*ids[1:])
    identical = all(i == common for i in ids)
    mostly_shared = len(common) >= 2 and all(2 * len(common) >= len(i) for i in ids)
    if identical or (len(common) >= 2 and pair_on_common) or mostly_shared:
        units = sorted((u for u in common if all(u in v for v in values)), key=repr)
        d = np.array([sum(c * v[u] for (c, _), v in zip(arms, values, strict=True)) for u in units])
        n = len(d)
        dropped = len(set().union(*values)) - n
        if n < 2:
            return TMean(float(d.mean()) if n else math.nan, math.nan, 0, n, dropped, bounds, binomial, True)
        se = float(d.std(ddof=1) / math.sqrt(n))
        z = fisher_z(d) if fisher else None
        moments = (float(z.mean()), float(z.std(ddof=1) / math.sqrt(n)), float(z.std(ddof=1))) if z is not None \
            else None
        return TMean(float(d.mean()), se, n - 1, n, dropped, bounds, binomial, True, moments)
    means, parts, dfs = [], [], []
    for (c, _), v in zip(arms, values, strict=True):
        y = np.array(list(v.values()))
        means.append(c * float(y.mean()))
        parts.append(c * c * float(y.var(ddof=1)) / len(y) if len(y) >= 2 else math.nan)
        dfs.append(len(y) - 1)
    total = sum(parts)
    if not math.isfinite(total):
        return TMean(sum(means), math.nan, 0, min(len(v) for v in values), 0, bounds, binomial)
    df = total ** 2 / sum(p * p / d for p, d in zip(parts, dfs, strict=True)) if total > 0 else float(min(dfs))
    return TMean(sum(means), math.sqrt(total), df, min(len(v) for v in values), 0, bounds, binomial)


def share(cells: Sequence[tuple[Sequence[Hashable], np.ndarray, np.ndarray]]) -> Share:
    """The real share of the between-test-point spread from cells' (test ids [T], metric values [T],
    item-bootstrap variances [T]) (test points where both are finite; cells with fewer than 2 are left out):
    1 - B / A, jackknifed over the distinct test ids (module docstring): leaving test point k out of every cell
    that has it recomputes those cells' means and T_c / (T_c - 1) (a cell left with one point drops out).
    NaN estimate and se below ``MIN_TEST_POINTS`` distinct test points."""
    change_a: dict[Hashable, float] = {}
    change_b: dict[Hashable, float] = {}
    total_a, total_b, units = 0.0, 0.0, 0
    for ids, values, within in cells:
        ok = np.isfinite(values) & np.isfinite(within)
        v, w = values[ok], within[ok]
        t = len(v)
        if t < 2:
            continue
        squares = (v - v.mean()) ** 2
        ss = float(squares.sum())
        a_cell, b_cell = ss * t / (t - 1), float(w.sum())
        if t >= 3:  # the sum of squares without point j: ss - squares_j t / (t - 1), over t - 2 degrees of freedom
            a_without = (ss - squares * t / (t - 1)) * (t - 1) / (t - 2)
            b_without = b_cell - w
        else:
            a_without, b_without = np.zeros(t), np.zeros(t)
        kept = [i for i, keep in zip(ids, ok, strict=True) if keep]
        for k, a_k, b_k in zip(kept, a_without, b_without, strict=True):
            change_a[k] = change_a.get(k, 0.0) + float(a_k) - a_cell
            change_b[k] = change_b.get(k, 0.0) + float(b_k) - b_cell
        total_a, total_b, units = total_a + a_cell, total_b + b_cell, units + t
    k = len(change_a)
    d_a, d_b = np.array(list(change_a.values())), np.array([change_b[i] for i in change_a])
    if k < MIN_TEST_POINTS or not total_a > 0 or np.any(total_a + d_a <= 0):
        return Share(math.nan, math.nan, k, total_a, total_b, units)
    whole = 1 - total_b / total_a
    left_out = 1 - (total_b + d_b) / (total_a + d_a)
    estimate = min(k * whole - (k - 1) * float(left_out.mean()), 1.0)
    se = math.sqrt((k - 1) / k * float(((left_out - left_out.mean()) ** 2).sum()))
    return Share(estimate, se, k, total_a, total_b, units)
