"""Regression (real-valued targets, squared error): closed forms for linear regression, where influence,
leave-one-out refits and the Kronecker factorisation are all exact or known in closed form."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from inflang.cli import app
from inflang.spec import EkfacEstimator, ExactEstimator, KfacEstimator, LogregModel, SyntheticDataset, TrainingSpec
from runners.curvature import objective_ggn, objective_hessian, spectrum
from runners.data import load_raw, prepare
from runners.estimators import ESTIMATORS, EstimatorInputs
from runners.models import build
from runners.objective import per_example_loss
from runners.train import train
from tests.helpers import rows

runner = CliRunner()
WD = 0.05


@pytest.fixture(scope="module")
def linear():
    spec = SyntheticDataset(name="synthetic", kind="regression", samples=60, features=3, targets=2, noise=0.5,
                            test_size=10)
    data = prepare(spec, load_raw(spec), seed=0, dtype=torch.float64)
    module = build(LogregModel(arch="logreg"), 3, 2, seed=0, dtype=torch.float64)
    trained = train(module, data.x_train, data.y_train, TrainingSpec(optimizer="lbfgs", lr=1.0, epochs=200,
                                                                     weight_decay=WD), 0)
    return module, trained.params, data


def design(x: np.ndarray) -> np.ndarray:
    return np.hstack([x, np.ones((len(x), 1))])


def test_targets_are_real_valued_and_the_loss_is_half_the_squared_error(linear):
    _, _, data = linear
    assert data.y_train.dtype == torch.float64 and data.y_train.shape == (50, 2)
    z = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
    assert float(per_example_loss(z, torch.tensor([[0.0, 4.0]], dtype=torch.float64))) == pytest.approx(2.5)


def test_training_reaches_the_ridge_solution(linear):
    _, params, data = linear
    A, Y, n = design(data.x_train.numpy()), data.y_train.numpy(), 50
    B = np.linalg.solve(A.T @ A / n + WD * np.eye(4), A.T @ Y / n)  # [4, 2]: W^T stacked over the bias
    assert np.allclose(params["0.weight"].numpy(), B[:3].T, atol=1e-8)
    assert np.allclose(params["0.bias"].numpy(), B[3], atol=1e-8)


def closed_form_influence(params, data, damping: float) -> np.ndarray:
    """(1/n) g_test^T (H + damping I)^-1 g_i, with H = (A^T A / n) (x) I + wd I in the flat order of
    (weight [2, 3] row-major, bias [2]), gradients (z - y) (x) [x, 1]."""
    W, b = params["0.weight"].numpy(), params["0.bias"].numpy()
    A, n = design(data.x_train.numpy()), 50

    def grads(x, y):
        r = x @ W.T + b - y  # [N, 2]
        return np.hstack([(r[:, :, None] * x[:, None, :]).reshape(len(x), -1), r])

    M = A.T @ A / n
    H = np.zeros((8, 8))
    for o in range(2):  # weight rows o*3..o*3+2 and bias 6+o see the same input moments
        idx = [o * 3, o * 3 + 1, o * 3 + 2, 6 + o]
        H[np.ix_(idx, idx)] = M
    H += (WD + damping) * np.eye(8)
    xt, yt = data.x_test.numpy()[:3], data.y_test.numpy()[:3]
    return grads(xt, yt) @ np.linalg.solve(H, grads(data.x_train.numpy(), data.y_train.numpy()).T) / n


@pytest.mark.parametrize("name", ["exact", "exact_ggn", "kfac", "ekfac"])
def test_every_curvature_is_the_closed_form_for_linear_regression(linear, name):
    """For a linear model under squared error the Hessian, the Gauss-Newton matrix and its Kronecker
    factorisation A (x) I coincide, so exact, K-FAC and EK-FAC all equal the closed form."""
    module, params, data = linear
    x, y = data.x_train, data.y_train
    curvature = objective_ggn if name == "exact_ggn" else objective_hessian
    inputs = EstimatorInputs(module, params, x, y, data.x_test[:3], data.y_test[:3], "test_loss", WD, 0,
                             spectrum=spectrum(curvature(module, params, x, y, WD)))
    spec = {"exact": ExactEstimator(name="exact", damping=1e-3),
            "exact_ggn": ExactEstimator(name="exact", damping=1e-3, curvature="ggn"),
            "kfac": KfacEstimator(name="kfac", damping=1e-3), "ekfac": EkfacEstimator(name="ekfac", damping=1e-3)}[name]
    ours = ESTIMATORS[spec.name](spec, inputs).numpy()
    expected = closed_form_influence(params, data, 1e-3)
    assert np.abs(ours - expected).max() <= 1e-6 * np.abs(expected).max()


STUDY = """\
study: linreg
dataset: {name: synthetic, kind: regression, samples: 60, features: 3, targets: 2, noise: 0.5, test_size: 10}
model: {arch: logreg}
training: {optimizer: lbfgs, lr: 1.0, epochs: 200, weight_decay: 0.05}
estimators: [{name: exact, damping: 0.0}, {name: ekfac, damping: 0.0}]
test_points: {count: 3}
ground_truth: {protocol: loo, solver: newton, removals: {select: all}}
"""


def test_leave_one_out_matches_ridge_refits_and_influence_ranks_them(write, tmp_path: Path):
    db = tmp_path / "r.duckdb"
    result = runner.invoke(app, ["run", str(write("r.yaml", STUDY)), "--db", str(db)])
    assert result.exit_code == 0, result.output
    spec = SyntheticDataset(name="synthetic", kind="regression", samples=60, features=3, targets=2, noise=0.5,
                            test_size=10)
    ((seed,),) = rows(db, "SELECT seed FROM cells")
    from inflang.compiling.hashing import derive_seed

    data = prepare(spec, load_raw(spec), seed=derive_seed(seed, "split"), dtype=torch.float64)
    A, Y, n = design(data.x_train.numpy()), data.y_train.numpy(), 50
    ids = list(data.train_ids)

    def fit(keep):
        return np.linalg.solve(A[keep].T @ A[keep] / n + WD * np.eye(4), A[keep].T @ Y[keep] / n)

    def test_loss(B, t):
        x = np.append(data.x_test.numpy()[t], 1.0)
        return 0.5 * float(((x @ B - data.y_test.numpy()[t]) ** 2).sum())

    base = fit(np.ones(n, dtype=bool))
    by_test = {int(r): t for t, r in enumerate(data.test_ids)}
    actual = rows(db, "SELECT test_index, train_index, actual FROM influence WHERE estimator = 'exact'")
    assert len(actual) == 3 * n
    for test_index, train_index, value in actual:
        keep = np.ones(n, dtype=bool)
        keep[ids.index(train_index)] = False
        t = by_test[test_index]
        assert value == pytest.approx(test_loss(fit(keep), t) - test_loss(base, t), abs=1e-9)
    spearman = rows(db, "SELECT estimator, value FROM metrics WHERE metric = 'spearman' AND test_index IS NULL "
                        "AND estimator IS NOT NULL")
    assert all(v > 0.95 for _, v in spearman)
    assert rows(db, "SELECT test_accuracy FROM models") == [(None,)]


@pytest.mark.parametrize("change, message", [
    ("estimators: [{name: trak}]", "trak is defined for classifiers"),
    ("ground_truth: {protocol: loo, measure: margin, removals: {select: random, k: 3}}", "margin compares class"),
    ("test_points: {select: misclassified}", "misclassified needs classes"),
])
def test_what_regression_refuses(write, change: str, message: str):
    key = change.split(":")[0]
    text = "\n".join(line for line in STUDY.splitlines() if not line.startswith(key + ":")) + "\n" + change + "\n"
    result = runner.invoke(app, ["validate", str(write("bad.yaml", text))])
    assert result.exit_code == 2 and message in result.output


def test_an_mlp_regression_study_runs_end_to_end(write, tmp_path: Path):
    text = STUDY.replace("model: {arch: logreg}", "model: {arch: mlp, depth: 1, width: 6}").replace(
        "training: {optimizer: lbfgs, lr: 1.0, epochs: 200, weight_decay: 0.05}",
        "training: {optimizer: adam, lr: 0.02, epochs: 300, weight_decay: 0.01, "
        "early_stopping: {validation: 0.2, patience: 5, every: 20}}").replace(
        "ground_truth: {protocol: loo, solver: newton, removals: {select: all}}",
        "ground_truth: {protocol: pbrf, steps: 50, damping: 0.1, removals: {select: random, k: 5}}").replace(
        "{name: exact, damping: 0.0}, {name: ekfac, damping: 0.0}",
        "{name: exact, damping: 0.1, curvature: ggn}, {name: kfac}, {name: lissa, damping: 0.1, recursion_depth: "
        "200, scale: 20}")
    db = tmp_path / "m.duckdb"
    result = runner.invoke(app, ["run", str(write("m.yaml", text)), "--db", str(db)])
    assert result.exit_code == 0, result.output
    values = [v for (v,) in rows(db, "SELECT actual FROM influence WHERE actual IS NOT NULL")]
    assert values and np.all(np.isfinite(values))
