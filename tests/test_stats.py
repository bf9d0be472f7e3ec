"""Known answers for inflang.results.stats and inflang.results.intervals, by simulation (numpy only): the noise
ceiling against the oracle's correlation, and the coverage of the pooled interval against a known population mean."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from inflang.results import intervals, stats
from inflang.results.pooling import SeedRows, difference, level
from runners.metrics import noise_ceiling


def test_vectorised_metrics_match_scipy_row_by_row():
    rng = np.random.default_rng(0)
    est = rng.normal(size=(6, 25))
    act = est + rng.normal(size=(6, 25))
    act[:, :5] = np.round(act[:, :5])  # ties
    draws = stats.item_draws(25, 6, seed=3)  # resampled rows repeat items: more ties
    for E, A in ((est, act), (est[0][draws], act[0][draws])):
        for b in range(E.shape[0]):
            e, a = E[b], A[b]
            assert np.isclose(stats.metric_rows("pearson", E, A)[b], sps.pearsonr(e, a).statistic)
            assert np.isclose(stats.metric_rows("spearman", E, A)[b], sps.spearmanr(e, a).statistic)
            assert np.isclose(stats.metric_rows("kendall", E, A)[b], sps.kendalltau(e, a).statistic)
            assert np.isclose(stats.metric_rows("sign_agreement", E, A)[b], np.mean(np.sign(e) == np.sign(a)))
            top = lambda v: set(np.argsort(-np.abs(v), kind="stable")[:5].tolist())  # noqa: E731
            assert stats.metric_rows("top_k_overlap", E, A, 5)[b] == len(top(e) & top(a)) / 5
    assert np.isnan(stats.metric("pearson", np.ones(5), np.arange(5.0)))
    assert np.isnan(stats.metric("spearman", np.arange(2.0), np.arange(2.0)))


def test_average_ranks_are_scipys_exactly():
    """Ties, repeated values, infinities, NaN rows and several leading axes, against scipy.stats.rankdata."""
    rng = np.random.default_rng(1)
    for shape in ((40,), (7, 12), (3, 4, 9), (5, 1), (2, 3)):
        v = np.round(rng.normal(size=shape) * 2) / 2  # many ties
        v.flat[0] = np.inf
        if v.size > shape[-1]:  # more than one row: one of them holds NaN
            v.flat[-1] = -np.inf
            v.reshape(-1, shape[-1])[1, 0] = np.nan
        got, expected = stats.average_ranks(v), sps.rankdata(v, axis=-1)
        assert np.array_equal(got, expected, equal_nan=True), shape


def test_spearman_brown_inverts_the_split_half_correlation():
    """Under y_r = t + e_r with var t / var e = lam, the correlation of the means of a and b repeats is
    lam sqrt(ab) / sqrt((lam a + 1)(lam b + 1)); spearman_brown returns the reliability of all a + b."""
    for a, b in ((1, 1), (1, 2), (2, 2), (2, 3), (4, 4)):
        for lam in (0.05, 0.5, 3.0):
            r = lam * np.sqrt(a * b) / np.sqrt((lam * a + 1) * (lam * b + 1))
            R = a + b
            assert np.isclose(stats.spearman_brown(r, a, b), lam * R / (lam * R + 1))
    assert np.isclose(stats.spearman_brown(0.6, 2, 2), 2 * 0.6 / 1.6)  # the classic formula for equal halves
    assert stats.spearman_brown(1.0, 1, 2) == 1.0
    assert stats.spearman_brown(-0.3, 1, 1) < 0 and stats.ceiling("pearson", stats.spearman_brown(-0.3, 1, 1)) == 0


def test_split_halves_cover_every_split_once():
    assert len(stats.split_halves(2)) == 1
    assert len(stats.split_halves(3)) == 3  # {0}|{1,2}, {1}|{0,2}, {2}|{0,1}
    assert len(stats.split_halves(4)) == 3
    assert len(stats.split_halves(8)) == 35
    assert len(stats.split_halves(12)) == stats.MAX_SPLITS
    for first, rest in stats.split_halves(5):
        assert len(first) == 2 and len(rest) == 3 and sorted(first + rest) == list(range(5))


@pytest.mark.parametrize("repeats", [2, 3, 4, 8])
def test_ceiling_matches_the_oracle_correlation(repeats: int):
    """True effects t_i, repeats y_ir = t_i + sigma e_ir: over many simulated studies, the mean correlation
    of the oracle t with the repeat mean equals the mean noise ceiling within Monte-Carlo error, and a
    predictor that knows t only up to its own noise stays below it."""
    rng = np.random.default_rng(repeats)
    studies, items, sigma = 300, 300, 1.5
    oracle: dict[str, list[float]] = {"pearson": [], "spearman": []}
    other: dict[str, list[float]] = {"pearson": [], "spearman": []}
    ceilings: dict[str, list[float]] = {"pearson": [], "spearman": []}
    for _ in range(studies):
        t = rng.normal(size=items)
        y = t + sigma * rng.normal(size=(repeats, 1, items))
        rows = {r.metric: r.value for r in noise_ceiling(y, replicates=0) if r.test == 0}
        guess = t + 0.7 * rng.normal(size=items)
        for kind in ("pearson", "spearman"):
            oracle[kind].append(stats.metric(kind, t, y[:, 0].mean(0)))
            other[kind].append(stats.metric(kind, guess, y[:, 0].mean(0)))
            ceilings[kind].append(rows[f"noise_ceiling_{kind}"])
            assert np.isclose(rows[f"noise_ceiling_{kind}"] ** (2 if kind == "pearson" else 1),
                              rows[f"reliability_{kind}"] if kind == "pearson" else
                              stats.spearman_from_pearson(np.sqrt(max(rows[f"reliability_{kind}"], 0))))
    for kind in ("pearson", "spearman"):
        o, c = np.array(oracle[kind]), np.array(ceilings[kind])
        error = np.sqrt(o.var() / studies + c.var() / studies)
        assert abs(o.mean() - c.mean()) < 3 * error + 0.002, (kind, o.mean(), c.mean(), error)
        assert np.mean(other[kind]) < c.mean()
        # the old definition, the split-half reliability itself, is not the ceiling: it sits well below
        assert np.mean(c**2) < o.mean() - 0.05


def test_a_deterministic_ground_truth_has_ceiling_one():
    rng = np.random.default_rng(1)
    signal = rng.normal(size=(2, 40))
    rows = {(r.test, r.metric): r.value for r in noise_ceiling(np.stack([signal] * 3), replicates=50)}
    assert rows[(0, "noise_ceiling_spearman")] == pytest.approx(1.0)
    assert rows[(0, "reliability_pearson")] == pytest.approx(1.0)
    assert noise_ceiling(signal[None]) == []


def _simulated_study(rng: np.random.Generator, seeds: int, points: int, items: int, kind: str,
                     seed_sd: float = 0.0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per seed, [T, K] estimates and actual values. sign_agreement: test point t agrees on an item with
    probability p_t ~ Beta(6, 3) (population mean 2/3), shifted by a seed effect; pearson: test point
    correlation tanh(N(atanh 0.6, 0.3)) plus a seed effect on that scale."""
    out = []
    for _ in range(seeds):
        shift = rng.normal(0.0, seed_sd)
        if kind == "sign_agreement":
            p = np.clip(rng.beta(6, 3, size=points) + shift, 0, 1)
            e = rng.normal(size=(points, items))
            agree = rng.random((points, items)) < p[:, None]
            a = np.where(agree, np.sign(e), -np.sign(e)) * rng.random((points, items))
        else:
            rho = np.tanh(rng.normal(np.arctanh(0.6) + shift, 0.3, size=points))
            e = rng.normal(size=(points, items))
            a = rho[:, None] * e + np.sqrt(1 - rho[:, None] ** 2) * rng.normal(size=(points, items))
        out.append((e, a))
    return out


def _population_mean(kind: str, items: int, rng: np.random.Generator) -> float:
    if kind == "sign_agreement":
        return 6 / 9
    rho = np.tanh(rng.normal(np.arctanh(0.6), 0.3, size=40000))
    e = rng.normal(size=(40000, items))
    a = rho[:, None] * e + np.sqrt(1 - rho[:, None] ** 2) * rng.normal(size=(40000, items))
    return float(stats.metric_rows("pearson", e, a).mean())


@pytest.mark.parametrize("kind,seeds", [("sign_agreement", 1), ("pearson", 1), ("pearson", 5)])
def test_pooled_interval_covers_the_population_mean(kind: str, seeds: int):
    """95% intervals cover the population mean in 92-98% of simulated studies (10 test points, 60 items, and
    5 seeds with a seed effect in the last case); an interval over the item replicates alone, which holds the
    test points fixed, covers it far less often."""
    rng = np.random.default_rng(7)
    points, items, B, studies = 10, 60, 200, 300
    truth = _population_mean(kind, items, rng)
    new = old = 0
    for _ in range(studies):
        rows, item_means = [], []
        for s, (e, a) in enumerate(_simulated_study(rng, seeds, points, items, kind,
                                                    seed_sd=0.1 if seeds > 1 else 0.0)):
            values = stats.metric_rows(kind, e, a)
            rows.append(SeedRows(s, list(range(points)), values, None))
            reps = np.stack([stats.metric_rows(kind, e[t][d], a[t][d]) for t in range(points)
                             for d in [stats.item_draws(items, B, int(rng.integers(1 << 30)))]])
            item_means.append(reps.mean(axis=0))
        found = level(rows, kind)
        assert found is not None
        interval = found.interval()
        assert interval is not None
        new += interval.low <= truth <= interval.high
        low, high = np.percentile(np.mean(item_means, axis=0), [2.5, 97.5])
        old += low <= truth <= high
    assert 0.92 <= new / studies <= 0.98, new / studies
    assert old / studies < 0.8, old / studies


def test_paired_difference_of_identical_sides_is_zero_and_unresolved():
    rng = np.random.default_rng(3)
    sides = [SeedRows(s, list(range(4)), rng.normal(size=4), None) for s in range(3)]
    same = difference(("{}", "exact"), sides, sides)
    assert same.estimate == 0 and same.ci_low == 0 and same.ci_high == 0 and same.resolved is None
    shifted = [SeedRows(r.repeat, r.test_ids, r.values + 0.5, None) for r in sides]
    moved = difference(("{}", "exact"), shifted, sides)
    assert moved.ci_low == pytest.approx(0.5) and moved.ci_high == pytest.approx(0.5) and moved.seeds == 3
    assert moved.test_points == 12
    # a shift with no spread around it (its interval a point up to rounding) is not "resolved"
    assert moved.no_spread and moved.resolved is None


def test_a_proportion_of_all_ones_gets_the_exact_binomial_bound():
    """30 of 30 test points flipped: not [1, 1] but Clopper-Pearson's [0.884, 1]."""
    found = level([SeedRows(0, list(range(30)), np.ones(30), None)], "flipped")
    assert found is not None
    interval = found.interval()
    assert interval is not None and interval.low == pytest.approx(0.025 ** (1 / 30)) and interval.high == 1.0
    assert intervals.clopper_pearson(0, 10).high == pytest.approx(1 - 0.025 ** (1 / 10))


def mean_tanh(mean: float, sd: float) -> float:
    """E tanh(Z), Z ~ N(mean, sd^2), by adaptive quadrature."""
    from scipy.integrate import quad

    return float(quad(lambda x: np.tanh(x) * sps.norm.pdf(x, mean, sd), -np.inf, np.inf)[0])


def test_fisher_z_counts_a_correlation_of_one_as_the_most_extreme_other_value():
    found = intervals.fisher_z(np.array([1.0, 0.9, -0.5, -1.0]))
    assert found == pytest.approx([np.arctanh(0.9), np.arctanh(0.9), np.arctanh(-0.5), -np.arctanh(0.9)])
    assert intervals.fisher_mean(0.7, 0.4) == pytest.approx(mean_tanh(0.7, 0.4), abs=1e-9)


def test_two_seeds_give_the_t_interval_with_one_degree_of_freedom():
    rows = [SeedRows(0, [0, 1], np.array([0.5, 0.7]), None), SeedRows(1, [0, 1], np.array([0.7, 0.9]), None)]
    found = level(rows, "pearson")
    assert found is not None and found.df == 1 and found.value == pytest.approx(0.7)
    interval = found.interval()
    assert interval is not None
    # seed means 0.6 and 0.8: se = 0.1, t_1 = 12.7; the high end is clipped at the correlation's 1. A
    # correlation's level joins Fisher's interval: the t interval of the mean of atanh(0.6), atanh(0.8), each end
    # mapped to E tanh(N(end, sd_z^2)) (here by quadrature)
    z = np.arctanh([0.6, 0.8])
    fisher_low = mean_tanh(z.mean() - sps.t.ppf(0.975, 1) * z.std(ddof=1) / np.sqrt(2), z.std(ddof=1))
    assert interval.low == pytest.approx(min(0.7 - sps.t.ppf(0.975, 1) * 0.1, fisher_low)) and interval.high == 1.0
    raw = level(rows, "mean_gap")  # an unbounded metric: the t interval alone
    assert raw is not None and raw.interval() == intervals.Interval(0.7 - sps.t.ppf(0.975, 1) * 0.1,
                                                                    0.7 + sps.t.ppf(0.975, 1) * 0.1)


def test_family_levels_follow_holm_and_bonferroni_by_hand():
    """Three claims with an interval (p 0.01, 0.04, 0.03) and one without: Holm tests 0.01 at 0.05/3 (rejected),
    then 0.03 at 0.05/2 (kept), and every later claim stays at that step's level; Bonferroni puts all at
    1 - 0.05/3, counting only the claims with an interval."""
    p = [0.01, 0.04, float("nan"), 0.03]
    assert intervals.holm_levels(p) == pytest.approx([1 - 0.05 / 3, 0.975, 0.95, 0.975])
    assert intervals.bonferroni_levels(p) == pytest.approx([1 - 0.05 / 3] * 4)


def test_no_spread_is_judged_up_to_rounding_and_before_any_mapping():
    """A difference of 0.1 at every unit, computed as b - a in floating point, has a spread of rounding only: no
    spread (before, its interval of width 5e-17 gave a verdict at p = 1e-12). A noise ceiling whose pooled
    reliability lies at or below 0 maps to [0, 0] but has spread: it gets a verdict (contradicted below 0.5)."""
    import math

    from inflang.results import evidence, intervals

    a = np.array([0.31, 0.47, 0.52, 0.68])
    diffs = (a + 0.1) - a
    rounding = intervals.TMean(float(diffs.mean()), float(diffs.std(ddof=1) / 2), 3, 4)
    assert 0 < rounding.se < 1e-15 and intervals.no_spread(rounding) and evidence.no_width(rounding)
    ceiling = intervals.Mapped(intervals.TMean(-0.3, 0.05, 3, 4), lambda r: math.sqrt(max(r, 0.0)))
    found = ceiling.interval()
    assert found is not None and found.low == found.high == 0.0
    assert not intervals.no_spread(ceiling) and not evidence.no_width(ceiling)
    assert not intervals.no_spread(intervals.TMean(0.5, 0.0, 3, 4, binomial=(2, 4)))  # exact: always has width
    assert intervals.width_is_rounding(0.09999999999999998, 0.10000000000000003)
    assert not intervals.width_is_rounding(0.1, 0.1 + 1e-9)
