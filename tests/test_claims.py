"""Claims: verdicts on simulated metric tables with known answers, end to end on logistic regression, and
validation errors that point at the claim."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from inflang.claims import evaluate_one
from inflang.cli import app
from inflang.errors import StudyError
from inflang.spec.claims import Claim
from inflang.store import Store
from inflang.validate import load_study
from tests.helpers import rows

runner = CliRunner()


def fake_study(path: Path, table: dict[tuple[tuple[tuple[str, float], ...], str], list[float]], seeds: int = 4,
               points: int = 8, items: int = 40, noise: float = 0.05, seed: int = 0) -> Store:
    """A database with one cell per (swept values, seed) and, per estimator, per-test-point metric rows and
    item replicates around the given true mean: no training at all."""
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
                                      "replicates": replicates.tolist()}}, 0.0, None)
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
    """Test points that differ far more than their item noise: most of the spread is real; item noise as
    large as the spread: little of it is."""
    rng = np.random.default_rng(1)
    values = rng.normal(0.5, 0.3, 12)
    claim = Claim(name="c", metric="spearman", estimator="exact", between_test_points={"at_least": 0.5})
    store = one_cell(tmp_path / "b.duckdb", values, values[:, None] + rng.normal(0, 0.02, (12, 300)))
    real = judged(store, claim)
    assert real.verdict == "supported" and real.estimate > 0.9
    store.close()
    noisy = one_cell(tmp_path / "n.duckdb", values, values[:, None] + rng.normal(0, 0.3, (12, 300)))
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
                        "top_k changes nothing": "unresolved",  # the same model twice: a difference of exactly 0
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
    from inflang.pooling import SeedRows

    return [SeedRows(repeat, sorted(v), np.array([v[t] for t in sorted(v)]), None) for v in values.values()]


def test_one_missing_test_point_keeps_the_others_paired():
    """One seed, the same 10 test points at two sweep points, one undefined at the second: the 9 shared ones
    pair (a test-point effect shared by both points cancels), rather than falling back to Welch."""
    from inflang.claims import evaluate_rows
    from inflang.pooling import SeedRows

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
    from inflang.pooling import SeedRows, difference

    left = [SeedRows(0, [0, 1, 2], np.array([1.0, 1.1, 1.2]), None),
            SeedRows(1, [0, 1, 2], np.array([5.0, 5.1, 5.2]), None)]
    right = [SeedRows(0, [0, 1, 2], np.array([0.0, 0.1, 0.2]), None)]
    d = difference(("{}", "e"), left, right)
    assert d.estimate == pytest.approx(1.0) and d.seeds == 1 and d.test_points == 3


def test_a_correlation_of_one_everywhere_is_not_a_proportion():
    """Exact influence on a linear model: Spearman 1 at every test point. Its interval is the data's (no width,
    and said so), not the binomial bound of a proportion, so at_least 0.95 is supported."""
    from inflang.claims import evaluate_rows
    from inflang.pooling import SeedRows

    by_point = {"{}": {"exact": [SeedRows(0, list(range(30)), np.ones(30), None)]}}
    claim = Claim(name="c", metric="spearman", estimator="exact", at_least=0.95)
    (v,) = evaluate_rows([claim], [by_point], [None])
    assert v.verdict == "supported" and v.ci_low == 1.0 and "no width" in v.detail


def test_trend_ranks_count_every_swept_value():
    """A sweep over 1, 2, 3 whose middle cell did not finish: the step from 1 to 3 is two ranks."""
    from inflang.claims import evaluate_rows
    from inflang.pooling import SeedRows

    by_point = {json.dumps({"x": x}): {"e": [SeedRows(s, [0, 1], np.array([0.1 * x + 0.01 * s] * 2), None)
                                             for s in range(3)]} for x in (1, 3)}
    claim = Claim(name="c", metric="spearman", estimator="e", trend={"axis": "x", "direction": "up"})
    cells = [{"x": x} for x in (1, 2, 3)]
    (v,) = evaluate_rows([claim], [by_point], [None], cells=cells)
    assert v.estimate == pytest.approx(0.1)  # 0.2 over two ranks, not one
