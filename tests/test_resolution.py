"""The ground truth's own resolution: probes started a rounding unit away from the control."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from inflang.cli import app
from tests.helpers import rows

runner = CliRunner()

STUDY = """\
    study: resolution
    dataset: {{name: iris, test_size: 30, standardize: true}}
    model: {model}
    training: {{optimizer: adam, lr: 0.01, epochs: {epochs}, weight_decay: 0.01}}
    estimators: [{{name: exact, damping: 0.001, negative: abs}}]
    test_points: {{count: 4}}
    ground_truth: {ground_truth}
    metrics: {metrics}
    """


def run(write, tmp_path: Path, model: str, ground_truth: str, metrics: str = "[pearson, spearman]",
        epochs: int = 400) -> Path:
    db = tmp_path / "r.duckdb"
    text = STUDY.format(model=model, ground_truth=ground_truth, metrics=metrics, epochs=epochs)
    result = runner.invoke(app, ["run", str(write("r.yaml", text)), "--db", str(db)])
    assert result.exit_code == 0, result.output
    return db


def test_converged_refits_resolve_to_machine_precision_and_adam_warm_starts_do_not(write, tmp_path: Path):
    newton = run(write, tmp_path, "{arch: logreg}", "{protocol: loo, solver: newton, removals: {select: all}}")
    ((fine, below),) = rows(newton, "SELECT max(value) FILTER (WHERE metric = 'resolution'), "
                                    "max(value) FILTER (WHERE metric = 'below_resolution') FROM metrics "
                                    "WHERE estimator IS NULL AND test_index IS NOT NULL")
    assert fine < 1e-13 and below == 0.0
    # the quickstart's recipe: trained to a near-stationary point, where Adam's normalised steps amplify
    # rounding differences
    adam = run(write, tmp_path / "adam", "{arch: mlp, depth: 1, width: 8}",
               "{protocol: loo, start: optimum, optimizer: adam, steps: 1000, removals: {select: random, k: 30}}",
               epochs=2000)
    ((coarse,),) = rows(adam, "SELECT value FROM metrics WHERE metric = 'resolution' AND test_index IS NULL")
    assert coarse > 1000 * fine
    flags = rows(adam, "SELECT count(*) FILTER (WHERE resolved), count(*) FILTER (WHERE NOT resolved), "
                       "count(*) FILTER (WHERE resolved <> (abs(actual) >= resolution)) FROM influence")
    assert flags[0][0] > 0 and flags[0][2] == 0


def test_resolved_only_scores_the_resolved_items(write, tmp_path: Path):
    db = run(write, tmp_path, "{arch: mlp, depth: 1, width: 8}",
             "{protocol: loo, start: optimum, optimizer: adam, steps: 1000, removals: {select: random, k: 30}}",
             "{names: [spearman], resolved_only: true}", epochs=2000)
    per_point = rows(db, "SELECT m.test_index, m.n_pairs, count(*) FILTER (WHERE i.resolved) FROM metrics m "
                         "JOIN influence i ON i.test_index = m.test_index AND i.estimator = m.estimator "
                         "WHERE m.metric = 'spearman' AND m.test_index IS NOT NULL GROUP BY ALL")
    assert per_point and all(n == resolved for _, n, resolved in per_point)


def test_probes_can_be_switched_off(write, tmp_path: Path):
    db = run(write, tmp_path, "{arch: logreg}",
             "{protocol: loo, steps: 50, resolution_probes: 0, removals: {select: random, k: 10}}")
    assert rows(db, "SELECT count(*) FROM metrics WHERE metric = 'resolution'") == [(0,)]
    assert rows(db, "SELECT count(*) FROM influence WHERE resolved IS NOT NULL") == [(0,)]


@pytest.mark.parametrize("protocol", ["pbrf", "group", "lds"])
def test_every_retraining_protocol_measures_its_resolution(write, tmp_path: Path, protocol: str):
    spec = {"pbrf": "{protocol: pbrf, steps: 30, removals: {select: random, k: 6}}",
            "group": "{protocol: group, steps: 30, groups: {count: 4, size: 5}}",
            "lds": "{protocol: lds, steps: 30, subsets: 5, start: optimum}"}[protocol]
    db = run(write, tmp_path, "{arch: mlp, depth: 1, width: 4}", spec)
    values = rows(db, "SELECT value FROM metrics WHERE metric = 'resolution' AND test_index IS NOT NULL")
    assert len(values) == 4 and all(v > 0 for (v,) in values)


def test_probes_move_every_parameter_zeros_included():
    import torch

    from runners.protocols.common import nudged

    v = torch.tensor([0.0, 1.0, -3.5, 1e-8, 0.0], dtype=torch.float64)
    for seed in range(5):
        z = torch.randn(5, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        moved = nudged(v, z)
        assert bool((moved != v).all())
        assert float((moved - v).abs().max()) < 1e-14 * 3.5 * 10
    assert bool((nudged(torch.zeros(3), torch.ones(3)) != 0).all())  # an all-zero tensor (float32) moves too


def test_probes_that_fill_a_small_ensemble_spread_over_several(write, tmp_path: Path):
    """With ensembles of 3 models (``batch: 3``) the 4 probes take two ensembles of their own, 2 probes and a
    control each (never more than 3 models); the resolution matches the one-ensemble run to rounding."""
    from inflang.compiling.cost import chunk_bounds

    assert chunk_bounds(5, 3, 4) == [(0, 0, 2), (0, 0, 2), (0, 2, 0), (2, 4, 0), (4, 5, 0)]
    assert all(hi - lo + 1 + p <= 3 for lo, hi, p in chunk_bounds(5, 3, 4))
    assert chunk_bounds(5, 5, 4) == [(0, 0, 4), (0, 4, 0), (4, 5, 0)]  # as before: the probes fit one ensemble
    spec = ("{{protocol: loo, start: optimum, optimizer: adam, steps: 200, batch: {batch}, "
            "removals: {{select: random, k: 5}}}}")
    small = run(write, tmp_path / "small", "{arch: mlp, depth: 1, width: 4}", spec.format(batch=3))
    whole = run(write, tmp_path / "whole", "{arch: mlp, depth: 1, width: 4}", spec.format(batch="auto"))
    query = "SELECT test_index, value FROM metrics WHERE metric = 'resolution' AND test_index IS NOT NULL ORDER BY 1"
    a, b = rows(small, query), rows(whole, query)
    assert len(a) == len(b) == 4
    assert all(x[1] == pytest.approx(y[1], rel=1e-3, abs=1e-12) for x, y in zip(a, b, strict=True))


def test_under_resolved_only_the_noise_ceiling_uses_the_scored_items(write, tmp_path: Path):
    """The ceiling of a metric must rest on the items the metric scores: with resolved_only, the reliability
    rows count the resolved items of each test point, as the metric rows do."""
    db = run(write, tmp_path, "{arch: mlp, depth: 1, width: 8}",
             "{protocol: loo, start: optimum, optimizer: adam, steps: 1000, repeats: 2, "
             "removals: {select: random, k: 30}}",
             "{names: [spearman], resolved_only: true}", epochs=2000)
    counts = rows(db, "SELECT m.test_index, m.n_pairs, r.n_pairs FROM metrics m JOIN metrics r "
                      "ON r.test_index = m.test_index AND r.metric = 'reliability_spearman' "
                      "WHERE m.metric = 'spearman' AND m.test_index IS NOT NULL")
    assert counts and all(scored == ceiling for _, scored, ceiling in counts)
    assert any(scored < 30 for _, scored, _ in counts)  # some effects are below the resolution
