"""Sequential claims: seeds added round by round, a look after each, and every look's interval at a level that
keeps all looks together at the claim's (docs/language.md, "Run until settled").

The design is Pocock's group-sequential design (Pocock 1977, Biometrika 64:191) with a look at every seed count
n = first, first + 1, ..., last, its one nominal per-look level computed for Student's t. A claim over seeds
has one unit value d_s per seed (a seed's mean, difference or slope); at a look with n seeds its interval is
mean_n +- t_{1-a'/2, n-1} sd_n / sqrt(n), with a' chosen so that

    P(exists n in [first, last]: |T_n| > t_{1-a'/2, n-1}) = alpha,   T_n = sqrt(n) (mean_n - mu) / sd_n,

for normal unit values. T_n = sqrt(n) zbar_n / s_n of standard normal z whatever mu and sigma are, so a' depends
only on (first, last, alpha); it is the alpha-quantile of min_n p_n, the smallest two-sided t p-value along a
path, over ``PATHS`` simulated paths (a fixed generator seed: the same a' on every run). With probability at
least 1 - alpha every look's interval covers the truth at once, so no verdict read at any look (supported,
contradicted, negligible) is false more often than alpha, however the looks stop. Skipped looks (a budget that
ends early, rounds that add several seeds) only lower that chance. Intervals other than t (Fisher's z joined for
correlation levels, Clopper-Pearson for 0/1 metrics, the between-test-point share) take the same per-look level:
there the guarantee is approximate (``benchmarks/sequential.py`` simulates Fisher's union and Clopper-Pearson;
the share is not simulated under repeated looks).

Across a family (``claims_adjust``) a sequential claim enters Holm's or Bonferroni's procedure with its overall
p-value P(min_n p_n <= p) at the look's p, and leaves it with the per-look level of its adjusted alpha.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from inflang.results.intervals import LEVEL

PATHS = 100_000  # simulated paths per design: a' to about +-0.0007 in the overall alpha (Monte-Carlo sd)
DEFAULT_MAX_SEEDS = 20
MAX_SEEDS = 1000  # the most seeds a design may look at (as ``repeats``)


@dataclass(frozen=True)
class Design:
    """The looks of a sequential claim: at every seed count from ``first`` (the study's repeats when it began)
    to ``last`` (``--max-seeds``); ``settled``: the look it stopped at, once it settled (later looks read that
    many seeds)."""

    first: int
    last: int
    settled: int | None = None

    @property
    def seeds(self) -> int:
        """The most seeds a look of this claim reads."""
        return self.last if self.settled is None else min(self.settled, self.last)

    def look_level(self, level: float = LEVEL) -> float:
        """The confidence level of every look's interval that keeps all looks together at ``level``."""
        if self.first >= self.last:
            return level
        return 1.0 - float(np.quantile(_smallest_p(self.first, self.last), 1.0 - level))

    def overall_p(self, p: float) -> float:
        """The overall p-value of a look whose own (fixed-seed) p-value is ``p``: P(min_n p_n <= p) under the
        null, the smallest overall alpha at which the design calls it resolved (NaN stays NaN)."""
        if not math.isfinite(p) or self.first >= self.last:
            return p
        ordered = _smallest_p(self.first, self.last)
        found = float(np.searchsorted(ordered, p, side="right") / ordered.size)
        if found == 0.0:  # below the simulation's resolution: Bonferroni's bound over the looks
            found = min(1.0, (self.last - self.first + 1) * p)
        return max(p, found)

    def describe(self, seeds: int, look: float) -> str:
        stopped = "stopped at its look" if self.settled is not None and seeds == self.settled else "a look"
        return (f"sequential: {stopped} at {seeds} of {self.first}-{self.last} seeds, each look's interval at "
                f"{100 * look:.2f}% so that all looks together err at most as one {100 * LEVEL:.0f}% interval")


@functools.lru_cache(maxsize=32)
def _smallest_p(first: int, last: int) -> np.ndarray:
    """min over n in [first, last] of the two-sided t p-value of n standard normal values, per simulated path,
    sorted (``PATHS`` paths, generator seed 0)."""
    from inflang.results.stats import scipy_stats

    rng = np.random.default_rng(0)
    smallest = np.ones(PATHS)
    n = np.arange(1, last + 1, dtype=np.float64)
    block = max(1_000, 400_000 // last)  # paths at a time: a few block x last arrays of doubles in memory
    for start in range(0, PATHS, block):
        z = rng.standard_normal((min(block, PATHS - start), last))
        total, squares = np.cumsum(z, axis=1), np.cumsum(z * z, axis=1)
        mean = total / n
        sd = np.sqrt(np.maximum(squares - n * mean ** 2, 0.0) / np.maximum(n - 1, 1))
        looks = slice(first - 1, last)
        t = np.abs(mean[:, looks]) * np.sqrt(n[looks]) / sd[:, looks]
        p = 2 * scipy_stats().t.sf(t, n[looks] - 1)
        smallest[start:start + z.shape[0]] = p.min(axis=1)
    return np.sort(smallest)
