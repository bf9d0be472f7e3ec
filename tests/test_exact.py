"""Exact influence against a closed form for L2 multinomial logistic regression, written in numpy here."""

from __future__ import annotations

import numpy as np
import torch

from inflang.spec import ExactEstimator, LogregModel, TrainingSpec
from runners.curvature import objective_hessian, spectrum
from runners.estimators.common import EstimatorInputs
from runners.estimators.exact import exact_scores, inverse_eigenvalues
from runners.models import build
from runners.train import train


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def numpy_influence(W: np.ndarray, b: np.ndarray, x: np.ndarray, y: np.ndarray, xt: np.ndarray, yt: np.ndarray,
                    wd: float, damping: float) -> np.ndarray:
    """(1/n) g_test^T (H + damping I)^-1 g_i with theta = [W | b] row by row, all by hand."""
    n, d = x.shape
    C = W.shape[0]
    xa = np.hstack([x, np.ones((n, 1))])
    xta = np.hstack([xt, np.ones((len(xt), 1))])
    theta_dim = C * (d + 1)
    p = softmax(x @ W.T + b)
    H = np.zeros((theta_dim, theta_dim))
    for j in range(n):
        H += np.kron(np.diag(p[j]) - np.outer(p[j], p[j]), np.outer(xa[j], xa[j]))
    H = H / n + wd * np.eye(theta_dim)
    g_train = np.stack([np.kron(p[j] - np.eye(C)[y[j]], xa[j]) for j in range(n)])
    pt = softmax(xt @ W.T + b)
    g_test = np.stack([np.kron(pt[j] - np.eye(C)[yt[j]], xta[j]) for j in range(len(xt))])
    return g_test @ np.linalg.solve(H + damping * np.eye(theta_dim), g_train.T) / n


def test_exact_matches_numpy_closed_form():
    rng = np.random.default_rng(0)
    n, d, C = 40, 3, 3
    x = rng.normal(size=(n, d))
    y = rng.integers(0, C, size=n)
    xt, yt = rng.normal(size=(4, d)), rng.integers(0, C, size=4)
    X, Y = torch.tensor(x), torch.tensor(y)
    module = build(LogregModel(arch="logreg"), d, C, seed=0, dtype=torch.float64)
    wd = 0.05
    trained = train(module, X, Y, TrainingSpec(optimizer="lbfgs", lr=1.0, epochs=200, weight_decay=wd), 0)
    H = objective_hessian(module, trained.params, X, Y, wd)
    for damping in (0.0, 0.01):
        spec = ExactEstimator(name="exact", damping=damping)
        inputs = EstimatorInputs(module, trained.params, X, Y, torch.tensor(xt), torch.tensor(yt), "test_loss", wd,
                                 0, spectrum(H))
        ours = exact_scores(spec, inputs).numpy()
        W = trained.params["0.weight"].numpy()
        b = trained.params["0.bias"].numpy()
        reference = numpy_influence(W, b, x, y, xt, yt, wd, damping)
        assert np.abs(ours - reference).max() / np.abs(reference).max() < 1e-6


def test_negative_eigenvalue_policies():
    values = torch.tensor([-2.0, 0.5, 3.0], dtype=torch.float64)
    assert torch.allclose(inverse_eigenvalues(values, 0.5, "abs"), torch.tensor([1 / 2.5, 1.0, 1 / 3.5],
                                                                                   dtype=torch.float64))
    assert torch.allclose(inverse_eigenvalues(values, 0.5, "clip"), torch.tensor([0.0, 1.0, 1 / 3.5],
                                                                                    dtype=torch.float64))
    import pytest

    from runners.errors import TaskFailure

    with pytest.raises(TaskFailure, match="raise damping above 2"):
        inverse_eigenvalues(values, 0.5, "error")
