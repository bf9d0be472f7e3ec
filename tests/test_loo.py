"""Leave-one-out ground truth against an independent refit (scipy L-BFGS) on a strongly convex problem."""

from __future__ import annotations

import numpy as np
import torch

from inflang.spec import LogregModel, LooProtocol, RemovalSpec, TrainingSpec
from runners.models import build
from runners.protocols.common import Problem, RetrainSetup
from runners.protocols.loo import leave_one_out
from runners.train import train
from tests.reference import refit


def test_loo_from_optimum_matches_independent_refit():
    rng = np.random.default_rng(2)
    n, d, C, wd = 30, 2, 3, 0.1
    x = rng.normal(size=(n, d))
    y = rng.integers(0, C, size=n)
    xt, yt = rng.normal(size=(3, d)), rng.integers(0, C, size=3)
    X, Y, XT, YT = map(torch.tensor, (x, y, xt, yt))
    module = build(LogregModel(arch="logreg"), d, C, seed=0, dtype=torch.float64)
    training = TrainingSpec(optimizer="lbfgs", lr=1.0, epochs=300, weight_decay=wd)
    trained = train(module, X, Y, training, 0)
    spec = LooProtocol(protocol="loo", optimizer="sgd", lr=2.0, steps=3000, removals=RemovalSpec(select="all"))
    setup = RetrainSetup(trained=trained.params, inits=[trained.init], order_seeds=[0])
    removals = [np.array([0, 5, 17])] * 3
    problem = Problem(module, setup, training, X, Y, XT, YT, memory_budget=1 << 20)
    actual = leave_one_out(spec, problem, removals).actual.numpy()

    def test_losses(W, b):
        z = xt @ W.T + b
        return -(z[np.arange(3), yt] - np.log(np.exp(z).sum(axis=1)))

    theta0 = np.concatenate([trained.params["0.weight"].numpy().ravel(), trained.params["0.bias"].numpy()])
    base = test_losses(*refit(x, y, np.ones(n), wd, C, theta0))
    for i in (0, 5, 17):
        w = np.ones(n)
        w[i] = 0.0
        expected = test_losses(*refit(x, y, w, wd, C, theta0)) - base
        assert np.abs(actual[:, i] - expected).max() < 1e-10
    assert np.isnan(actual[:, 1]).all()
