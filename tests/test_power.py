"""Seeds needed: the power of each interval against simulation and a textbook value, and what `inflang claims`
says of an unresolved claim (inflang.results.power, inflang.results.settle)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps

from inflang.results import intervals, power
from inflang.results.claims import evaluate_one
from inflang.spec.claims import Claim
from tests.test_claims import fake_study


def simulated_t_power(delta: float, sd: float, n: int, margin: float | None = None, runs: int = 40_000) -> float:
    """The share of simulated studies of n normal unit values whose 95% t interval excludes 0 (or, with a
    margin, lies inside +-margin)."""
    rng = np.random.default_rng(n)
    y = rng.normal(delta, sd, (runs, n))
    half = sps.t.ppf(0.975, n - 1) * y.std(axis=1, ddof=1) / math.sqrt(n)
    low, high = y.mean(axis=1) - half, y.mean(axis=1) + half
    if margin is None:
        return float(np.mean((low > 0) | (high < 0)))
    return float(np.mean((low > -margin) & (high < margin)))


@pytest.mark.parametrize(("delta", "n"), [(0.5, 6), (0.3, 20), (-1.2, 3)])
def test_t_power_matches_simulation(delta: float, n: int):
    assert power.t_power(delta, 1.0, n, 0.95) == pytest.approx(simulated_t_power(delta, 1.0, n), abs=0.01)


def test_tost_power_matches_simulation():
    for delta, n in ((0.0, 20), (0.2, 40)):
        assert power.tost_power(delta, 1.0, 0.6, n, 0.95) == pytest.approx(
            simulated_t_power(delta, 1.0, n, margin=0.6), abs=0.012)


def test_seeds_for_a_half_sd_effect_are_the_textbook_34():
    """One-sample t test, d = 0.5, two-sided alpha 0.05, 80% power: n = 34 (Cohen 1988; G*Power)."""
    assert power.seeds_to_resolve(0.5, 1.0, 0.95) == 34
    assert power.seeds_to_resolve(0.0, 1.0, 0.95) is None
    assert power.seeds_to_resolve(1e-4, 1.0, 0.95) is None  # beyond 1000 seeds


def test_clopper_pearson_power_matches_simulation():
    rng = np.random.default_rng(0)
    p, per_seed, n, threshold = 0.9, 10, 4, 0.75
    ones = rng.binomial(n * per_seed, p, 20_000)
    hits = np.mean([intervals.clopper_pearson(int(k), n * per_seed).excludes(threshold) for k in ones])
    assert power.cp_power(p, per_seed, n, threshold, 0.95) == pytest.approx(hits, abs=0.01)


def test_an_unresolved_claim_says_the_seeds_it_needs_and_their_price(tmp_path: Path):
    """A weak trend over 4 seeds: the claim is unresolved and says how many seeds would resolve it, what they
    cost (3 cells of 2 s a seed) and, with smallest_effect, the seeds to call it negligible or resolve that
    size; the numbers are power.seeds_to_resolve's at the spread of the 4 seeds' slopes."""
    d = "model.depth"
    table = {(((d, x),), "exact"): [0.6 - 0.01 * x] for x in (1, 2, 3)}
    store = fake_study(tmp_path / "s.duckdb", table, noise=0.05, seconds=2.0)
    claim = Claim(name="c", metric="spearman", estimator="exact", trend={"axis": d, "direction": "down"},
                  smallest_effect=0.05)
    with store.reading() as con:
        found = evaluate_one(con, "fake", claim)
    assert found.verdict == "unresolved" and found.seeds == 4
    half = (found.ci_high - found.ci_low) / 2  # type: ignore[operator]
    sd = half / sps.t.ppf(0.975, 3) * 2  # se * sqrt(4)
    assert found.seeds_needed == power.seeds_to_resolve(found.estimate, sd, 0.95)
    assert found.seeds_needed is not None and found.seeds_needed > 4
    assert found.seeds_for_smallest_effect == power.seeds_to_resolve(0.05, sd, 0.95)
    assert found.settle_seconds == pytest.approx((found.seeds_needed - 4) * 6.0)
    assert "would resolve the observed" in found.settle and "more seeds of its cells take about" in found.settle
    assert "to resolve an effect of 0.05" in found.settle
    store.close()


def test_claims_command_prints_what_would_settle_and_plan_asks_for_a_pilot(tmp_path: Path, write):
    from typer.testing import CliRunner

    from inflang.cli import app
    from inflang.results.claims import evaluate

    d = "model.depth"
    store = fake_study(tmp_path / "p.duckdb", {(((d, x),), "exact"): [0.6 - 0.01 * x] for x in (1, 2, 3)},
                       seconds=2.0)
    claim = Claim(name="weak trend", metric="spearman", estimator="exact", trend={"axis": d, "direction": "down"})
    with store.reading() as con:
        verdicts = evaluate(con, "fake", [claim])
    store.write_claims("fake", verdicts)
    shown = CliRunner().invoke(app, ["claims", "fake", "--db", str(tmp_path / "p.duckdb")])
    assert shown.exit_code == 0, shown.output
    assert "to settle 'weak trend':" in shown.output and "more seeds of its cells take about" in shown.output
    study = write("s.yaml", """\
study: pilot
dataset: {name: iris, test_size: 30}
model: {arch: logreg}
training: {optimizer: lbfgs, lr: 1.0, epochs: 50, weight_decay: 0.01}
estimators: [{name: exact}]
test_points: {count: 4}
ground_truth: {protocol: loo, solver: newton, removals: {select: random, k: 10}}
repeats: 3
claims:
  - {name: accurate, metric: spearman, estimator: exact, at_least: 0.9}
""")
    planned = CliRunner().invoke(app, ["plan", str(study), "--db", str(tmp_path / "new.duckdb")])
    assert planned.exit_code == 0, planned.output
    assert "claims: 1 declared; how many seeds settle them follows from the spread between seeds of a pilot run " \
        "(this run is that pilot)" in " ".join(planned.output.split())


def test_a_correlation_level_needs_the_seeds_of_its_fisher_interval_too():
    """A level of Spearman over 4 seeds near its threshold: the count is the larger of the t interval's and
    Fisher's, Fisher's against the z whose mean correlation E tanh(N(z, s_z^2)) is the threshold (found here by
    quadrature and a root finder)."""
    from scipy.integrate import quad
    from scipy.optimize import brentq

    from inflang.results.claims import evaluate_rows
    from inflang.results.pooling import SeedRows

    means = np.array([0.93, 0.88, 0.95, 0.91])
    rows = [SeedRows(s, list(range(5)), np.full(5, m) + np.linspace(-0.01, 0.01, 5), None)
            for s, m in enumerate(means)]
    claim = Claim(name="c", metric="spearman", estimator="exact", at_least=0.9)
    (found,) = evaluate_rows([claim], [{"{}": {"exact": rows}}], [None], with_settle=True)
    assert found.verdict == "unresolved"
    seed_means = np.array([r.mean() for r in rows])
    z = np.arctanh(seed_means)

    def mean_tanh(x: float) -> float:
        return quad(lambda u: np.tanh(u) * sps.norm.pdf(u, x, z.std(ddof=1)), -np.inf, np.inf)[0]

    line = brentq(lambda x: mean_tanh(x) - 0.9, 0.0, 5.0)
    by_t = power.seeds_to_resolve(seed_means.mean() - 0.9, seed_means.std(ddof=1), 0.95)
    by_fisher = power.seeds_to_resolve(z.mean() - line, z.std(ddof=1), 0.95)
    assert by_t is not None and by_fisher is not None
    assert found.seeds_needed == max(by_t, by_fisher)


def test_one_seed_asks_for_a_pilot_and_a_share_for_test_points():
    from inflang.results.claims import evaluate_rows
    from inflang.results.pooling import SeedRows

    rng = np.random.default_rng(2)
    values = 0.5 + rng.normal(0, 0.05, 12)
    rows = [SeedRows(0, list(range(12)), values, values[:, None] + rng.normal(0, 0.05, (12, 100)))]
    level = Claim(name="l", metric="spearman", estimator="exact", at_least=0.5)
    share = Claim(name="s", metric="spearman", estimator="exact", between_test_points={"at_least": 0.5})
    one, spread = evaluate_rows([level, share], [{"{}": {"exact": rows}}] * 2, [None, None], with_settle=True)
    assert one.verdict == "unresolved" and "a pilot of at least 3 seeds" in one.settle
    assert spread.verdict == "unresolved" and "distinct test points would resolve the observed share" in spread.settle
