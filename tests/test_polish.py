"""``training: {polish: ...}``: the trained model taken to a stationary point of its full-batch objective,
checked against an independent computation of that objective's gradient; the study-level effects (the
health check that flagged the unpolished model is quiet, the rows), the refusals, and that studies without
polish keep their task hashes."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from typer.testing import CliRunner

from inflang.api import plan
from inflang.cli import app
from runners.polish import polish
from tests.helpers import rows

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]


def _independent_gradient_norm(module: nn.Module, x: torch.Tensor, y: torch.Tensor, weight_decay: float) -> float:
    """||grad L|| with L written out here: mean cross-entropy + weight_decay / 2 sum ||p||^2."""
    params = list(module.parameters())
    loss = F.cross_entropy(module(x), y) + weight_decay / 2 * sum((p * p).sum() for p in params)
    return float(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)]).norm())


@pytest.mark.parametrize("activation", [nn.Tanh, nn.GELU])  # smooth; GELU's Hessian can be indefinite
def test_polish_reaches_the_tolerance_from_a_model_far_from_stationary(activation: type[nn.Module]):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(60, 4, generator=g, dtype=torch.float64)
    y = (x[:, 0] + x[:, 1] > 0).long() + (x[:, 2] > 1).long()
    torch.manual_seed(1)
    module = nn.Sequential(nn.Linear(4, 8), activation(), nn.Linear(8, 3)).double()
    before = _independent_gradient_norm(module, x, y, 0.01)
    done = polish(module, x, y, 0.01, tol=1e-8, max_steps=3000)
    after = _independent_gradient_norm(module, x, y, 0.01)
    assert before > 1e-2 and done.start_grad_norm == pytest.approx(before, rel=1e-9)
    assert done.converged and after <= 1e-8 and done.grad_norm == pytest.approx(after, rel=1e-6, abs=1e-12)
    assert 0 < done.steps <= 3000 and module.training  # its mode is given back


def test_polish_reports_where_a_relu_network_stops():
    """A ReLU network's objective has kinks, and its minimum can lie on one, where no gradient vanishes:
    polish lowers the norm, stops once it no longer halves, and says it did not converge."""
    x = torch.randn(60, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = (x[:, 0] + x[:, 1] > 0).long() + (x[:, 2] > 1).long()
    torch.manual_seed(1)
    module = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).double()
    done = polish(module, x, y, 0.01, tol=1e-8, max_steps=3000)
    assert not done.converged and done.steps < 3000 and done.grad_norm < done.start_grad_norm / 10
    assert done.grad_norm == pytest.approx(_independent_gradient_norm(module, x, y, 0.01), rel=1e-6)


def test_polish_in_chunks_and_in_float32():
    """The objective summed over chunks of 7 examples is the full-batch one (the same stationary point, to the
    tolerance); float32 reaches its default tolerance, 1e-4."""
    from inflang.spec import PolishSpec

    x = torch.randn(60, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    y = (x[:, 0] - x[:, 3] > 0).long()
    torch.manual_seed(5)
    whole = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 2)).double()
    chunked = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 2)).double()
    chunked.load_state_dict(whole.state_dict())
    assert polish(whole, x, y, 0.01, 1e-8, 2000).converged and polish(chunked, x, y, 0.01, 1e-8, 2000, rows=7).converged
    for a, b in zip(whole.parameters(), chunked.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    single = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 2))
    done = polish(single, x.float(), y, 0.01, PolishSpec().tolerance("float32"), 2000)
    assert done.converged and _independent_gradient_norm(single, x.float(), y, 0.01) <= 1e-4


def test_polish_stops_at_its_step_limit_and_says_so():
    x = torch.randn(60, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    y = (x[:, 0] > 0).long()
    torch.manual_seed(3)
    module = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2)).double()
    done = polish(module, x, y, 0.01, tol=1e-12, max_steps=3)
    assert not done.converged and done.steps <= 3 and math.isfinite(done.grad_norm)
    assert done.grad_norm < done.start_grad_norm


STUDY = """\
study: polished
dataset: {{name: iris, test_size: 30, standardize: true}}
model: {{arch: mlp, depth: 1, width: 6}}
training: {{optimizer: adam, lr: 0.01, epochs: 200, weight_decay: {wd}, dtype: float64{polish}}}
estimators: [{{name: exact, damping: 0.001, negative: abs}}]
test_points: {{count: 4}}
ground_truth: {{protocol: loo, start: {start}, steps: 200, removals: {{select: random, k: 10}}}}
metrics: [spearman]
"""


def test_a_polished_study_starts_from_a_stationary_point(write, tmp_path: Path):
    """200 Adam steps leave the model off its stationary point (the health check says so); with polish the
    same cell is stationary, the check is quiet, and the rows say how far polish went."""
    def run(name: str, polish_yaml: str) -> Path:
        db = tmp_path / f"{name}.duckdb"
        study = write(f"{name}.yaml", STUDY.format(wd=0.01, polish=polish_yaml, start="optimum"))
        result = runner.invoke(app, ["run", str(study), "--db", str(db)])
        assert result.exit_code == 0, result.output
        return db

    plain, polished = run("plain", ""), run("polished", ", polish: {}")
    assert ("not_stationary", "exact") in set(rows(plain, 'SELECT "check", subject FROM diagnostics'))
    assert "not_stationary" not in {c for (c,) in rows(polished, 'SELECT "check" FROM diagnostics')}
    query = ("SELECT polish_steps, polish_start_grad_norm, polish_grad_norm, polish_converged, "
             "polish_accuracy_change, polish_seconds FROM models")
    ((steps, start, end, converged, change, seconds),) = rows(polished, query)
    assert steps > 0 and start > 1e-3 and end <= 1e-8 and converged and -1 <= change <= 1 and seconds > 0
    assert rows(plain, "SELECT polish_steps, polish_grad_norm FROM models") == [(None, None)]


@pytest.mark.parametrize(("wd", "start", "extra", "says"), [
    (0.0, "optimum", "", "needs weight_decay > 0"),
    (0.01, "scratch", "", "scratch retraining"),
    (0.01, "optimum", ", early_stopping: {patience: 3}", "undoing early stopping"),
])
def test_polish_is_refused_where_it_cannot_hold(write, wd: float, start: str, extra: str, says: str):
    study = write("bad.yaml", STUDY.format(wd=wd, polish=", polish: {}" + extra, start=start))
    result = runner.invoke(app, ["validate", str(study)])
    assert result.exit_code == 2 and says in result.output and "training.polish" in result.output
    assert "bad.yaml:4:" in result.output  # positioned at the training line


def test_studies_without_polish_keep_their_task_hashes():
    """The field is left out of dumps while absent (``Spec.late_fields``), so no finished task is recomputed:
    these are the quickstart's train hashes before polish existed."""
    compiled = plan(ROOT / "studies" / "quickstart.yaml")
    trains = sorted(h for h, t in compiled.tasks.items() if t.kind == "train")
    assert trains[:3] == ["02ae5cfc9673eeb83b2a", "2761804c2050760b956f", "2d01bc0d06bef8cf8b1a"]
