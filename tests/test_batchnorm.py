"""BatchNorm on the batched engine: each member's parameters and running statistics follow a sequential
torch.optim loop over an nn.Module in training mode; a study with norm: batch runs end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from inflang.cli import app
from runners.ensemble import UpdateRule, stack, train_ensemble, weighted_cross_entropy
from runners.objective import per_example_loss
from tests.helpers import rows


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.Tanh(), nn.Flatten(),
                         nn.Linear(3 * 16, 3)).double().eval()


@pytest.mark.parametrize("optimizer, batch_size", [("sgd", None), ("adam", 8)])
def test_members_match_sequential_loops_with_batchnorm(optimizer: str, batch_size: int | None):
    torch.manual_seed(1)
    x = torch.randn(24, 1, 4, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (24,))
    net = small_net()
    start = {**{k: v.detach() for k, v in net.named_parameters()}, **{k: v.detach() for k, v in net.named_buffers()}}
    weights = torch.ones(3, 24, dtype=torch.float64)
    weights[1, 5] = 0
    weights[2, :4] = 0
    rule = UpdateRule(optimizer=optimizer, lr=0.05, weight_decay=0.01)
    steps = 12
    together = train_ensemble(net, stack(start, 3), x, rule, steps, batch_size, [0] * 3,
                              weighted_cross_entropy(y, weights))
    from runners.batches import batch_order

    for m in range(3):
        ref = small_net()
        ref.train()
        params = list(ref.parameters())
        opt = (torch.optim.SGD(params, lr=0.05) if optimizer == "sgd" else torch.optim.Adam(params, lr=0.05))
        for batch in batch_order(24, batch_size, steps, 0):
            idx = torch.arange(24) if batch is None else batch
            opt.zero_grad()
            losses = per_example_loss(ref(x[idx]), y[idx]) * weights[m, idx]
            loss = losses.sum() / len(idx) + 0.005 * sum((p * p).sum() for p in params)
            loss.backward()
            opt.step()
        for k, v in [*ref.named_parameters(), *ref.named_buffers()]:
            got = together[k][m]
            assert torch.allclose(got.to(v.dtype), v.detach(), rtol=0, atol=1e-10), (m, k)


STUDY = """\
study: bn
dataset: {name: digits, test_size: 20, subsample: 60}
model: {arch: resnet, depth: 20, norm: batch, width_multiplier: 0.25}
training: {optimizer: sgd, lr: 0.05, momentum: 0.9, epochs: 4, batch_size: 20, weight_decay: 0.001, checkpoints: 2}
estimators: [{name: kfac}, {name: grad_dot}, {name: trak, proj_dim: 32, models: 2}, {name: tracin}]
test_points: {count: 2}
ground_truth: {protocol: loo, start: scratch, removals: {select: random, k: 3}}
"""


def test_a_batchnorm_study_runs_end_to_end(write, tmp_path: Path):
    db = tmp_path / "bn.duckdb"
    result = CliRunner().invoke(app, ["run", str(write("bn.yaml", STUDY)), "--db", str(db)])
    assert result.exit_code == 0, result.output
    actual = [a for (a,) in rows(db, "SELECT actual FROM influence WHERE actual IS NOT NULL")]
    assert len(actual) == 4 * 2 * 3 and np.all(np.isfinite(actual))  # estimators x test points x removals
    assert rows(db, "SELECT status FROM cells") == [("done",)]


def test_scratch_retraining_reproduces_the_base_model_and_its_statistics():
    from inflang.spec import TrainingSpec
    from runners.train import train, training_rule

    torch.manual_seed(2)
    x = torch.randn(20, 1, 4, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (20,))
    net = small_net()
    spec = TrainingSpec(optimizer="adam", lr=0.02, epochs=6, batch_size=10, weight_decay=0.01)
    trained = train(net, x, y, spec, order_seed=7)
    assert not torch.equal(trained.buffers["1.running_mean"], trained.init_buffers["1.running_mean"])
    start = {**trained.init, **trained.init_buffers}
    again = train_ensemble(net, stack(start, 3), x, training_rule(spec, 20), spec.total_steps(20), 10, [7] * 3,
                           weighted_cross_entropy(y, torch.ones(3, 20, dtype=torch.float64)))
    for k, v in {**trained.params, **trained.buffers}.items():
        for m in range(3):
            assert torch.allclose(again[k][m], v, rtol=0, atol=1e-12), (k, float((again[k][m] - v).abs().max()))


def test_tracin_uses_each_checkpoints_running_statistics():
    from inflang.spec import TracinEstimator, TrainingSpec
    from runners.estimators import ESTIMATORS, EstimatorInputs
    from runners.train import train

    torch.manual_seed(3)
    x = torch.randn(16, 1, 4, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (16,))
    net = small_net()
    trained = train(net, x, y, TrainingSpec(optimizer="sgd", lr=0.1, epochs=6, batch_size=8, checkpoints=3), 0)
    assert len(trained.snapshot_buffers) == 3
    assert not torch.equal(trained.snapshot_buffers[0]["1.running_var"], trained.buffers["1.running_var"])
    inputs = EstimatorInputs(net, trained.params, x, y, x[:2], y[:2], "test_loss", 0.001, 0,
                             checkpoints=trained.snapshots, checkpoint_buffers=trained.snapshot_buffers)
    ours = ESTIMATORS["tracin"](TracinEstimator(name="tracin"), inputs).numpy()
    expected = np.zeros((2, 16))
    for (lr, params), stats in zip(trained.snapshots, trained.snapshot_buffers, strict=True):
        ref = small_net()
        ref.load_state_dict({**params, **stats})
        grads = []
        for i in range(16):
            ref.zero_grad()
            per_example_loss(ref(x[i:i + 1]), y[i:i + 1]).sum().backward()
            grads.append(torch.cat([p.grad.reshape(-1) for p in ref.parameters()]).numpy())
        g = np.stack(grads)
        expected += lr * g[:2] @ g.T / 16
    assert np.allclose(ours, expected, rtol=1e-9, atol=1e-14)
    assert all(torch.equal(b, trained.buffers[k]) for k, b in net.named_buffers())  # restored afterwards
