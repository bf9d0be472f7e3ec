"""The brittleness protocol (Ilyas et al. 2022; Yang et al. 2023): a known answer on logistic regression and
its pieces checked by hand."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from inflang.cli import app
from inflang.compiling.validate import load_study
from inflang.errors import StudyError
from runners.protocols.brittleness import first_flip, median_flip, support_order
from tests.helpers import rows

runner = CliRunner()

STUDY = """\
study: brittle
dataset: {name: iris, test_size: 30}
model: {arch: logreg}
training: {optimizer: sgd, lr: 0.5, epochs: 300, weight_decay: 0.01}
estimators: [{name: exact, damping: 0.0}]
test_points: {select: highest_loss, count: 6}
ground_truth: {protocol: brittleness, steps: 200, k: [1, 2, 4, 8, 16, 32, 64]}
"""


def test_ranked_removals_flip_near_boundary_points_sooner_than_random_ones(write, tmp_path: Path):
    """The highest-loss test points of logistic regression lie near the boundary: removing the training points
    exact influence says support their prediction flips them with fewer removals than a random order does."""
    db = tmp_path / "b.duckdb"
    result = runner.invoke(app, ["run", str(write("b.yaml", STUDY)), "--db", str(db)])
    assert result.exit_code == 0, result.output
    ranked = [v for (v,) in rows(db, "SELECT value FROM metrics WHERE metric = 'flip_k' AND estimator = 'exact' "
                                     "AND test_index IS NOT NULL "
                                     "ORDER BY test_index")]
    random = [v for (v,) in rows(db, "SELECT value FROM metrics WHERE metric = 'random_flip_k' "
                                     "AND test_index IS NOT NULL ORDER BY test_index")]
    assert len(ranked) == len(random) == 6
    median = lambda ks: float(np.median([math.inf if math.isnan(k) else k for k in ks]))  # noqa: E731
    assert median(ranked) < median(random)
    (rate,) = rows(db, "SELECT value FROM metrics WHERE metric = 'flip_rate' AND estimator = 'exact'")[0]
    assert rate >= 0.5
    # each k of each ranking and test point was retrained: 6 points x 2 rankings x 7 values of k
    assert rows(db, "SELECT items FROM ground_truths") == [(6 * 2 * 7,)]
    assert "flip rate" in result.output and "random order flip rate" in result.output


def test_support_order_first_flip_and_median_by_hand():
    scores = np.array([0.3, -0.1, 0.5, 0.0])
    assert support_order(scores, correct=True).tolist() == [2, 0, 3, 1]  # most helpful first
    assert support_order(scores, correct=False).tolist() == [1, 3, 0, 2]  # most harmful first
    assert first_flip(np.array([False, True, True]), [1, 2, 4]) == 2
    assert math.isnan(first_flip(np.array([False, False]), [1, 2]))
    assert median_flip(np.array([2.0, np.nan, 4.0])) == 4.0  # the unflipped point counts as larger than any k
    assert math.isnan(median_flip(np.array([2.0, np.nan, np.nan])))


@pytest.mark.parametrize(("change", "where", "message"), [
    ("k: [1, 500]", "ground_truth.k", "more than the"),
    ("measure: margin", "ground_truth.measure", "brittleness measures prediction flips itself"),
    ("by: [lissa]", "ground_truth.by.0", "no estimator labelled 'lissa'"),
])
def test_brittleness_rules(write, change: str, where: str, message: str):
    text = STUDY.replace("k: [1, 2, 4, 8, 16, 32, 64]", change if change.startswith("k:") else
                         f"k: [1, 2], {change}")
    with pytest.raises(StudyError) as info:
        load_study(write("b.yaml", text))
    problem = info.value.problems[0]
    assert problem.path == where and message in problem.message, (problem.path, problem.message)


def test_rows_follow_the_estimator_whatever_the_order_or_label(write, tmp_path: Path):
    """The same ground truth serves studies that list the estimators in another order or under other labels;
    each estimator gets its own rankings' rows, and an estimator left out of ``by`` gets none."""
    db = tmp_path / "b.duckdb"
    first = STUDY.replace("[{name: exact, damping: 0.0}]", "[{name: exact, damping: 0.0}, {name: grad_dot}]")
    swapped = first.replace("study: brittle", "study: swapped").replace(
        "[{name: exact, damping: 0.0}, {name: grad_dot}]", "[{name: grad_dot, label: g}, {name: exact, damping: 0.0}]")
    assert runner.invoke(app, ["run", str(write("a.yaml", first)), "--db", str(db)]).exit_code == 0
    again = runner.invoke(app, ["run", str(write("b.yaml", swapped)), "--db", str(db)])
    assert again.exit_code == 0 and "ran 0 tasks" in again.output  # labels and order are not in any hash
    assert rows(db, "SELECT count(DISTINCT task_hash) FROM cell_tasks WHERE kind = 'ground_truth'") == [(1,)]
    query = ("SELECT test_index, value FROM metrics WHERE metric = 'flip_k' AND study = '{}' AND estimator = '{}' "
             "ORDER BY test_index")
    assert rows(db, query.format("brittle", "grad_dot")) == rows(db, query.format("swapped", "g"))
    assert rows(db, query.format("brittle", "exact")) == rows(db, query.format("swapped", "exact"))
    subset = write("c.yaml", first.replace("study: brittle", "study: subset").replace(
        "k: [1, 2, 4, 8, 16, 32, 64]", "k: [1, 2, 4, 8, 16, 32, 64], by: [exact]"))
    result = runner.invoke(app, ["run", str(subset), "--db", str(db)])
    assert result.exit_code == 0, result.output
    assert rows(db, "SELECT count(*) FROM metrics WHERE study = 'subset' AND estimator = 'grad_dot'") == [(0,)]
