"""Every option a study can reach, run once end to end on a tiny problem (it runs and its rows are sane)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from inflang.cli import app
from tests.helpers import rows

runner = CliRunner()

BASE = {
    "dataset": "{name: iris, test_size: 30}",
    "model": "{arch: mlp, depth: 1, width: 4}",
    "training": "{optimizer: adam, lr: 0.05, epochs: 60, weight_decay: 0.01}",
    "estimators": "[{name: exact, damping: 0.05, negative: abs}]",
    "test_points": "{count: 2}",
    "ground_truth": "{protocol: loo, steps: 5, removals: {select: random, k: 6}}",
}

VARIANTS = {
    "float32": {"training": "{optimizer: adam, lr: 0.05, epochs: 60, weight_decay: 0.01, dtype: float32}"},
    "sgd-momentum-minibatch": {"training": "{optimizer: sgd, lr: 0.05, momentum: 0.9, epochs: 10, batch_size: 16}"},
    "margin": {"ground_truth": "{protocol: loo, steps: 5, measure: margin, removals: {select: random, k: 6}}"},
    "indices": {"dataset": "{name: iris, test_size: 0.2}", "test_points": "{select: indices, indices: [0, 1, 2, 3, "
                "4, 5, 6, 7, 8, 9, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 100, 101, 102, 103, 104, 105, 106, 107, "
                "108, 109]}"},
    "lissa-minibatch": {"estimators": "[{name: lissa, damping: 0.05, scale: 20, recursion_depth: 50, "
                                      "batch_size: 32, repeats: 2}]"},
    "group-top-k": {"ground_truth": "{protocol: group, steps: 5, groups: {count: 4, size: 5, select: top_k, "
                                    "by: exact, rank_by: signed}}"},
    "pbrf-minibatch": {"training": "{optimizer: adam, lr: 0.05, epochs: 10, batch_size: 32, weight_decay: 0.01}",
                       "ground_truth": "{protocol: pbrf, steps: 10, damping: 0.1, removals: {select: top_k, k: 3, "
                                       "by: exact}}"},
    "lds-optimum": {"ground_truth": "{protocol: lds, start: optimum, steps: 5, subsets: 6, fraction: 0.8}"},
    "scratch-repeats": {"ground_truth": "{protocol: loo, start: scratch, repeats: 3, removals: {select: random, "
                                        "k: 4}}", "training": "{optimizer: sgd, lr: 0.1, epochs: 5, batch_size: 32}"},
    "synthetic-logreg": {"dataset": "{name: synthetic, kind: moons, samples: 80, test_size: 20, label_noise: 0.1}",
                         "model": "{arch: logreg}"},
    "cnn-digits": {"dataset": "{name: digits, test_size: 20, subsample: 60}",
                   "model": "{arch: cnn, depth: 1, channels: 2}",
                   "training": "{optimizer: adam, lr: 0.05, epochs: 5, batch_size: 30}",
                   "estimators": "[{name: exact, damping: 0.05, negative: abs}, {name: kfac}, {name: ekfac}]"},
    "kfac-param-change": {"estimators": "[{name: kfac, damping: 0.01}, {name: ekfac, params: last_layer}]",
                          "ground_truth": "{protocol: loo, steps: 5, measure: param_change_norm, "
                                          "removals: {select: random, k: 6}}"},
    "dropout": {"model": "{arch: mlp, depth: 1, width: 4, dropout: 0.2}",
                "estimators": "[{name: grad_dot}]"},
    "tracin-schedule": {"training": "{optimizer: sgd, lr: 0.1, epochs: 30, weight_decay: 0.01, schedule: step, "
                                    "step_epochs: 10, checkpoints: 3}",
                        "estimators": "[{name: tracin}, {name: representer}, {name: datainf}]",
                        "ground_truth": "{protocol: loo, steps: 5, lr: 0.01, removals: {select: random, k: 6}}"},
    "datainf-param-change": {"estimators": "[{name: datainf}]",
                             "ground_truth": "{protocol: loo, steps: 5, measure: param_change_norm, "
                                             "removals: {select: random, k: 6}}"},
    "lanczos-diagnostics": {"hessian": "{top_eigenvalues: 3, method: lanczos, iterations: 10, trace_samples: 8}"},
    "last-layer": {"estimators": "[{name: exact, damping: 0.01, params: last_layer}, {name: lissa, damping: 0.05, "
                                 "scale: 20, recursion_depth: 30, params: [2.weight, 2.bias]}, {name: arnoldi, "
                                 "arnoldi_dim: 10, top_k: 5, damping: 0.05, params: last_layer}, {name: datainf, "
                                 "params: last_layer}, {name: grad_cos, params: last_layer}]"},
    "label-smoothing": {"training": "{optimizer: adam, lr: 0.05, epochs: 60, weight_decay: 0.01, "
                                     "label_smoothing: 0.1}",
                        "estimators": "[{name: exact, damping: 0.05, negative: abs}, {name: representer}, "
                                      "{name: lissa, damping: 0.05, scale: 20, recursion_depth: 20}]",
                        "ground_truth": "{protocol: loo, steps: 5, decompose: true, damping: 0.05, "
                                        "removals: {select: random, k: 4}}"},
    "trak-models": {"estimators": "[{name: trak, proj_dim: 16, models: 3}, {name: trak, proj_dim: 8, models: 2, "
                                  "label: trak2, params: last_layer}]",
                    "ground_truth": "{protocol: loo, steps: 5, measure: margin, removals: {select: random, k: 6}}"},
    "all-metrics": {"metrics": "{names: [pearson, spearman, kendall, sign_agreement, top_k_overlap], top_k: 3}"},
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_option_runs_end_to_end(write, tmp_path: Path, variant: str):
    sections = {**BASE, **VARIANTS[variant]}
    text = "study: smoke\n" + "".join(f"{k}: {v}\n" for k, v in sections.items())
    study = write("s.yaml", text)
    db = tmp_path / "s.duckdb"
    result = runner.invoke(app, ["run", str(study), "--db", str(db)])
    assert result.exit_code == 0, result.output
    (status,) = rows(db, "SELECT status FROM cells")[0]
    assert status == "done"
    values = rows(db, "SELECT value FROM metrics WHERE estimator IS NOT NULL AND test_index IS NULL")
    assert values and all(v is None or -1.0 - 1e-9 <= v <= 1.0 + 1e-9 for (v,) in values)
