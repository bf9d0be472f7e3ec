"""Claims: verdicts on simulated metric tables with known answers, end to end on logistic regression, and
validation errors that point at the claim."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps
from typer.testing import CliRunner

from inflang.cli import app
from inflang.compiling.validate import load_study
from inflang.errors import StudyError
from inflang.results import intervals
from inflang.results.claims import evaluate_one
from inflang.results.store import Store
from inflang.spec.claims import Claim
from tests.helpers import rows

runner = CliRunner()


def fake_study(path: Path, table: dict[tuple[tuple[tuple[str, float], ...], str], list[float]], seeds: int = 4,
               points: int = 8, items: int = 40, noise: float = 0.05, seed: int = 0, seconds: float = 0.0) -> Store:
    """A database with one cell per (swept values, seed) and, per estimator, per-test-point metric rows and
    item replicates around the given true mean (each task timed at ``seconds``): no training at all."""
    rng = np.random.default_rng(seed)
    store = Store(path)
    cells, links = [], []
    for (params, estimator), (mean,) in table.items():
        swept = dict(params)
        for repeat in range(seeds):
            cell_id = f"{json.dumps(swept, sort_keys=True)}-{repeat}"
            if (cell_id, repeat, 0, swept) not in cells:
                cells.append((cell_id, repeat, 0, swept))
            task = f"{cell_id}-{estimator}"
            links.append((cell_id, "metrics", estimator, task))
            seed_shift = rng.normal(0, noise)
            values = mean + seed_shift + rng.normal(0, noise, points)
            replicates = values[:, None] + rng.normal(0, noise, (points, 200))
            store.write_task(task, "metrics", {}, {
                "metric_rows": {"test_index": list(range(points)), "metric": ["spearman"] * points,
                                "value": values.tolist(), "n_pairs": [items] * points,
                                "ci_low": [None] * points, "ci_high": [None] * points},
                "metric_replicates": {"test_index": list(range(points)), "metric": ["spearman"] * points,
                                      "replicates": replicates.tolist()}}, seconds, None)
    store.record_study("fake", "h", "", "", cells, links)
    return store


def judged(store: Store, claim: Claim):
    """The claim evaluated on the fake study, on a connection held for this read only."""
    with store.reading() as con:
        return evaluate_one(con, "fake", claim)


def verdict(store: Store, **claim) -> str:
    return judged(store, Claim(name="c", metric="spearman", **claim)).verdict


def test_each_form_is_supported_contradicted_or_unresolved_where_it_should_be(tmp_path: Path):
    d = "model.depth"
    table = {(((d, 1),), "exact"): [0.9], (((d, 2),), "exact"): [0.7], (((d, 3),), "exact"): [0.5],
             (((d, 1),), "flat"): [0.6], (((d, 2),), "flat"): [0.6], (((d, 3),), "flat"): [0.6],
             (((d, 1),), "grad_dot"): [0.3], (((d, 2),), "grad_dot"): [0.3], (((d, 3),), "grad_dot"): [0.3],
             (((d, 1),), "twin"): [0.6], (((d, 2),), "twin"): [0.6], (((d, 3),), "twin"): [0.6]}
    store = fake_study(tmp_path / "f.duckdb", table)
    down, up = {"axis": d, "direction": "down"}, {"axis": d, "direction": "up"}
    assert verdict(store, estimator="exact", trend=down) == "supported"
    assert verdict(store, estimator="exact", trend=up) == "contradicted"
    assert verdict(store, estimator="flat", trend=down) == "unresolved"
    assert verdict(store, estimator="exact", contrast={"axis": d, "better": 1, "than": 3}) == "supported"
    assert verdict(store, estimator="exact", contrast={"axis": d, "better": 3, "than": 1}) == "contradicted"
    assert verdict(store, estimator="flat", contrast={"axis": d, "better": 3, "than": 1}) == "unresolved"
    assert verdict(store, compare={"better": "exact", "than": "grad_dot"}) == "supported"
    assert verdict(store, compare={"better": "grad_dot", "than": "exact"}) == "contradicted"
    assert verdict(store, compare={"better": "flat", "than": "twin"}) == "unresolved"  # the same means
    assert verdict(store, estimator="exact", at_least=0.5, where={d: 1}) == "supported"
    assert verdict(store, estimator="exact", at_least=0.98, where={d: 1}) == "contradicted"
    assert verdict(store, estimator="exact", at_least=0.9, where={d: 1}) == "unresolved"
    assert verdict(store, estimator="grad_dot", at_most=0.4) == "supported"
    result = judged(store, Claim(name="c", metric="spearman", estimator="exact",
                                 trend=down))
    assert result.estimate == pytest.approx(-0.2, abs=0.03) and result.seeds == 4 and result.test_points == 96
    pair = judged(store, Claim(name="c", metric="spearman", estimator="exact",
                               contrast={"axis": d, "better": 1, "than": 3}))
    assert pair.test_points == 64  # the two compared cells' 4 seeds x 8 points, not the third cell's
    missing = judged(store, Claim(name="c", metric="spearman", estimator="exact",
                                  at_least=0.5, where={d: 7}))
    assert missing.verdict == "not evaluable"
    store.close()


def test_trend_ranks_mixed_integer_and_float_axis_values_in_numeric_order(tmp_path: Path):
    """A weight-decay sweep written [0, 0.001, 0.01] mixes an int with floats: ranks follow the numbers."""
    w = "training.weight_decay"
    table = {(((w, 0),), "exact"): [0.5], (((w, 0.001),), "exact"): [0.7], (((w, 0.01),), "exact"): [0.9]}
    store = fake_study(tmp_path / "m.duckdb", table)
    up = judged(store, Claim(name="c", metric="spearman", estimator="exact",
                             trend={"axis": w, "direction": "up"}))
    assert up.verdict == "supported" and up.estimate == pytest.approx(0.2, abs=0.03)
    assert verdict(store, estimator="exact", at_most=0.5) == "contradicted"
    store.close()


def one_cell(path: Path, values: np.ndarray, replicates: np.ndarray) -> Store:
    """A database with one cell whose estimator 'exact' has these per-test-point values and replicates."""
    store = Store(path)
    points = len(values)
    store.write_task("t", "metrics", {}, {
        "metric_rows": {"test_index": list(range(points)), "metric": ["spearman"] * points,
                        "value": values.tolist(), "n_pairs": [50] * points, "ci_low": [None] * points,
                        "ci_high": [None] * points},
        "metric_replicates": {"test_index": list(range(points)), "metric": ["spearman"] * points,
                              "replicates": replicates.tolist()}}, 0.0, None)
    store.record_study("fake", "h", "", "", [("c0", 0, 0, {})], [("c0", "metrics", "exact", "t")])
    return store


def test_between_test_points_sees_real_spread(tmp_path: Path):
    """Test points that differ far more than their item noise: most of the spread is real; item noise twice as
    large as the spread: little of it is."""
    rng = np.random.default_rng(1)
    values = rng.normal(0.5, 0.3, 12)
    claim = Claim(name="c", metric="spearman", estimator="exact", between_test_points={"at_least": 0.5})
    store = one_cell(tmp_path / "b.duckdb", values, values[:, None] + rng.normal(0, 0.02, (12, 300)))
    real = judged(store, claim)
    assert real.verdict == "supported" and real.estimate > 0.9
    store.close()
    noisy = one_cell(tmp_path / "n.duckdb", values, values[:, None] + rng.normal(0, 0.6, (12, 300)))
    weak = judged(noisy, claim)
    assert weak.verdict in ("contradicted", "unresolved") and weak.estimate < 0.5
    noisy.close()


CONVEX = """\
study: convex
dataset: {name: iris, test_size: 30}
model: {arch: logreg}
training: {optimizer: lbfgs, lr: 1.0, epochs: 200, weight_decay: 0.01}
estimators: [{name: exact, damping: 0.0}, {name: grad_dot}]
test_points: {count: 6}
ground_truth: {protocol: loo, solver: newton, removals: {select: random, k: 40}}
metrics: {names: [spearman], top_k: 10}
sweep:
  metrics.top_k: [5, 10]
claims:
  - {name: exact beats gradient similarity, metric: spearman, compare: {better: exact, than: grad_dot}}
  - {name: gradient similarity beats exact, metric: spearman, compare: {better: grad_dot, than: exact}}
  - {name: top_k changes nothing, metric: spearman, estimator: exact,
     contrast: {axis: metrics.top_k, better: 10, than: 5}}
  - {name: linear models are accurate, metric: spearman, estimator: exact, at_least: 0.95}
"""


def test_claims_end_to_end_on_logistic_regression(write, tmp_path: Path):
    db = tmp_path / "c.duckdb"
    study = write("c.yaml", CONVEX)
    result = runner.invoke(app, ["run", str(study), "--db", str(db)])
    assert result.exit_code == 0, result.output
    verdicts = dict(rows(db, "SELECT claim, verdict FROM claims WHERE study = 'convex'"))
    assert verdicts == {"exact beats gradient similarity": "supported",
                        "gradient similarity beats exact": "contradicted",
                        "top_k changes nothing": "not evaluable",  # the same model twice: exactly 0, no spread
                        "linear models are accurate": "supported"}
    assert "claims: verdict" in result.output and "supported" in result.output
    # editing a claim reruns nothing but the claim evaluation
    edited = write("c.yaml", CONVEX.replace("at_least: 0.95", "at_least: 0.999999"))
    again = runner.invoke(app, ["run", str(edited), "--db", str(db)])
    assert again.exit_code == 0 and "ran 0 tasks" in again.output
    assert dict(rows(db, "SELECT claim, verdict FROM claims"))["linear models are accurate"] == "contradicted"
    listing = runner.invoke(app, ["claims", "convex", "--db", str(db)])
    assert listing.exit_code == 0 and listing.output.count("supported") >= 1
    assert runner.invoke(app, ["claims", "nope", "--db", str(db)]).exit_code == 2


@pytest.mark.parametrize(("claim", "where", "message"), [
    ("{name: a, metric: spearmen, estimator: exact, at_least: 0.5}", "claims.0.metric",
     "'spearmen' is not a quantity this study produces"),
    ("{name: a, metric: spearman, estimator: lissa, at_least: 0.5}", "claims.0.estimator",
     "no estimator labelled 'lissa'"),
    ("{name: a, metric: spearman, estimator: exact, trend: {axis: model.width, direction: down}}",
     "claims.0.trend.axis", "'model.width' is not swept"),
    ("{name: a, metric: spearman, estimator: exact, contrast: {axis: metrics.top_k, better: 7, than: 5}}",
     "claims.0.contrast.better", "no cell has metrics.top_k = 7"),
    ("{name: a, metric: spearman, estimator: exact, at_least: 0.5, where: {metrics.top_k: 3}}",
     "claims.0.where.metrics.top_k", "the sweep gives metrics.top_k no value 3"),
    ("{name: a, metric: spearman, at_least: 0.5}", "claims.0.metric", "is a metric of each estimator"),
    ("{name: a, metric: hessian_top_eigenvalue, trend: {axis: metrics.top_k, direction: up}}", "claims.0.metric",
     "not a quantity this study produces"),
    ("{name: a, metric: spearman, estimator: exact, at_least: 0.5, at_most: 0.9}", "claims.0",
     "give exactly one of"),
])
def test_claims_that_name_what_the_study_lacks_are_errors_with_positions(write, claim: str, where: str,
                                                                          message: str):
    text = CONVEX.split("claims:")[0] + f"claims:\n  - {claim}\n"
    with pytest.raises(StudyError) as info:
        load_study(write("bad.yaml", text))
    problem = info.value.problems[0]
    assert problem.path.startswith(where) and message in problem.message, (problem.path, problem.message)
    assert problem.position.line == text.count("\n")  # the claim's line


def rows_of(values: dict[str, dict[int, float]], repeat: int = 0) -> list:
    from inflang.results.pooling import SeedRows

    return [SeedRows(repeat, sorted(v), np.array([v[t] for t in sorted(v)]), None) for v in values.values()]


def test_one_missing_test_point_keeps_the_others_paired():
    """One seed, the same 10 test points at two sweep points, one undefined at the second: the 9 shared ones
    pair (a test-point effect shared by both points cancels), rather than falling back to Welch."""
    from inflang.results.claims import evaluate_rows
    from inflang.results.pooling import SeedRows

    rng = np.random.default_rng(0)
    shared = rng.normal(0, 0.3, 10)  # each test point's own difficulty, the same at both points
    a = 0.5 + shared + rng.normal(0, 0.01, 10)
    b = 0.6 + shared + rng.normal(0, 0.01, 10)
    b[3] = np.nan
    by_point = {json.dumps({"x": 0}): {"e": [SeedRows(0, list(range(10)), a, None)]},
                json.dumps({"x": 1}): {"e": [SeedRows(0, list(range(10)), b, None)]}}
    claim = Claim(name="c", metric="spearman", estimator="e", contrast={"axis": "x", "better": 1, "than": 0})
    (v,) = evaluate_rows([claim], [by_point], [None])
    assert v.verdict == "supported" and v.ci_high - v.ci_low < 0.05, v  # Welch would span the shared spread
    assert "1 test point left out" in v.detail


def test_compare_matches_seeds_by_repeat_and_never_merges_them():
    """One side with 2 seeds, the other with 1: the matched seed's test points are compared, not a mixture."""
    from inflang.results.pooling import SeedRows, difference

    left = [SeedRows(0, [0, 1, 2], np.array([1.0, 1.1, 1.2]), None),
            SeedRows(1, [0, 1, 2], np.array([5.0, 5.1, 5.2]), None)]
    right = [SeedRows(0, [0, 1, 2], np.array([0.0, 0.1, 0.2]), None)]
    d = difference(("{}", "e"), left, right)
    assert d.estimate == pytest.approx(1.0) and d.seeds == 1 and d.test_points == 3


def test_a_correlation_of_one_everywhere_is_not_a_proportion():
    """Exact influence on a linear model: Spearman 1 at every test point. Its pooled interval is the data's (no
    width), not the binomial bound of a proportion; a claim on it has no spread to decide on."""
    from inflang.results.claims import evaluate_rows
    from inflang.results.pooling import SeedRows, level

    rows = [SeedRows(0, list(range(30)), np.ones(30), None)]
    found = level(rows, "spearman")
    assert found is not None and found.interval() == intervals.Interval(1.0, 1.0)
    claim = Claim(name="c", metric="spearman", estimator="exact", at_least=0.95)
    (v,) = evaluate_rows([claim], [{"{}": {"exact": rows}}], [None])
    assert v.verdict == "not evaluable" and v.estimate == 1.0 and "no spread" in v.detail


def test_trend_ranks_count_every_swept_value():
    """A sweep over 1, 2, 3 whose middle cell did not finish: the step from 1 to 3 is two ranks."""
    from inflang.results.claims import evaluate_rows
    from inflang.results.pooling import SeedRows

    by_point = {json.dumps({"x": x}): {"e": [SeedRows(s, [0, 1], np.array([0.1 * x + 0.01 * s] * 2), None)
                                             for s in range(3)]} for x in (1, 3)}
    claim = Claim(name="c", metric="spearman", estimator="e", trend={"axis": "x", "direction": "up"})
    cells = [{"x": x} for x in (1, 2, 3)]
    (v,) = evaluate_rows([claim], [by_point], [None], cells=cells)
    assert v.estimate == pytest.approx(0.1)  # 0.2 over two ranks, not one


def one_seed_points(values: dict[int, np.ndarray], estimator: str = "e", repeat: int = 0) -> dict:
    """In-memory rows (``ByPoint``): sweep point x -> one seed whose test points 0..T-1 have these values."""
    from inflang.results.pooling import SeedRows

    return {json.dumps({"x": x}): {estimator: [SeedRows(repeat, list(range(len(v))), np.asarray(v, float), None)]}
            for x, v in values.items()}


def test_a_zero_one_metric_gets_the_exact_binomial_interval_pooled_over_every_point():
    """flipped = 1 at all 10 test points of two identical sweep points: the level is a proportion of 20 of 20,
    whose exact (Clopper-Pearson) interval is scipy's [0.832, 1], so at_least 0.99 is unresolved; the t interval
    over the test points alone is [1, 1] and said "supported"."""
    from inflang.results.claims import evaluate_rows

    by_point = one_seed_points({0: np.ones(10), 1: np.ones(10)}, "exact")
    claim = Claim(name="c", metric="flipped", estimator="exact", at_least=0.99)
    (v,) = evaluate_rows([claim], [by_point], [None])
    exact = sps.binomtest(20, 20).proportion_ci(0.95, method="exact")
    assert v.verdict == "unresolved", v
    assert v.ci_low == pytest.approx(exact.low) and v.ci_high == 1.0


def test_a_zero_one_level_over_two_points_covers_its_proportion():
    """One seed, two sweep points, 10 test points each, every test point flipping with probability p: the 95%
    interval of the level covers p in at least 93% of 300 simulated studies, and at_least p is (falsely)
    supported in at most 5% (before: 18% coverage at p = 0.99, the t interval of all ones having no width)."""
    from inflang.results.claims import decide, gather

    rng = np.random.default_rng(11)
    for p in (0.05, 0.5, 0.9, 0.99):
        claim = Claim(name="c", metric="flipped", estimator="exact", at_least=p)
        covered = supported = 0
        for _ in range(300):
            flips = (rng.random((2, 10)) < p).astype(float)
            evidence = gather(claim, one_seed_points({0: flips[0], 1: flips[1]}, "exact"))
            assert evidence.value is not None
            interval = evidence.value.interval()
            assert interval is not None
            covered += interval.low <= p <= interval.high
            supported += decide(evidence).verdict == "supported"
        assert covered / 300 >= 0.93 and supported / 300 <= 0.05, (p, covered, supported)


def test_test_points_pair_on_their_ids_whichever_are_undefined():
    """One seed, the same 10 test points at two sweep points (a large test-point effect both share), 3 undefined
    at one point and 4 others at the other: only 3 shared test points are finite in both, fewer than half of
    each point's finite ones, yet the points share their test points, so they pair on those 3 (scipy's paired t
    interval), not Welch over the two points' unpaired test points."""
    from inflang.results.claims import evaluate_rows

    rng = np.random.default_rng(5)
    shared = rng.normal(0, 0.3, 10)
    a = 0.5 + shared + rng.normal(0, 0.01, 10)
    b = 0.6 + shared + rng.normal(0, 0.01, 10)
    a[[0, 1, 2]] = np.nan
    b[[3, 4, 5, 6]] = np.nan
    claim = Claim(name="c", metric="spearman", estimator="e", contrast={"axis": "x", "better": 1, "than": 0})
    (v,) = evaluate_rows([claim], [one_seed_points({0: a, 1: b})], [None])
    paired = sps.ttest_rel(b[7:], a[7:]).confidence_interval(0.95)
    assert (v.ci_low, v.ci_high) == pytest.approx((paired.low, paired.high)), v
    assert v.verdict == "supported" and "7 test points left out" in v.detail


def test_fewer_than_two_shared_finite_test_points_are_not_evaluable():
    """The same 4 test points at both points, each undefined at one point or the other but one: no pairs to
    take a spread from, so not evaluable, and the detail says why (not a Welch interval over unpaired points)."""
    from inflang.results.claims import evaluate_rows

    a = np.array([0.5, 0.6, np.nan, np.nan])
    b = np.array([0.7, np.nan, 0.8, 0.9])
    claim = Claim(name="c", metric="spearman", estimator="e", contrast={"axis": "x", "better": 1, "than": 0})
    (v,) = evaluate_rows([claim], [one_seed_points({0: a, 1: b})], [None])
    assert v.verdict == "not evaluable" and v.ci_low is None, v
    assert "fewer than 2 test points" in v.detail and "finite at every point" in v.detail, v.detail


def test_an_interval_of_no_width_is_not_evaluable():
    """Spearman exactly 1 at every test point of the one seed: the data show no spread, so at_least 0.95 gets
    no verdict (and no p-value to count in a family); a difference of exactly 0 between two identical models
    neither."""
    from inflang.results.claims import evaluate_rows

    ones = one_seed_points({0: np.ones(30)}, "exact")
    claim = Claim(name="c", metric="spearman", estimator="exact", at_least=0.95)
    (v,) = evaluate_rows([claim], [ones], [None])
    assert v.verdict == "not evaluable" and "no spread" in v.detail and np.isnan(v.p_value), v
    same = np.random.default_rng(2).normal(0.5, 0.1, 8)
    contrast = Claim(name="c", metric="spearman", estimator="e", contrast={"axis": "x", "better": 1, "than": 0})
    (d,) = evaluate_rows([contrast], [one_seed_points({0: same, 1: same})], [None])
    assert d.verdict == "not evaluable" and "no spread" in d.detail, d


def seeded_points(means: dict[int, float], seeds: int = 5, points: int = 10, noise: float = 0.01,
                  seed: int = 0) -> dict:
    """In-memory rows: sweep point x -> ``seeds`` seeds of ``points`` test points around the given mean."""
    from inflang.results.pooling import SeedRows

    rng = np.random.default_rng(seed)
    return {json.dumps({"x": x}): {"e": [SeedRows(s, list(range(points)), m + rng.normal(0, noise, points), None)
                                         for s in range(seeds)]} for x, m in means.items()}


def test_a_trend_with_a_step_resolved_against_it_is_not_supported():
    """Means 0.50 / 0.90 / 0.55 along x = 1, 2, 3: the rank slope (0.55 - 0.50) / 2 is resolved up, but the step
    2 -> 3 falls by 0.35 (resolved: scipy's paired t interval over the seeds' differences), so 'trend up' is
    unresolved and says which step; 'trend down' is contradicted; a monotone 0.50 / 0.52 / 0.55 is supported."""
    from inflang.results.claims import evaluate_rows

    by_point = seeded_points({1: 0.50, 2: 0.90, 3: 0.55})
    up = Claim(name="c", metric="spearman", estimator="e", trend={"axis": "x", "direction": "up"})
    down = Claim(name="c", metric="spearman", estimator="e", trend={"axis": "x", "direction": "down"})
    (v,) = evaluate_rows([up], [by_point], [None])
    assert v.ci_low > 0 and v.verdict == "unresolved", v
    two, three = ([r.mean() for r in by_point[json.dumps({"x": x})]["e"]] for x in (2, 3))
    step = sps.ttest_rel(three, two).confidence_interval(0.95)
    assert f"not monotone: x 2 -> 3 falls, {np.mean(three) - np.mean(two):.3f} " \
           f"[{step.low:.2f}, {step.high:.2f}]" in v.detail, v.detail
    (w,) = evaluate_rows([down], [by_point], [None])
    assert w.verdict == "contradicted", w
    (m,) = evaluate_rows([up], [seeded_points({1: 0.50, 2: 0.52, 3: 0.55})], [None])
    assert m.verdict == "supported" and "not monotone" not in m.detail, m


def test_fixed_test_points_make_a_seed_level_interval_about_them():
    """select: indices (the same test points in every seed): the interval over seeds is about those test points,
    and the verdict says so; other selections do not."""
    from inflang.results.claims import evaluate_rows

    by_point = seeded_points({1: 0.5})
    claim = Claim(name="c", metric="spearman", estimator="e", at_least=0.4)
    (fixed,) = evaluate_rows([claim], [by_point], [None], test_points="indices")
    assert fixed.verdict == "supported"
    assert "about these fixed test points (select: indices), not the population of test points" in fixed.detail
    (drawn,) = evaluate_rows([claim], [by_point], [None], test_points="random")
    assert "select: indices" not in drawn.detail


def test_most_test_points_at_the_bound_give_no_interval():
    """One seed whose Spearman is exactly 1 at 7 of 10 test points: the mean depends on how far the other 3
    fall, which they show too rarely for an interval to cover (benchmarks/coverage.py); the pooled row has no
    interval and a level claim is not evaluable, saying why. At 4 of 10 both are given."""
    from inflang.results.claims import evaluate_rows
    from inflang.results.pooling import SeedRows, pool

    claim = Claim(name="c", metric="spearman", estimator="exact", at_least=0.9)
    for ones, given in ((7, False), (4, True)):
        values = np.array([1.0] * ones + [0.97, 0.95, 0.99, 0.93, 0.96, 0.98][:10 - ones])
        rows = [SeedRows(0, list(range(10)), values, None)]
        pooled = pool(("{}", "exact", "spearman"), rows)
        assert (pooled.ci_low is not None) == given and pooled.value == pytest.approx(values.mean())
        (v,) = evaluate_rows([claim], [{"{}": {"exact": rows}}], [None])
        assert (v.verdict == "supported") == given, v
        if not given:
            assert v.verdict == "not evaluable" and "7 of 10 test points give spearman exactly at its bound" in \
                v.detail
    # a comparison counts the test points where both estimators sit at 1: exact is 1 everywhere, grad_dot at one
    # of 10, so their differences are not crowded at a bound
    grad_dot = np.array([1.0, 0.5, 0.6, 0.4, 0.55, 0.7, 0.45, 0.5, 0.6, 0.65])
    rows = {"{}": {"exact": [SeedRows(0, list(range(10)), np.ones(10), None)],
                   "grad_dot": [SeedRows(0, list(range(10)), grad_dot, None)]}}
    compare = Claim(name="c", metric="spearman", compare={"better": "exact", "than": "grad_dot"})
    (v,) = evaluate_rows([compare], [rows], [None])
    assert v.verdict == "supported"
    rows["{}"]["grad_dot"] = [SeedRows(0, list(range(10)), np.array([1.0] * 7 + [0.5, 0.6, 0.4]), None)]
    (v,) = evaluate_rows([compare], [rows], [None])
    assert v.verdict == "not evaluable" and "at every point and estimator the claim compares" in v.detail


def test_differences_over_seeds_count_each_seeds_test_points_at_the_bound():
    """Three seeds whose Spearman is exactly 1 at 7 of 10 test points at both depths: no seed's mean is 1, but
    the contrast's paired differences are mostly exact zeros, which its interval cannot follow (the coverage
    table: 89-92% before this rule); the claim is not evaluable and says so. A level over the same rows is
    judged on the seeds' means, where it covers (96-97%)."""
    from inflang.results.claims import evaluate_rows
    from inflang.results.pooling import SeedRows

    def rows(shift: float) -> list[SeedRows]:
        rng = np.random.default_rng(int(shift * 100))
        return [SeedRows(s, list(range(10 * s, 10 * s + 10)),
                         np.concatenate([np.ones(7), 0.9 - shift + 0.03 * rng.random(3)]), None) for s in range(3)]

    by_point = {json.dumps({"d": 1}): {"exact": rows(0.0)}, json.dumps({"d": 2}): {"exact": rows(0.1)}}
    contrast = Claim(name="c", metric="spearman", estimator="exact", contrast={"axis": "d", "better": 1, "than": 2})
    (v,) = evaluate_rows([contrast], [by_point], [None])
    assert v.verdict == "not evaluable" and "21 of 30 (seed, test point) pairs give spearman exactly at its bound" in \
        v.detail, v
    level = Claim(name="l", metric="spearman", estimator="exact", at_least=0.9)
    (v,) = evaluate_rows([level], [by_point], [None])
    assert v.verdict != "not evaluable", v


def test_share_counts_a_test_point_that_cells_share_once():
    """Two sweep points of one seed with the same 12 test points: the share is jackknifed over the 12 test points
    (not 24 independent ones), each left out of both cells, checked against the formula written out by hand."""
    from inflang.results.intervals import share

    rng = np.random.default_rng(3)
    effect = rng.normal(0, 0.3, 12)
    cells = [(list(range(12)), 0.5 + effect + rng.normal(0, 0.1, 12), rng.uniform(0.005, 0.02, 12))
             for _ in range(2)]
    found = share(cells)

    def ratio(kept: list[tuple[np.ndarray, np.ndarray]]) -> float:  # 1 - B / A over cells, written out
        a = sum(((v - v.mean()) ** 2).sum() * len(v) / (len(v) - 1) for v, _ in kept)
        return 1 - sum(w.sum() for _, w in kept) / a

    whole = ratio([(v, w) for _, v, w in cells])
    left_out = np.array([ratio([(np.delete(v, k), np.delete(w, k)) for _, v, w in cells]) for k in range(12)])
    assert found.clusters == 12
    assert found.value == pytest.approx(12 * whole - 11 * left_out.mean())
    assert found.se == pytest.approx(np.sqrt(11 / 12 * ((left_out - left_out.mean()) ** 2).sum()))
    interval = found.interval()
    q = sps.t.ppf(0.975, 11)
    assert interval is not None and interval.low == pytest.approx(found.value - q * found.se)
    assert interval.high == pytest.approx(min(found.value + q * found.se, 1.0))
    few = share([(list(range(9)), v[:9], w[:9]) for _, v, w in cells])
    assert few.clusters == 9 and few.interval() is None  # fewer than 10 distinct test points


def test_an_effect_inside_the_smallest_effect_that_matters_is_negligible(tmp_path: Path):
    """Two estimators with the same means: with smallest_effect 0.1 their difference is negligible (its interval
    lies inside +-0.1); with 0.001 it is unresolved; a flat trend is negligible against 0.2. A slope of -0.2 per
    step resolved below 0 is negligible against a smallest effect of 0.5, and the detail says it was resolved;
    without smallest_effect nothing changes."""
    d = "model.depth"
    table = {(((d, x),), name): [mean] for x in (1, 2, 3)
             for name, mean in (("flat", 0.6), ("twin", 0.6), ("exact", 1.1 - 0.2 * x))}
    store = fake_study(tmp_path / "n.duckdb", table)
    same = {"better": "flat", "than": "twin"}
    assert verdict(store, compare=same, smallest_effect=0.1) == "negligible"
    assert verdict(store, compare=same, smallest_effect=0.001) == "unresolved"
    assert verdict(store, compare=same) == "unresolved"
    down = {"axis": d, "direction": "down"}
    assert verdict(store, estimator="flat", trend=down, smallest_effect=0.2) == "negligible"
    small = judged(store, Claim(name="c", metric="spearman", estimator="exact", trend=down, smallest_effect=0.5))
    assert small.verdict == "negligible" and "resolved below 0, but by less than the smallest effect" in small.detail
    assert verdict(store, estimator="exact", trend=down) == "supported"
    assert verdict(store, estimator="exact", trend=down, smallest_effect=0.1) == "supported"
    store.close()
    with pytest.raises(ValueError, match="smallest_effect applies to trend, contrast and compare"):
        Claim(name="c", metric="spearman", estimator="exact", at_least=0.5, smallest_effect=0.1)
