"""The converged (Newton) ground truth: exact refits, gradient norms, and clear failures."""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from inflang.cli import app
from inflang.spec import LogregModel, LooProtocol, MlpModel, RemovalSpec, TrainingSpec
from runners.curvature import objective_hessian
from runners.errors import TaskFailure
from runners.models import build
from runners.newton import newton_refit
from runners.protocols.common import Problem, RetrainSetup
from runners.protocols.loo import leave_one_out
from runners.train import train
from tests.helpers import toy_mlp
from tests.reference import refit

runner = CliRunner()


def test_newton_matches_an_independent_refit_on_logistic_regression():
    rng = np.random.default_rng(4)
    n, d, C, wd = 40, 3, 3, 0.05
    x, y = rng.normal(size=(n, d)), rng.integers(0, C, size=n)
    X, Y = torch.tensor(x), torch.tensor(y)
    module = build(LogregModel(arch="logreg"), d, C, seed=0, dtype=torch.float64)
    training = TrainingSpec(optimizer="lbfgs", lr=1.0, epochs=200, weight_decay=wd)
    trained = train(module, X, Y, training, 0)
    weights = torch.ones(4, n, dtype=torch.float64)
    for m, i in enumerate([0, 7, 39]):
        weights[m + 1, i] = 0.0
    H0 = objective_hessian(module, trained.params, X, Y, wd)
    result = newton_refit(module, trained.params, X, Y, weights, wd, H0, tol=1e-12, max_iter=100, damping=0.0)
    assert (result.grad_norm <= 1e-12).all()
    theta0 = np.concatenate([trained.params["0.weight"].numpy().ravel(), trained.params["0.bias"].numpy()])
    for m in range(4):
        W, b = refit(x, y, weights[m].numpy(), wd, C, theta0)
        expected = np.concatenate([W.ravel(), b])
        assert np.abs(result.theta[m].numpy() - expected).max() < 1e-10


def test_every_mlp_refit_reaches_the_tolerance():
    module, x, y, training, trained = toy_mlp(0)
    spec = LooProtocol(protocol="loo", solver="newton", tol=1e-10, damping=0.05,
                       removals=RemovalSpec(select="all"))
    setup = RetrainSetup(trained.params, [trained.init], [0])
    result = leave_one_out(spec, Problem(module, setup, training, x, y, x[:3], y[:3]), [np.arange(40)] * 3)
    positions, norms, iterations, converged, starts, tolerances = result.solver
    assert len(norms) == 41 and positions[0] == -1 and all(converged)
    assert max(norms) <= 1e-10 and set(tolerances) == {1e-10}
    assert min(starts[1:]) > 1e-10  # every removal started away from its tolerance and was solved
    assert torch.isfinite(result.actual).all()


def test_indefinite_hessian_without_damping_is_a_clear_error():
    torch.manual_seed(1)
    x, y = torch.randn(30, 2, dtype=torch.float64), torch.randint(0, 2, (30,))
    module = build(MlpModel(arch="mlp", depth=2, width=6, activation="tanh"), 2, 2, seed=0, dtype=torch.float64)
    params = {k: v.detach() for k, v in module.named_parameters()}  # untrained: a saddle-rich region
    H0 = objective_hessian(module, params, x, y, 0.0)
    assert float(torch.linalg.eigvalsh(H0).min()) < 0
    with pytest.raises(TaskFailure, match="set ground_truth.damping above"):
        newton_refit(module, params, x, y, torch.ones(2, 30, dtype=torch.float64), 0.0, H0, 1e-10, 10, 0.0)


def test_newton_study_end_to_end(write, tmp_path: Path):
    study = write("n.yaml", """\
        study: newton
        dataset: {name: iris, test_size: 30}
        model: {arch: logreg}
        training: {optimizer: lbfgs, lr: 1.0, epochs: 300, weight_decay: 0.01}
        estimators: [{name: exact, damping: 0.0}]
        test_points: {count: 3}
        ground_truth: {protocol: loo, solver: newton}
        """)
    db = tmp_path / "n.duckdb"
    result = runner.invoke(app, ["run", str(study), "--db", str(db)])
    assert result.exit_code == 0, result.output
    con = duckdb.connect(str(db), read_only=True)
    count, worst = con.execute("SELECT count(*), max(grad_norm) FROM refits").fetchone()
    assert count == 121 and worst <= 1e-10
    spearman = con.execute("SELECT value FROM metrics WHERE metric = 'spearman' AND test_index IS NULL").fetchone()
    assert spearman[0] > 0.99
    con.close()


def test_decomposition_terms_add_up(write, tmp_path: Path):
    study = write("d.yaml", """\
        study: decomposition
        dataset: {name: iris, test_size: 30}
        model: {arch: mlp, depth: 1, width: 3, activation: tanh}
        training: {optimizer: adam, lr: 0.02, epochs: 800, weight_decay: 0.01}
        estimators: [{name: exact, curvature: ggn, damping: 0.01}]
        test_points: {count: 2}
        ground_truth: {protocol: loo, steps: 100, removals: {select: random, k: 8}, decompose: true,
                       pbrf_damping: 0.01, damping: 0.01}
        """)
    db = tmp_path / "d.duckdb"
    result = runner.invoke(app, ["run", str(study), "--db", str(db)])
    assert result.exit_code == 0, result.output
    con = duckdb.connect(str(db), read_only=True)
    gaps = dict(con.execute("SELECT metric, value FROM metrics WHERE test_index IS NULL AND metric LIKE '%mean_gap'"
                            " AND metric NOT LIKE '%abs%'").fetchall())
    total = gaps["influence_vs_pbrf_mean_gap"] + gaps["pbrf_vs_converged_loo_mean_gap"] \
        + gaps["converged_loo_vs_retrained_mean_gap"]
    assert total == pytest.approx(gaps["influence_vs_retrained_mean_gap"], abs=1e-12)
    responses = dict(con.execute("SELECT response, count(*) FROM responses GROUP BY 1").fetchall())
    assert responses == {"retrained": 16, "converged_loo": 16, "pbrf": 16}
    (worst,) = con.execute("SELECT max(grad_norm) FROM refits").fetchone()
    assert worst <= 1e-10
    con.close()
    report = runner.invoke(app, ["report", "decomposition", "--db", str(db), "--out", str(tmp_path / "rep")])
    assert report.exit_code == 0 and (tmp_path / "rep" / "figures" / "decomposition.png").exists()


def test_quasi_newton_steps_reach_the_refits_dense_ones_do(monkeypatch):
    """Above DENSE_PARAMETERS a model takes quasi-Newton steps from the chord instead of Newton steps on its
    explicit Hessian: with a poor chord matrix (so the chord alone is slow), both reach the same refits, and
    the quasi-Newton path formed no Hessian (the objectives offer no Hessian-vector product to apply)."""
    import runners.newton as newton

    module, x, y, _, trained = toy_mlp(1)
    weights = torch.ones(5, 40, dtype=torch.float64)
    weights[torch.arange(1, 5), torch.tensor([0, 9, 17, 33])] = 0.0
    H0 = objective_hessian(module, trained.params, x, y, 0.01)
    poor = H0 + 0.5 * torch.eye(H0.shape[0], dtype=torch.float64)  # the chord alone converges slowly
    dense = newton_refit(module, trained.params, x, y, weights, 0.01, poor, 1e-11, 200, 0.0)
    monkeypatch.setattr(newton, "DENSE_PARAMETERS", 0)
    formed = []
    monkeypatch.setattr(newton.WeightedLoss, "hessians", lambda *a: formed.append(1))
    quasi = newton_refit(module, trained.params, x, y, weights, 0.01, poor, 1e-11, 200, 0.0)
    assert not formed and (quasi.grad_norm <= 1e-11).all()
    assert int(quasi.iterations.max()) <= 100
    monkeypatch.setattr(newton._Pairs, "add", lambda *a: None)  # no pairs: every step the chord's
    with pytest.raises(TaskFailure, match="did not reach"):  # the chord alone takes 300-1,100 iterations here
        newton_refit(module, trained.params, x, y, weights, 0.01, poor, 1e-11, 200, 0.0)
    torch.testing.assert_close(quasi.theta, dense.theta, rtol=0, atol=1e-8)  # |grad| 1e-11 over the smallest curvature


def test_leave_one_out_above_the_dense_size_takes_the_gauss_newton_chord(monkeypatch):
    """Above DENSE_PARAMETERS converged leave-one-out forms no explicit Hessian (P Hessian-vector products): its
    chord is the Gauss-Newton matrix, and the quasi-Newton steps from it reach the refits the dense path
    reaches from the explicit Hessian."""
    import runners.newton as newton

    module, x, y, training, trained = toy_mlp(3)
    spec = LooProtocol(protocol="loo", solver="newton", tol=1e-11, removals=RemovalSpec(select="all"))
    setup = RetrainSetup(trained.params, [trained.init], [0])
    problem = Problem(module, setup, training, x, y, x[:3], y[:3])
    removals = [np.array([0, 5, 11, 29])] * 3
    dense = leave_one_out(spec, problem, removals)
    monkeypatch.setattr(newton, "DENSE_PARAMETERS", 0)
    chords: list[str] = []
    monkeypatch.setattr(newton, "objective_hessian", lambda *a, **k: chords.append("hessian"))
    ggn = newton.objective_ggn
    monkeypatch.setattr(newton, "objective_ggn", lambda *a, **k: chords.append("ggn") or ggn(*a, **k))
    monkeypatch.setattr(newton.WeightedLoss, "hessians", lambda *a: chords.append("model hessians"))
    quasi = leave_one_out(spec, problem, removals)
    assert chords == ["ggn"] and all(quasi.solver[3])
    torch.testing.assert_close(quasi.actual, dense.actual, rtol=0, atol=1e-9, equal_nan=True)  # NaN: not removed


def test_a_refit_that_does_not_converge_is_reported_when_not_strict():
    from runners.newton import WeightedLoss, newton_solve
    from runners.objective import FlatModel

    torch.manual_seed(2)
    x = torch.randn(30, 3, dtype=torch.float64)
    y = (x[:, 0] > 0).long()
    module = build(MlpModel(arch="mlp", depth=1, width=4, activation="tanh"), 3, 2, seed=0, dtype=torch.float64)
    flat = FlatModel(module, {k: v.detach() for k, v in module.named_parameters()})  # far from an optimum
    weights = torch.ones(2, 30, dtype=torch.float64)
    H = torch.eye(flat.theta.numel(), dtype=torch.float64)
    objective = WeightedLoss(flat, x, y, weights, 0.01)
    with pytest.raises(TaskFailure, match="did not reach"):
        newton_solve(objective, flat.theta, 2, H, 1e-12, 1, 0.0)
    refit = newton_solve(objective, flat.theta, 2, H, 1e-12, 1, 0.0, strict=False)
    assert not bool(refit.converged(1e-12).any()) and (refit.iterations == 1).all()


def test_quasi_newton_directions_are_bfgs_from_the_scaled_chord():
    """_Pairs.directions equals B^-1 g built out densely by the BFGS inverse update (Nocedal & Wright eq. 6.17)
    from H_0 = gamma C^-1, gamma = s.y / (y.C^-1 y) of the newest kept pair, over the pairs of the last
    QUASI_NEWTON_PAIRS iterations (older ones wrapped out of the ring), skipping pairs with s.y <= 0; a model
    whose pairs were forgotten steps along C^-1 g."""
    from runners.newton import QUASI_NEWTON_PAIRS, _Pairs

    gen = torch.Generator().manual_seed(0)
    P, M, rounds = 6, 3, QUASI_NEWTON_PAIRS + 3
    R = torch.randn(P, P, dtype=torch.float64, generator=gen)
    C = R @ R.T + P * torch.eye(P, dtype=torch.float64)
    chol = torch.linalg.cholesky(C)
    A = [torch.randn(P, P, dtype=torch.float64, generator=gen) for _ in range(M)]
    A = [a @ a.T + torch.eye(P, dtype=torch.float64) for a in A]  # each model's curvature: y = A s
    pairs = _Pairs(M, P, torch.float64)
    history: list[list[tuple[torch.Tensor, torch.Tensor]]] = [[] for _ in range(M)]
    for r in range(rounds):
        rows = torch.tensor([0, 1, 2] if r != rounds - 2 else [0, 2])  # model 1 does not move in one iteration
        s = torch.randn(len(rows), P, dtype=torch.float64, generator=gen)
        y = torch.stack([A[int(m)] @ s[k] for k, m in enumerate(rows)])
        if r == rounds - 1:
            y[0] = -y[0]  # negative curvature: model 0's newest pair is not kept
        pairs.add(rows, s, y, chol)
        for k, m in enumerate(rows.tolist()):
            history[m].append((s[k], y[k]))
        for m in set(range(M)) - set(rows.tolist()):
            history[m].append((torch.zeros(P, dtype=torch.float64), torch.zeros(P, dtype=torch.float64)))
    g = torch.randn(M, P, dtype=torch.float64, generator=gen)
    got = pairs.directions(torch.arange(M), g, chol)
    C_inv = torch.linalg.inv(C)
    for m in range(M):
        kept = [(s, y) for s, y in history[m][-QUASI_NEWTON_PAIRS:] if float(s @ y) > 0]
        s_new, y_new = kept[-1]
        H = float(s_new @ y_new) / float(y_new @ C_inv @ y_new) * C_inv
        eye = torch.eye(P, dtype=torch.float64)
        for s, y in kept:
            rho = 1.0 / float(s @ y)
            H = (eye - rho * torch.outer(s, y)) @ H @ (eye - rho * torch.outer(y, s)) + rho * torch.outer(s, s)
        torch.testing.assert_close(got[m], H @ g[m], rtol=1e-10, atol=0)
    pairs.forget(torch.tensor([1]))
    torch.testing.assert_close(pairs.directions(torch.tensor([1]), g[1:2], chol)[0], C_inv @ g[1], rtol=1e-10, atol=0)
