"""MNIST-1D from the mnist1d package's generator, the 1D CNN and the transformer: sizes against the built
modules, and a tiny study through every estimator family and the retraining ensemble."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from inflang.cli import app
from inflang.spec import CnnModel, Mnist1dDataset, TransformerModel
from runners.ensemble import multiply_adds
from runners.models import build
from tests.helpers import rows

pytest.importorskip("mnist1d")
runner = CliRunner()


def test_the_dataset_is_the_published_one_every_time():
    from runners.data.mnist1d import load_mnist1d

    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    first = load_mnist1d(Mnist1dDataset(name="mnist1d"))
    assert (np.random.get_state()[1] == before).all()  # the generator's global seeding is undone
    second = load_mnist1d(Mnist1dDataset(name="mnist1d"))
    assert first.x.shape == (5000, 1, 40) and first.classes == 10
    assert np.array_equal(first.x, second.x) and np.array_equal(first.y, second.y)
    assert list(first.fixed_test[[0, -1]]) == [4000, 4999]
    assert np.bincount(first.y[:4000]).min() > 350  # ten classes, about balanced


@pytest.mark.parametrize("spec", [CnnModel(arch="cnn", depth=3, channels=25, kernel=5, padding=1),
                                  TransformerModel(arch="transformer", width=16, heads=2, depth=2)])
def test_specs_count_what_the_modules_have(spec):
    info = Mnist1dDataset(name="mnist1d").info()
    module = build(spec, info.shape, info.classes, 0, torch.float64)
    assert sum(p.numel() for p in module.parameters()) == spec.n_params(info)
    macs = multiply_adds(module, info.shape)  # Linear and convolution layers only
    attention = spec.depth * 2 * 40 * 40 * spec.width if spec.arch == "transformer" else 0
    assert macs + attention == spec.multiply_adds(info)
    assert module(torch.zeros(3, *info.shape, dtype=torch.float64)).shape == (3, 10)


def test_a_transformer_study_runs_every_estimator_family(write, tmp_path: Path):
    study = write("t.yaml", """\
        study: attention
        dataset: {name: mnist1d, test_size: 20, subsample: 40}
        model: {arch: transformer, width: 4, heads: 2, depth: 1}
        training: {optimizer: adam, lr: 0.01, epochs: 3, batch_size: 10, weight_decay: 0.01, dtype: float64}
        estimators:
          - {name: exact, damping: 0.01, negative: abs}
          - {name: ekfac}
          - {name: lissa, damping: 0.1, scale: 10, recursion_depth: 50}
          - {name: grad_dot}
        test_points: {count: 2}
        ground_truth: {protocol: loo, start: optimum, steps: 5, removals: {select: random, k: 6}}
        metrics: [spearman]
        """)
    db = tmp_path / "a.duckdb"
    result = runner.invoke(app, ["run", str(study), "--db", str(db)])
    assert result.exit_code == 0, result.output
    estimators = {e for (e,) in rows(db, "SELECT DISTINCT estimator FROM influence")}
    assert estimators == {"exact", "ekfac", "lissa", "grad_dot"}
    assert rows(db, "SELECT count(*) FROM influence WHERE actual IS NOT NULL")[0][0] == 4 * 2 * 6
    # the LayerNorms and the position embedding are outside the layers EK-FAC factors, and it says so
    assert ("kfac_uncovered", "ekfac") in set(rows(db, 'SELECT "check", subject FROM diagnostics'))


def test_a_one_d_cnn_retrains_in_the_ensemble(write, tmp_path: Path):
    study = write("c.yaml", """\
        study: conv1d
        dataset: {name: mnist1d, test_size: 20, subsample: 150}
        model: {arch: cnn, depth: 2, channels: 4, kernel: 5, padding: 1, activation: relu}
        training: {optimizer: adam, lr: 0.01, epochs: 3, batch_size: 50, weight_decay: 0.01, dtype: float64}
        estimators: [{name: ekfac}, {name: exact, damping: 0.01, negative: abs}]
        test_points: {count: 2}
        ground_truth: {protocol: loo, start: optimum, steps: 5, removals: {select: random, k: 6}}
        metrics: [spearman]
        """)
    db = tmp_path / "c.duckdb"
    result = runner.invoke(app, ["run", str(study), "--db", str(db)])
    assert result.exit_code == 0, result.output
    assert not {c for (c,) in rows(db, 'SELECT "check" FROM diagnostics')} & {"kfac_uncovered"}  # Conv1d factored
