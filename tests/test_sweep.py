"""Sweep expansion: products, unions, and errors that point at the sweep value that made a bad cell."""

from __future__ import annotations

import pytest

from inflang.compiling.validate import load_study
from inflang.errors import StudyError

BASE = """\
study: s
dataset: {name: iris}
model: {arch: mlp, depth: 1, width: 4}
estimators: [{name: exact}]
"""


def test_grid_is_a_cartesian_product(write):
    path = write("s.yaml", BASE + "sweep:\n  model.depth: [1, 2, 3]\n  training.weight_decay: [0.0, 0.01]\n")
    loaded = load_study(path)
    combos = {(c.params["model.depth"], c.params["training.weight_decay"]) for c in loaded.cells}
    assert combos == {(d, w) for d in (1, 2, 3) for w in (0.0, 0.01)}
    assert {c.study.model.depth for c in loaded.cells} == {1, 2, 3}


def test_list_of_grids_is_a_union_without_duplicates(write):
    path = write("s.yaml", BASE + "sweep:\n  - {model.depth: [1, 2]}\n  - {model.depth: [2, 3], model.width: [4]}\n")
    cells = load_study(path).cells
    assert [c.params for c in cells] == [{"model.depth": 1}, {"model.depth": 2},
                                         {"model.depth": 2, "model.width": 4}, {"model.depth": 3, "model.width": 4}]


def test_repeats_multiply_cells_with_distinct_seeds(write):
    loaded = load_study(write("s.yaml", BASE + "repeats: 3\nsweep:\n  model.depth: [1, 2]\n"))
    assert len(loaded.cells) == 6
    assert len({c.cell_id for c in loaded.cells}) == 6
    assert len({c.seed for c in loaded.cells}) == 3


def test_sweeping_list_items_by_index(write):
    loaded = load_study(write("s.yaml", BASE + "sweep:\n  estimators.0.damping: [0.1, 0.01]\n"))
    assert [c.study.estimators[0].damping for c in loaded.cells] == [0.1, 0.01]


def test_invalid_cell_points_at_the_sweep_value(write):
    path = write("s.yaml", BASE + "sweep:\n  model.width: [4, 0]\n")
    with pytest.raises(StudyError) as info:
        load_study(path)
    (problem,) = info.value.problems
    assert (problem.position.line, problem.position.col) == (6, 20)
    assert problem.path == "model.width" and "model.width=0" in problem.message


def test_sweep_path_that_does_not_exist(write):
    path = write("s.yaml", BASE + "sweep:\n  model.dpeth: [1, 2]\n")
    with pytest.raises(StudyError) as info:
        load_study(path)
    problem = info.value.problems[0]
    assert "unknown key 'dpeth'" in problem.message and problem.hint == "did you mean 'depth'?"
    assert problem.position.line == 6


@pytest.mark.parametrize("sweep", ["sweep: {}\n", "sweep:\n  model.depth: []\n", "sweep: []\n",
                                   "sweep:\n  model.depth: 3\n"])
def test_empty_or_malformed_sweeps(write, sweep):
    with pytest.raises(StudyError):
        load_study(write("s.yaml", BASE + sweep))


UNION = """\
study: union
dataset: {name: iris, test_size: 30}
model: {arch: logreg}
training: {optimizer: lbfgs, lr: 1.0, epochs: 100, weight_decay: 0.01}
estimators: [{name: exact, damping: 0.0}]
test_points: {count: 2}
ground_truth: {protocol: loo, removals: {select: random, k: 5}}
sweep:
  - {ground_truth.solver: [newton]}
  - {ground_truth.optimizer: [sgd], ground_truth.lr: [0.1], ground_truth.steps: [10]}
"""


def test_only_cells_have_to_be_valid(write):
    """The file without its sweep (lbfgs with no retraining optimizer) is not a valid study, but every cell of
    the union is: a sweep over options that exclude each other validates."""
    loaded = load_study(write("u.yaml", UNION))
    assert [c.params for c in loaded.cells] == [{"ground_truth.solver": "newton"},
                                                {"ground_truth.optimizer": "sgd", "ground_truth.lr": 0.1,
                                                 "ground_truth.steps": 10}]
    assert loaded.study.study == "union"
    broken = UNION.replace('{ground_truth.optimizer: [sgd], ground_truth.lr: [0.1], ground_truth.steps: [10]}',
                           '{ground_truth.decompose: [true]}')
    with pytest.raises(StudyError) as info:
        load_study(write("b.yaml", broken))
    (problem,) = info.value.problems  # found in one cell only: it names that cell
    assert "lbfgs has no batched retraining rule" in problem.message
    assert "(in the sweep cell ground_truth.decompose=True)" in problem.message


def test_a_problem_of_every_cell_is_reported_once_without_a_cell(write):
    path = write("s.yaml", BASE.replace("depth: 1", "depth: 1, colour: red") + "sweep:\n  model.width: [4, 5]\n")
    with pytest.raises(StudyError) as info:
        load_study(path)
    (problem,) = info.value.problems
    assert "unknown key 'colour'" in problem.message and "sweep cell" not in problem.message
