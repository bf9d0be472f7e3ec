"""TracIn over checkpoints, representer points, DataInf, and learning-rate schedules, each checked by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from inflang.spec import (
    DataInfEstimator,
    LogregModel,
    MlpModel,
    RepresenterEstimator,
    TracinEstimator,
    TrainingSpec,
)
from runners.ensemble import UpdateRule, stack, train_ensemble, weighted_cross_entropy
from runners.estimators import ESTIMATORS, EstimatorInputs
from runners.models import build
from runners.objective import objective, per_example_loss
from runners.train import checkpoint_steps, train


def per_example_grads(module: nn.Module, params: dict, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    out = []
    for i in range(len(y)):
        p = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
        loss = per_example_loss(torch.func.functional_call(module, p, (x[i:i + 1],)), y[i:i + 1]).sum()
        out.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(p.values()))]).numpy())
    return np.stack(out)


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    x = torch.randn(30, 3, dtype=torch.float64)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    module = build(MlpModel(arch="mlp", depth=1, width=4), 3, 3, seed=0, dtype=torch.float64)
    spec = TrainingSpec(optimizer="sgd", lr=0.3, epochs=40, weight_decay=0.05, schedule="cosine", checkpoints=3)
    trained = train(module, x, y, spec, order_seed=0)
    return module, x, y, trained


def test_checkpoints_are_evenly_spaced_and_end_at_the_model(setup):
    module, x, y, trained = setup
    assert checkpoint_steps(40, 3) == {12, 26, 39}
    assert len(trained.snapshots) == 3
    lr_last, last = trained.snapshots[-1]
    assert all(torch.equal(last[k], trained.params[k]) for k in last)
    assert lr_last == pytest.approx(0.3 * 0.5 * (1 + math.cos(math.pi * 39 / 40)))


def test_tracin_sums_learning_rate_weighted_gradient_products(setup):
    module, x, y, trained = setup
    inputs = EstimatorInputs(module, trained.params, x, y, x[:2], y[:2], "test_loss", 0.05, 0,
                             checkpoints=trained.snapshots)
    ours = ESTIMATORS["tracin"](TracinEstimator(name="tracin"), inputs).numpy()
    expected = sum(lr * per_example_grads(module, p, x[:2], y[:2]) @ per_example_grads(module, p, x, y).T
                   for lr, p in trained.snapshots) / 30
    assert np.allclose(ours, expected, rtol=1e-10, atol=1e-15)


def test_representer_points_on_logistic_regression():
    torch.manual_seed(1)
    x = torch.randn(25, 2, dtype=torch.float64)
    y = torch.randint(0, 3, (25,))
    module = build(LogregModel(arch="logreg"), 2, 3, seed=0, dtype=torch.float64)
    wd = 0.1
    trained = train(module, x, y, TrainingSpec(optimizer="lbfgs", lr=1.0, epochs=200, weight_decay=wd), 0)
    inputs = EstimatorInputs(module, trained.params, x, y, x[:3], y[:3], "test_loss", wd, 0)
    ours = ESTIMATORS["representer"](RepresenterEstimator(name="representer"), inputs).numpy()
    W, b = trained.params["0.weight"].numpy(), trained.params["0.bias"].numpy()
    z = x.numpy() @ W.T + b
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    alpha = -(p - np.eye(3)[y.numpy()]) / (wd * 25)
    expected = np.array([[alpha[i, y[t]] * x[i].numpy() @ x[t].numpy() for i in range(25)] for t in range(3)])
    assert np.allclose(ours, expected, rtol=1e-10)
    # at the optimum the weights are the representer sum: W = sum_i alpha_i x_i^T
    assert np.allclose(alpha.T @ x.numpy(), W, atol=1e-6)
    # measure: margin: taking point i's share alpha_i (x_i . x_t) out of the logits changes the margin
    # (true-class logit minus the runner-up's) by -(alpha_i[y_t] - alpha_i[c_t]) (x_i . x_t)
    margin = EstimatorInputs(module, trained.params, x, y, x[:3], y[:3], "margin", wd, 0)
    ours = ESTIMATORS["representer"](RepresenterEstimator(name="representer"), margin).numpy()
    runner_up = [int(np.argmax(np.where(np.arange(3) == y[t].item(), -np.inf, z[t]))) for t in range(3)]
    expected = np.array([[-(alpha[i, y[t]] - alpha[i, runner_up[t]]) * x[i].numpy() @ x[t].numpy()
                          for i in range(25)] for t in range(3)])
    assert np.allclose(ours, expected, rtol=1e-10)


@pytest.mark.parametrize("cast", [None, 40])
def test_datainf_matches_its_closed_form(setup, monkeypatch, cast: int | None):
    """Also with the gradients cast to float64 a few rows at a time (40 entries: 2-3 rows of a layer)."""
    if cast is not None:
        monkeypatch.setattr("runners.estimators.datainf.CAST_ELEMENTS", cast)
    module, x, y, trained = setup
    inputs = EstimatorInputs(module, trained.params, x, y, x[:2], y[:2], "test_loss", 0.05, 0)
    ours = ESTIMATORS["datainf"](DataInfEstimator(name="datainf", damping=0.01), inputs).numpy()
    g = per_example_grads(module, trained.params, x, y)
    gt = per_example_grads(module, trained.params, x[:2], y[:2])
    sizes = [v.numel() for v in trained.params.values()]  # 0.weight, 0.bias, 2.weight, 2.bias
    edges = np.cumsum([0, sizes[0] + sizes[1], sizes[2] + sizes[3]])
    expected = np.zeros((2, 30))
    for a, b in zip(edges[:-1], edges[1:], strict=True):
        gl, tl = g[:, a:b], gt[:, a:b]
        lam = 0.05 + 0.01  # weight decay + damping: the curvature is G_l + weight_decay I
        inverse = sum(np.eye(b - a) - np.outer(v, v) / (lam + v @ v) for v in gl) / (30 * lam)
        expected += tl @ inverse @ gl.T / 30
    assert np.allclose(ours, expected, rtol=1e-9)


@pytest.mark.parametrize("schedule", ["cosine", "step"])
def test_schedules_match_torch_lambda_lr(schedule: str):
    torch.manual_seed(2)
    x, y = torch.randn(20, 3, dtype=torch.float64), torch.randint(0, 2, (20,))
    module = nn.Sequential(nn.Linear(3, 2)).double()
    start = {k: v.detach().clone() for k, v in module.named_parameters()}
    rule = UpdateRule("sgd", 0.5, 0.01, momentum=0.5, schedule=schedule, total_steps=30, step_size=7, gamma=0.3)
    ours = train_ensemble(module, stack(start, 1), x, rule, 30, None, [0],
                          weighted_cross_entropy(y, torch.ones(1, 20, dtype=torch.float64)))
    opt = torch.optim.SGD(module.parameters(), lr=0.5, momentum=0.5)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: rule.lr_at(t) / 0.5)
    named = dict(module.named_parameters())
    for _ in range(30):
        opt.zero_grad()
        objective(module, named, x, y, 0.01).backward()
        opt.step()
        sched.step()
    assert all((ours[k][0] - v.detach()).abs().max() < 1e-12 for k, v in named.items())
