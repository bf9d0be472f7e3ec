"""Early stopping: the stop rule against a torch.optim loop written here, per-model stopping inside an
ensemble, the held-out validation split, and a study that uses it end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from inflang.cli import app
from inflang.spec import EarlyStoppingSpec, MlpModel, TrainingSpec
from runners.early_stopping import BestByValidation
from runners.ensemble import UpdateRule, stack, train_ensemble, weighted_cross_entropy
from runners.models import build
from runners.objective import objective, per_example_loss
from runners.train import train
from tests.helpers import rows


@pytest.fixture(scope="module")
def problem():
    torch.manual_seed(0)
    x = torch.randn(60, 3, dtype=torch.float64)
    y = ((x[:, 0] + 0.5 * torch.randn(60, dtype=torch.float64)) > 0).long()
    xv = torch.randn(20, 3, dtype=torch.float64)
    yv = (xv[:, 0] > 0).long()
    return x, y, xv, yv


def reference(module, init, x, y, xv, yv, lr, steps, every, patience):
    """torch.optim.Adam, validation loss every ``every`` steps and at the end; returns (best params, steps run)."""
    named = {k: v.clone().requires_grad_(True) for k, v in init.items()}
    opt = torch.optim.Adam(list(named.values()), lr=lr)
    best, best_loss, waited = None, float("inf"), 0
    for step in range(steps):
        opt.zero_grad()
        objective(module, named, x, y, 0.0).backward()
        opt.step()
        if (step + 1) % every and step != steps - 1:
            continue
        with torch.no_grad():
            loss = float(per_example_loss(torch.func.functional_call(module, named, (xv,)), yv).mean())
        if loss < best_loss:
            best, best_loss, waited = {k: v.detach().clone() for k, v in named.items()}, loss, 0
        else:
            waited += 1
            if waited >= patience:
                return best, step + 1
    return best, steps


def test_training_stops_and_keeps_the_best_model(problem):
    x, y, xv, yv = problem
    module = build(MlpModel(arch="mlp", depth=1, width=16), 3, 2, seed=0, dtype=torch.float64)
    init = {k: v.detach().clone() for k, v in module.named_parameters()}
    spec = TrainingSpec(optimizer="adam", lr=0.1, epochs=2000, weight_decay=0.0,
                        early_stopping=EarlyStoppingSpec(patience=3, every=5))
    trained = train(module, x, y, spec, order_seed=0, validation=(xv, yv))
    expected, steps = reference(module, init, x, y, xv, yv, 0.1, 2000, 5, 3)
    assert steps < 2000  # it did stop (the net overfits the noisy labels)
    assert trained.steps == steps
    for k, v in expected.items():
        assert torch.allclose(trained.params[k], v, rtol=0, atol=1e-10)


def test_each_model_of_an_ensemble_stops_on_its_own(problem):
    """Three models with different removals trained together keep what each would keep trained alone."""
    x, y, xv, yv = problem
    module = build(MlpModel(arch="mlp", depth=1, width=16), 3, 2, seed=1, dtype=torch.float64)
    init = {k: v.detach().clone() for k, v in module.named_parameters()}
    rule = UpdateRule(optimizer="adam", lr=0.1, weight_decay=0.0)
    weights = torch.ones(3, 60, dtype=torch.float64)
    weights[1, :10] = 0
    weights[2, 30:45] = 0
    monitor = BestByValidation(module, xv, yv, every=5, patience=3, steps=1500, models=3)
    together = monitor.result(train_ensemble(module, stack(init, 3), x, rule, 1500, None, [0] * 3,
                                             weighted_cross_entropy(y, weights), on_step=monitor))
    for m in range(3):
        alone = BestByValidation(module, xv, yv, every=5, patience=3, steps=1500, models=1)
        kept = alone.result(train_ensemble(module, stack(init, 1), x, rule, 1500, None, [0],
                                           weighted_cross_entropy(y, weights[m:m + 1]), on_step=alone))
        for k in kept:
            assert torch.allclose(together[k][m], kept[k][0], rtol=0, atol=1e-12)


def test_no_evaluation_keeps_the_final_model(problem):
    x, y, xv, yv = problem
    module = build(MlpModel(arch="mlp", depth=1, width=4), 3, 2, seed=0, dtype=torch.float64)
    monitor = BestByValidation(module, xv, yv, every=100, patience=1, steps=3, models=1)
    final = {k: v.detach().unsqueeze(0) for k, v in module.named_parameters()}
    assert monitor.result(final) is final


STUDY = """\
study: es
dataset: {name: iris, test_size: 30}
model: {arch: mlp, depth: 1, width: 8}
training: {optimizer: adam, lr: 0.05, epochs: 300, weight_decay: 0.0,
           early_stopping: {validation: 0.2, patience: 3, every: 10}}
estimators: [{name: exact, damping: 0.01, negative: abs}]
test_points: {count: 2}
ground_truth: {protocol: loo, start: scratch, removals: {select: random, k: 4}}
"""


def test_a_study_holds_out_validation_points_and_retrains_with_the_same_rule(write, tmp_path: Path):
    db = tmp_path / "es.duckdb"
    result = CliRunner().invoke(app, ["run", str(write("es.yaml", STUDY)), "--db", str(db)])
    assert result.exit_code == 0, result.output
    roles = dict(rows(db, "SELECT role, count(*) FROM splits GROUP BY 1"))
    assert roles == {"train": 96, "validation": 24, "test": 30}
    ((n_train, steps),) = rows(db, "SELECT n_train, steps FROM models")
    assert n_train == 96 and 0 < steps < 300
    validation = {i for (i,) in rows(db, "SELECT \"index\" FROM splits WHERE role = 'validation'")}
    removed = {i for (i,) in rows(db, "SELECT DISTINCT train_index FROM influence WHERE actual IS NOT NULL")}
    assert removed and not removed & validation
    actual = [a for (a,) in rows(db, "SELECT actual FROM influence WHERE actual IS NOT NULL")]
    assert np.all(np.isfinite(actual))


def test_lbfgs_with_early_stopping_is_refused(write):
    text = STUDY.replace("optimizer: adam", "optimizer: lbfgs").replace(
        "ground_truth: {protocol: loo,", "ground_truth: {protocol: loo, optimizer: adam,")
    result = CliRunner().invoke(app, ["validate", str(write("bad.yaml", text))])
    assert result.exit_code == 2
    assert "early_stopping" in result.output and "lbfgs" in result.output
