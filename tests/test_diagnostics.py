"""Health checks: each check against a study that trips it (its threshold set where the study lands, or a
regime that is degenerate) and one that does not, end to end; the pure check function on known facts; the
estimators' own notes (K-FAC's uncovered parameters, Arnoldi's share of the trace) against direct computations;
and what the run prints, the report shows and the claims carry."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from inflang.cli import app
from inflang.results.diagnostics import CellFacts, check_cell
from inflang.spec import ArnoldiEstimator, DiagnosticsSpec, EkfacEstimator, ExactEstimator, LissaEstimator
from runners.estimators.arnoldi import arnoldi_scores
from runners.estimators.common import EstimatorInputs
from runners.estimators.kfac import kronecker_layers
from tests.helpers import rows

runner = CliRunner()

BASE = """\
study: health
dataset: {{name: iris, test_size: 30, standardize: true}}
model: {model}
training: {{optimizer: adam, lr: {lr}, epochs: {epochs}, weight_decay: {wd}, dtype: {dtype}}}
estimators: {estimators}
test_points: {{count: 4}}
ground_truth: {ground_truth}
metrics: [spearman]
diagnostics: {diagnostics}
"""


# a ResNet with group norm: its GroupNorm parameters are outside the Linear/Conv2d layers K-FAC factors
KFAC_GROUP_NORM = """\
study: health
dataset: {name: digits, test_size: 20, subsample: 200}
model: {arch: resnet, depth: 20, norm: group, width_multiplier: 0.25}
training: {optimizer: sgd, lr: 0.05, epochs: 1, batch_size: 50}
estimators: [{name: ekfac}]
test_points: {count: 2}
ground_truth: {protocol: loo, start: optimum, steps: 2, removals: {select: random, k: 4}}
metrics: [spearman]
"""


def run_study(write, tmp_path: Path, *, model: str = "{arch: logreg}", epochs: int = 1000, wd: float = 0.01,
              estimators: str = "[{name: exact, damping: 0.001}]",
              ground_truth: str = "{protocol: loo, start: optimum, steps: 300, removals: {select: random, k: 12}}",
              diagnostics: str = "{}", text: str | None = None, dtype: str = "float64",
              lr: float = 0.05) -> tuple[Path, str]:
    db = tmp_path / "h.duckdb"
    text = text or BASE.format(model=model, epochs=epochs, wd=wd, estimators=estimators, ground_truth=ground_truth,
                               diagnostics=diagnostics, dtype=dtype, lr=lr)
    result = runner.invoke(app, ["run", str(write("h.yaml", text)), "--db", str(db)])
    assert result.exit_code == 0, result.output
    return db, result.output


def checks(db: Path) -> set[tuple[str, str]]:
    return {(c, s) for c, s in rows(db, 'SELECT "check", subject FROM diagnostics')}


# (check, subject, study overrides that trip it, overrides of a healthy study that does not)
TRIPS = [
    ("damping_dominates", "exact", {"estimators": "[{name: exact, damping: 100.0}]"}, {}),
    ("not_stationary", "exact", {"epochs": 2}, {}),
    ("lissa_not_converged", "lissa",
     {"estimators": "[{name: lissa, damping: 0.001, scale: 10, recursion_depth: 20}]"},
     {"estimators": "[{name: lissa, damping: 0.01, scale: 1, recursion_depth: 3000}]"}),
    ("retraining_not_converged", "ground truth",
     {"ground_truth": "{protocol: loo, start: optimum, steps: 2, removals: {select: random, k: 12}}"}, {}),
    ("below_resolution", "ground truth",  # Adam's normalised steps amplify rounding (test_resolution.py)
     {"ground_truth": "{protocol: loo, start: optimum, optimizer: adam, steps: 1000, removals: {select: all}}",
      "diagnostics": "{below_resolution: 0.0}", "epochs": 2000, "model": "{arch: mlp, depth: 1, width: 8}",
      "dtype": "float32", "lr": 0.01}, {}),
    ("low_noise_ceiling", "ground truth",  # two MLPs from different starts disagree a little
     {"ground_truth": "{protocol: loo, start: scratch, repeats: 2, removals: {select: random, k: 12}}",
      "diagnostics": "{noise_ceiling: 1.0}", "model": "{arch: mlp, depth: 1, width: 4}", "epochs": 300},
     {"ground_truth": "{protocol: loo, start: scratch, repeats: 2, removals: {select: random, k: 12}}",
      "model": "{arch: mlp, depth: 1, width: 4}", "epochs": 300}),
    ("kfac_uncovered", "ekfac", {"text": KFAC_GROUP_NORM},
     {"estimators": "[{name: ekfac}]", "model": "{arch: mlp, depth: 1, width: 4}"}),
    ("arnoldi_few_directions", "arnoldi", {"estimators": "[{name: arnoldi, top_k: 1, arnoldi_dim: 5}]",
                                           "diagnostics": "{arnoldi_mass: 0.99}"},
     {"estimators": "[{name: arnoldi, top_k: 1, arnoldi_dim: 5}]"}),
]


@pytest.mark.parametrize(("check", "subject", "trip", "calm"), TRIPS, ids=[t[0] for t in TRIPS])
def test_each_check_trips_on_a_study_that_should_and_not_on_one_that_should_not(write, tmp_path: Path, check: str,
                                                                                 subject: str, trip: dict, calm: dict):
    tripped, output = run_study(write, tmp_path / "bad", **trip)
    assert (check, subject) in checks(tripped), checks(tripped)
    assert f"warning {check} ({subject})" in output
    healthy, _ = run_study(write, tmp_path / "good", **calm)
    assert check not in {c for c, _ in checks(healthy)}, checks(healthy)


def facts(**kw) -> CellFacts:
    base = dict(cell_id="c", params={}, estimators=[ExactEstimator(name="exact", damping=0.001)],
                spec=DiagnosticsSpec(), model={"grad_norm": 1e-8, "objective": 0.1, "top_eigenvalue": 2.0,
                                               "min_eigenvalue": 0.01, "trace": 5.0}, train_loss=0.1)
    return CellFacts(**{**base, **kw})


def names(found) -> set[str]:
    return {d.check for d in found}


def test_the_checks_on_known_facts():
    assert check_cell(facts()) == []
    flat = {"grad_norm": 1e-8, "objective": 1e-6, "top_eigenvalue": 5e-4, "min_eigenvalue": 1e-6, "trace": 1e-3}
    degenerate = check_cell(facts(model=flat, train_loss=1e-6, estimators=[LissaEstimator(name="lissa",
                                                                                          damping=0.01)]))
    assert names(degenerate) == {"interpolation", "damping_dominates"}
    damping = next(d for d in degenerate if d.check == "damping_dominates")
    assert damping.value == pytest.approx(20.0) and damping.subject == "lissa"
    # lissa: |1 - (lambda + damping) / scale| ^ depth, worst over the spectrum's ends
    lissa = LissaEstimator(name="lissa", damping=0.01, scale=10, recursion_depth=1000)
    (found,) = check_cell(facts(estimators=[lissa]))
    assert found.value == pytest.approx((1 - 0.01 / 10) ** 1000)  # lambda_min taken as min(Ritz value, 0)
    negative = {"grad_norm": 1e-8, "objective": 0.1, "top_eigenvalue": 2.0, "min_eigenvalue": -0.5, "trace": 5.0}
    assert math.isinf(check_cell(facts(model=negative, estimators=[lissa]))[0].value)  # a mode that grows
    # thresholds are the study's
    assert names(check_cell(facts(spec=DiagnosticsSpec(damping_ratio=1e-4)))) == {"damping_dominates"}
    assert names(check_cell(facts(retrain_ratio=0.5, below_resolution=0.2, noise_ceiling=0.3))) == {
        "retraining_not_converged", "below_resolution", "low_noise_ceiling"}
    assert check_cell(facts(retrain_ratio=0.05, below_resolution=0.05, noise_ceiling=0.9)) == []
    # an estimator that does not invert curvature is not judged by stationarity or damping
    assert check_cell(facts(model={**flat, "grad_norm": 1.0}, estimators=[])) == []
    notes = {"ekfac": {"kfac_uncovered": 0.25}, "arnoldi": {"arnoldi_mass": 0.2}}
    both = [EkfacEstimator(name="ekfac"), ArnoldiEstimator(name="arnoldi", top_k=5, arnoldi_dim=10)]
    assert names(check_cell(facts(estimators=both, notes=notes))) == {"kfac_uncovered", "arnoldi_few_directions"}


def _inputs(module: nn.Module, n: int = 40, features: int = 3, classes: int = 3) -> EstimatorInputs:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, features, generator=g, dtype=torch.float64)
    y = torch.randint(0, classes, (n,), generator=g)
    module = module.double()
    params = {k: v.detach().clone() for k, v in module.named_parameters()}
    return EstimatorInputs(module=module, params=params, x_train=x, y_train=y, x_test=x[:2], y_test=y[:2],
                           measure="test_loss", weight_decay=0.01, seed=0)


def test_kfac_notes_the_share_of_parameters_outside_linear_layers():
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Tanh(), nn.Linear(4, 3))
    inputs = _inputs(module)
    kronecker_layers(inputs)
    # LayerNorm's weight and bias (8) of 16 + 8 + 15 = 39 parameters
    assert inputs.notes["kfac_uncovered"] == pytest.approx(8 / 39)
    plain = _inputs(nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)))
    kronecker_layers(plain)
    assert plain.notes["kfac_uncovered"] == 0.0


def test_arnoldi_notes_the_share_of_the_trace_its_directions_hold():
    torch.manual_seed(0)
    inputs = _inputs(nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)))
    arnoldi_scores(ArnoldiEstimator(name="arnoldi", top_k=3, arnoldi_dim=31, damping=0.01), inputs)
    eye = torch.eye(inputs.dim, dtype=torch.float64)
    H = inputs.hvp(eye)
    values = torch.linalg.eigvalsh(0.5 * (H + H.T))
    exact = float(values.abs().sort(descending=True).values[:3].sum() / values.sum())
    assert inputs.notes["arnoldi_mass"] == pytest.approx(exact, rel=0.5)  # the trace is a Hutchinson estimate
    assert 0 < inputs.notes["arnoldi_mass"] < 1


WINE = Path(__file__).resolve().parents[1] / "studies" / "wine_health.yaml"


def test_an_interpolating_study_is_flagged_in_the_run_the_report_and_its_claims(write, tmp_path: Path):
    """Wine without weight decay interpolates and LiSSA's damping swamps its curvature; with weight decay it
    does not: the run prints both warnings, the report lists them, and a claim on those cells carries them."""
    text = WINE.read_text().replace("repeats: 3", "repeats: 1").replace("model.dropout: [0.0, 0.1]",
                                                                          "model.dropout: [0.0]")
    text = text.replace("k: 60", "k: 8").replace("recursion_depth: 2000", "recursion_depth: 100").replace(
        "steps: 1000", "steps: 200")
    text = text.replace("estimators:\n  - {name: exact, damping: 0.001, negative: abs}\n  - {name: ekfac}\n",
                        "estimators:\n  - {name: exact, damping: 0.001, negative: abs}\n")
    db = tmp_path / "w.duckdb"
    result = runner.invoke(app, ["run", str(write("w.yaml", text)), "--db", str(db)])
    assert result.exit_code == 0, result.output
    assert "warning interpolation (model)" in result.output and "warning damping_dominates (lissa)" in result.output
    found = rows(db, """SELECT "check", subject, json_extract_string(c.params, '$."training.weight_decay"')
                        FROM diagnostics d JOIN cells c USING (study, cell_id)""")
    assert {(c, s) for c, s, wd in found if wd == "0.0"} >= {("interpolation", "model"), ("damping_dominates",
                                                                                          "lissa")}
    assert not {c for c, _, wd in found if wd == "0.01"} & {"interpolation", "damping_dominates"}
    health = dict(rows(db, "SELECT claim, health FROM claims"))
    assert "damping_dominates (lissa)" in health["without weight decay, LiSSA is accurate"]
    assert "⚠" in result.output
    report = runner.invoke(app, ["report", "wine-health", "--db", str(db), "--out", str(tmp_path / "r")])
    assert report.exit_code == 0, report.output
    html = (tmp_path / "r" / "report.html").read_text()
    assert "Health checks" in html and "interpolation" in html and "Numbers" in html
    # warm-start retraining recorded how far each refit got: its final and initial gradient norms
    ratios = rows(db, "SELECT grad_norm / start_grad_norm FROM refits WHERE start_grad_norm > 0")
    assert ratios and np.isfinite([r for (r,) in ratios]).all()


def test_retraining_ratio_reads_warm_start_rows_and_not_solved_refits(tmp_path: Path):
    """retraining_not_converged's ratio is the median final / initial gradient norm of warm-start retraining;
    solved refits in the same table (iterations set, with their own start and tolerance) are not part of it."""
    import duckdb

    from inflang.results import store

    con = duckdb.connect(str(tmp_path / "r.duckdb"))
    con.execute(store.TABLES)
    con.execute(store.MIGRATIONS)
    con.executemany("INSERT INTO solver_rows (task_hash, train_index, grad_norm, iterations, start_grad_norm) "
                    "VALUES (?, ?, ?, ?, ?)",
                    [("warm", 0, 0.2, None, 1.0), ("warm", 1, 0.4, None, 1.0), ("warm", 2, 0.6, None, 1.0),
                     ("mixed", 0, 0.5, None, 1.0), ("mixed", 1, 1e-12, 3, 1e-3), ("mixed", 2, 1e-12, 4, 1e-3)])
    con.execute("INSERT INTO solver_rows (task_hash, train_index, grad_norm, iterations, start_grad_norm, "
                "converged, tolerance) VALUES ('solved', 0, 1e-11, 2, 1e-4, true, 1e-10)")
    ratio = store.diagnostic_inputs(con, ["warm", "mixed", "solved"])["retrain_ratio"]
    assert ratio == pytest.approx({"warm": 0.4, "mixed": 0.5})
