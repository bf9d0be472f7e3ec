"""Each ground-truth protocol on a tiny problem whose answer is known."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from inflang.cli import app
from inflang.spec import LogregModel, LooProtocol, MlpModel, RemovalSpec, TrainingSpec
from runners.metrics import score
from runners.models import build
from runners.protocols.common import Problem, RetrainSetup
from runners.protocols.loo import leave_one_out
from runners.train import train
from tests.helpers import rows, toy_mlp

runner = CliRunner()


def run(write, tmp_path: Path, text: str) -> Path:
    db = tmp_path / "p.duckdb"
    result = runner.invoke(app, ["run", str(write("p.yaml", text)), "--db", str(db)])
    assert result.exit_code == 0, result.output
    return db


def test_scratch_with_nothing_removed_reproduces_the_base_model_bit_for_bit():
    torch.manual_seed(0)
    x, y = torch.randn(50, 3, dtype=torch.float64), torch.randint(0, 3, (50,))
    spec = TrainingSpec(optimizer="adam", lr=0.05, epochs=30, batch_size=16, weight_decay=0.01)
    module = build(MlpModel(arch="mlp", depth=1, width=5), 3, 3, seed=1, dtype=torch.float64)
    trained = train(module, x, y, spec, order_seed=7)
    from runners.ensemble import stack, train_ensemble, weighted_cross_entropy
    from runners.protocols.common import update_rule

    gt = LooProtocol(protocol="loo", start="scratch")
    again = train_ensemble(module, stack(trained.init, 3), x, update_rule(gt, spec, 50), spec.total_steps(50), 16,
                           [7] * 3, weighted_cross_entropy(y, torch.ones(3, 50, dtype=torch.float64)))
    for k, v in trained.params.items():
        assert torch.equal(again[k][0], v) and torch.equal(again[k][2], v)


def test_scratch_loo_control_cancels(write, tmp_path: Path):
    """Scratch retraining end to end: actual values are finite and the ground truth matches LOO from scratch."""
    db = run(write, tmp_path, """\
        study: s
        dataset: {name: iris, test_size: 30}
        model: {arch: logreg}
        training: {optimizer: sgd, lr: 0.5, epochs: 300, weight_decay: 0.05}
        estimators: [{name: exact, damping: 0.0}]
        test_points: {count: 2}
        ground_truth: {protocol: loo, start: scratch, removals: {select: random, k: 10}}
        """)
    ((spearman,),) = rows(db, "SELECT value FROM metrics WHERE test_index IS NULL AND metric = 'spearman'")
    assert spearman > 0.9


def test_noise_ceiling_one_when_deterministic_lower_with_noise(write, tmp_path: Path):
    base = """\
        study: n
        dataset: {name: iris, test_size: 30}
        model: {arch: logreg}
        training: {optimizer: sgd, lr: 0.5, epochs: 100, weight_decay: 0.05%s}
        estimators: [{name: exact, damping: 0.0}]
        test_points: {count: 2}
        ground_truth: {protocol: loo, steps: %d, repeats: 4, removals: {select: random, k: 12}}
        """
    deterministic = run(write, tmp_path, base % ("", 100))
    ((value,),) = rows(deterministic, "SELECT value FROM metrics WHERE metric = 'noise_ceiling_spearman' "
                                      "AND test_index IS NULL AND estimator IS NULL")
    assert value == pytest.approx(1.0)
    noisy = run(write, tmp_path / "b", base % (", batch_size: 8", 5))
    ((value,),) = rows(noisy, "SELECT value FROM metrics WHERE metric = 'noise_ceiling_spearman' "
                              "AND test_index IS NULL")
    assert value < 0.9


def test_lds_recovers_an_exactly_additive_datamodel():
    """When the measured change is exactly the sum of per-point effects, the LDS is 1."""
    rng = np.random.default_rng(0)
    tau = rng.normal(size=(2, 30))
    removed = rng.random((40, 30)) < 0.5
    actual = tau @ removed.T.astype(float)  # [T, M]
    estimates = tau @ removed.T.astype(float)
    rows_ = score(estimates, actual, ["spearman"])
    assert all(r.value == pytest.approx(1.0) for r in rows_)


def test_lds_end_to_end_on_a_strongly_convex_model(write, tmp_path: Path):
    db = run(write, tmp_path, """\
        study: l
        dataset: {name: iris, test_size: 30}
        model: {arch: logreg}
        training: {optimizer: sgd, lr: 0.5, epochs: 300, weight_decay: 0.5}
        estimators: [{name: exact, damping: 0.0}, {name: grad_cos}]
        test_points: {count: 2}
        ground_truth: {protocol: lds, start: optimum, subsets: 20, fraction: 0.9, steps: 300}
        """)
    lds = dict(rows(db, "SELECT estimator, value FROM metrics WHERE metric = 'spearman' AND test_index IS NULL"))
    assert lds["exact"] > 0.9
    members = rows(db, "SELECT count(*) FROM group_members")[0][0]
    assert members == 20 * 12  # each subset leaves out 10% of 120 points
    (checked,) = rows(db, "SELECT count(*) FROM group_influence WHERE estimator = 'exact'")
    assert checked[0] == 2 * 20


def test_group_of_one_point_equals_leave_one_out(write, tmp_path: Path):
    """Under leave-one-out's convention (mean_over: all: weight 0, n kept) a group of one is a removal."""
    common = """\
        study: g
        dataset: {name: iris, test_size: 30}
        model: {arch: logreg}
        training: {optimizer: sgd, lr: 0.5, epochs: 200, weight_decay: 0.05}
        estimators: [{name: exact, damping: 0.0}]
        test_points: {count: 2}
        """
    db_g = run(write, tmp_path, common + "ground_truth: {protocol: group, steps: 50, "
                                         "mean_over: all, groups: {count: 120, size: 1, select: random}}\n")
    db_l = run(write, tmp_path / "l", common + "ground_truth: {protocol: loo, steps: 50}\n")
    group = rows(db_g, "SELECT test_index, m.train_index, actual, estimate FROM group_influence "
                       "JOIN group_members m USING (group_index) ORDER BY ALL")
    loo = rows(db_l, "SELECT test_index, train_index, actual, estimate FROM influence ORDER BY ALL")
    assert len(group) == len(loo) == 240
    for (t1, i1, a1, e1), (t2, i2, a2, e2) in zip(group, loo, strict=True):
        assert (t1, i1) == (t2, i2) and a1 == pytest.approx(a2, abs=1e-12) and e1 == pytest.approx(e2)


def test_groups_by_class_and_ranked(write, tmp_path: Path):
    db = run(write, tmp_path, """\
        study: gc
        dataset: {name: iris, test_size: 30}
        model: {arch: logreg}
        training: {optimizer: sgd, lr: 0.5, epochs: 200, weight_decay: 0.05}
        estimators: [{name: exact, damping: 0.0}]
        test_points: {count: 2}
        ground_truth: {protocol: group, steps: 50, groups: {count: 6, size: 5, select: by_class}}
        """)
    # iris rows 0-49 are class 0, 50-99 class 1, 100-149 class 2
    classes = rows(db, "SELECT group_index, count(DISTINCT train_index // 50), count(*) FROM group_members "
                       "GROUP BY 1 ORDER BY 1")
    assert [(c, k) for _, c, k in classes] == [(1, 5)] * 6


def test_pbrf_agrees_with_ggn_influence_to_first_order(write, tmp_path: Path):
    db = run(write, tmp_path, """\
        study: b
        dataset: {name: iris, test_size: 30}
        model: {arch: logreg}
        training: {optimizer: lbfgs, lr: 1.0, epochs: 300, weight_decay: 0.01}
        estimators: [{name: exact, curvature: ggn, damping: 0.3}]
        test_points: {count: 2}
        ground_truth: {protocol: pbrf, damping: 0.3, optimizer: sgd, lr: 1.0, steps: 300,
                       removals: {select: random, k: 15}}
        """)
    pairs = np.array(rows(db, "SELECT estimate, actual FROM influence WHERE actual IS NOT NULL"))
    assert len(pairs) == 30
    relative = np.abs(pairs[:, 0] - pairs[:, 1]).max() / np.abs(pairs[:, 1]).max()
    assert relative < 0.05


def test_loo_against_exact_solution_with_repeats_and_percentile(write, tmp_path: Path):
    db = run(write, tmp_path, """\
        study: q
        dataset: {name: iris, test_size: 30}
        model: {arch: logreg}
        training: {optimizer: sgd, lr: 0.5, epochs: 100, weight_decay: 0.05}
        estimators: [{name: exact, damping: 0.0}]
        test_points: {count: 2}
        ground_truth: {protocol: loo, steps: 20, removals: {select: percentile, percentile: 30, k: 7, by: exact}}
        metrics: {names: [spearman, top_k_overlap], top_k: 3, bootstrap: 50}
        """)
    per_point = rows(db, "SELECT test_index, count(*) FROM influence WHERE actual IS NOT NULL GROUP BY 1")
    assert [c for _, c in per_point] == [7, 7]
    ((low, high),) = rows(db, "SELECT ci_low, ci_high FROM metrics WHERE test_index IS NULL AND metric = 'spearman'")
    assert low <= high


def test_loo_problem_api_with_two_repeats():
    torch.manual_seed(3)
    x, y = torch.randn(30, 2, dtype=torch.float64), torch.randint(0, 2, (30,))
    module = build(LogregModel(arch="logreg"), 2, 2, seed=0, dtype=torch.float64)
    training = TrainingSpec(optimizer="sgd", lr=0.5, epochs=50, batch_size=10, weight_decay=0.1)
    trained = train(module, x, y, training, 0)
    setup = RetrainSetup(trained.params, [trained.init, trained.init], [0, 1])
    spec = LooProtocol(protocol="loo", steps=5, repeats=2, removals=RemovalSpec(select="all"))
    result = leave_one_out(spec, Problem(module, setup, training, x, y, x[:2], y[:2]), [np.arange(30)] * 2)
    assert result.per_repeat.shape == (2, 2, 30)
    assert not torch.equal(result.per_repeat[0], result.per_repeat[1])  # different batch orders


@pytest.mark.parametrize("select", ["highest_loss", "median_loss", "random", "misclassified"])
def test_every_test_point_selection_runs(write, tmp_path: Path, select: str):
    db = run(write, tmp_path, f"""\
        study: t
        dataset: {{name: iris, test_size: 30}}
        model: {{arch: mlp, depth: 1, width: 3}}
        training: {{optimizer: adam, lr: 0.05, epochs: 30}}
        estimators: [{{name: grad_dot}}]
        test_points: {{select: {select}, count: 3}}
        ground_truth: {{protocol: loo, steps: 3, removals: {{select: random, k: 5}}}}
        """)
    (count,) = rows(db, "SELECT count(DISTINCT test_index) FROM influence")[0]
    assert 1 <= count <= 3


def test_removal_selections_pick_the_right_points():
    from inflang.spec import RemovalSpec
    from runners.selection import select_removals

    scores = torch.tensor([[5.0, -9.0, 1.0, 3.0, -2.0, 0.5, 7.0, -4.0, 6.0, 8.0, 0.0]], dtype=torch.float64)
    top = select_removals(RemovalSpec(select="top_k", k=3, by="e"), 11, 1, scores, 0)[0]
    assert sorted(top) == [1, 6, 9]  # |-9|, |8|, |7|
    signed = select_removals(RemovalSpec(select="top_k", k=3, by="e", rank_by="signed"), 11, 1, scores, 0)[0]
    assert sorted(signed) == [6, 8, 9]
    # |scores| ascending: 0, 0.5, 1, 2, 3, 4, 5, 6, 7, 8, 9 -> the 30th percentile is rank 3 (|-2|)
    around = select_removals(RemovalSpec(select="percentile", k=3, by="e", percentile=30), 11, 1, scores, 0)[0]
    assert sorted(around) == sorted([2, 4, 3])  # ranks 2..4: 1, -2, 3
    every = select_removals(RemovalSpec(select="all"), 11, 2, None, 0)
    assert len(every) == 2 and list(every[0]) == list(range(11))


def test_parameter_change_norm_against_converged_refits(write, tmp_path: Path):
    """The paper's parameter-change comparison: predicted (1/n)||H^-1 g_i|| vs ||theta_-i - theta||."""
    db = run(write, tmp_path, """\
        study: pc
        dataset: {name: iris, test_size: 30}
        model: {arch: logreg}
        training: {optimizer: lbfgs, lr: 1.0, epochs: 300, weight_decay: 0.01}
        estimators: [{name: exact, damping: 0.0}, {name: cg, damping: 0.0, tol: 1.0e-12}]
        ground_truth: {protocol: loo, solver: newton, measure: param_change_norm,
                       removals: {select: random, k: 30}}
        """)
    pairs = rows(db, "SELECT estimator, test_index, estimate, actual FROM influence WHERE actual IS NOT NULL")
    assert {t for _, t, _, _ in pairs} == {-1} and len(pairs) == 60
    exact = np.array([(e, a) for name, _, e, a in pairs if name == "exact"])
    assert (exact > 0).all()
    relative = np.abs(exact[:, 0] - exact[:, 1]) / exact[:, 1]
    assert np.median(relative) < 0.05 and relative.max() < 0.2  # first order: the largest removals deviate most
    spearman = dict(rows(db, "SELECT estimator, value FROM metrics WHERE metric = 'spearman' AND test_index IS NULL"))
    assert spearman["exact"] > 0.95 and spearman["cg"] == pytest.approx(spearman["exact"], abs=1e-6)


def test_parameter_change_norm_refuses_ranking_estimators(write):
    from inflang.compiling.validate import load_study
    from inflang.errors import StudyError

    path = write("bad.yaml", """\
        study: pc
        dataset: {name: iris}
        model: {arch: logreg}
        estimators: [{name: grad_dot}]
        ground_truth: {protocol: group, measure: param_change_norm}
        """)
    with pytest.raises(StudyError) as info:
        load_study(path)
    messages = [p.message for p in info.value.problems]
    assert any("compares single removals" in m for m in messages)
    assert any("grad_dot predicts no parameter change" in m for m in messages)


LDS_STUDY = """\
    study: dropping
    dataset: {name: iris, test_size: 30}
    model: {arch: logreg}
    training: {optimizer: sgd, lr: 0.5, epochs: 60, weight_decay: 0.05}
    estimators: [{name: exact, damping: 0.0}]
    test_points: {count: 2}
    ground_truth: {protocol: lds, subsets: 6, fraction: 0.5, nan: %s}
    """


def _poison_second_subset(monkeypatch):
    """Make the model of the second subset diverge (its loss is not finite), as a too-large learning rate
    would on one subset. The first chunk holds the control, 4 resolution probes, then the subsets."""
    import runners.protocols.common as common

    original = common.weighted_cross_entropy

    def poisoned(y, weights, smoothing=0.0, normalise="all"):
        weights = weights.clone()
        if weights.shape[0] > 6:
            weights[6, :] = float("inf")
        return original(y, weights, smoothing, normalise)

    monkeypatch.setattr(common, "weighted_cross_entropy", poisoned)


def test_lds_drops_a_diverging_subset_and_stores_the_count(write, tmp_path: Path, monkeypatch):
    _poison_second_subset(monkeypatch)
    db = run(write, tmp_path, LDS_STUDY % "drop")
    assert rows(db, "SELECT protocol, items, dropped FROM ground_truths") == [("lds", 6, 1)]
    n_pairs = rows(db, "SELECT DISTINCT n_pairs FROM metrics WHERE metric = 'spearman' AND test_index IS NOT NULL")
    assert n_pairs == [(5,)]  # the five subsets that trained
    assert rows(db, "SELECT count(*) FROM group_influence WHERE group_index = 1") == [(0,)]


def test_lds_nan_fail_fails_the_cell_with_the_way_out(write, tmp_path: Path, monkeypatch):
    _poison_second_subset(monkeypatch)
    db = tmp_path / "p.duckdb"
    result = runner.invoke(app, ["run", str(write("p.yaml", LDS_STUDY % "fail")), "--db", str(db)])
    assert result.exit_code == 1
    ((error,),) = rows(db, "SELECT error FROM cells")
    assert "nan: drop" in error


def test_group_removal_trains_each_group_on_its_kept_points(write, tmp_path: Path):
    """mean_over: kept (the default for groups) and all give different retrained models; both are stored
    under their own task, and the kept convention is the published one."""
    text = """\
        study: groups
        dataset: {name: iris, test_size: 30}
        model: {arch: logreg}
        training: {optimizer: sgd, lr: 0.5, epochs: 100, weight_decay: 0.05}
        estimators: [{name: exact, damping: 0.0}]
        test_points: {count: 2}
        ground_truth: {protocol: group, steps: 50, groups: {count: 4, size: 30}%s}
        """
    kept = run(write, tmp_path, text % "")
    everything = run(write, tmp_path / "all", text % ", mean_over: all")
    a = rows(kept, "SELECT actual FROM group_influence ORDER BY test_index, group_index")
    b = rows(everything, "SELECT actual FROM group_influence ORDER BY test_index, group_index")
    assert len(a) == len(b) == 8 and a != b


def test_converged_pbrf_agrees_with_ggn_influence_and_reports_every_refit(write, tmp_path: Path):
    db = run(write, tmp_path, """\
        study: pn
        dataset: {name: iris, test_size: 30}
        model: {arch: mlp, depth: 1, width: 6, activation: tanh}
        training: {optimizer: lbfgs, lr: 1.0, epochs: 300, weight_decay: 0.01, dtype: float64}
        estimators: [{name: exact, curvature: ggn, damping: 0.3}]
        test_points: {count: 2}
        ground_truth: {protocol: pbrf, solver: newton, damping: 0.3, removals: {select: random, k: 10}}
        """)
    pairs = np.array(rows(db, "SELECT estimate, actual FROM influence WHERE actual IS NOT NULL"))
    assert len(pairs) == 20
    relative = np.abs(pairs[:, 0] - pairs[:, 1]).max() / np.abs(pairs[:, 1]).max()
    assert relative < 0.05  # the same response to first order
    refits = rows(db, "SELECT train_index, grad_norm, converged FROM refits")
    assert len(refits) == 11 and all(c for _, _, c in refits) and max(g for _, g, _ in refits) <= 1e-10
    # each refit's tolerance (the float64 default) and where it started: the removals from the removed point's
    # gradient over n, the control from theta_s itself
    started = rows(db, "SELECT train_index IS NULL, start_grad_norm, tolerance FROM refits")
    assert all(t == 1e-10 for _, _, t in started)
    assert all((g <= 1e-10) if control else (g > 1e-10) for control, g, _ in started)
    assert rows(db, "SELECT count(*) FROM diagnostics WHERE \"check\" IN ('refits_not_converged', "
                    "'refits_not_solved', 'retraining_not_converged')") == [(0,)]


def test_converged_pbrf_matches_an_independent_minimiser(monkeypatch):
    """One removal's converged PBRF parameters are a stationary point of the objective written out here (Bae et
    al. 2022), and L-BFGS on it gets there too, through the dense Newton steps and the quasi-Newton ones."""
    import runners.newton as newton
    from runners.objective import FlatModel
    from runners.protocols.pbrf import newton_pbrf

    module, x, y, training, trained = toy_mlp(3, epochs=300)
    problem = Problem(module, RetrainSetup(trained.params, [trained.init], [0]), training, x, y, x[:2], y[:2])
    damping, removed = 0.05, 7
    flat = FlatModel(module, trained.params)
    theta_s = flat.theta.clone()
    z_s = flat.logits(theta_s, x)

    def pbrf(theta: torch.Tensor) -> torch.Tensor:
        z = flat.logits(theta, x)
        bregman = torch.logsumexp(z, 1) - torch.logsumexp(z_s, 1) - (torch.softmax(z_s, 1) * (z - z_s)).sum(1)
        own = torch.nn.functional.cross_entropy(flat.logits(theta, x[removed:removed + 1]), y[removed:removed + 1])
        shift = theta - theta_s
        return bregman.mean() - own / 40 + 0.5 * (0.01 + damping) * (shift * shift).sum()

    theta = theta_s.clone().requires_grad_(True)
    lbfgs = torch.optim.LBFGS([theta], lr=1.0, max_iter=2000, tolerance_grad=1e-13, tolerance_change=0.0,
                              history_size=50, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        lbfgs.zero_grad()
        value = pbrf(theta)
        value.backward()
        return value

    lbfgs.step(closure)
    for dense in (True, False):
        if not dense:
            monkeypatch.setattr(newton, "DENSE_PARAMETERS", 0)
        _, refit = newton_pbrf(problem, np.array([removed]), damping, 1e-12, 100, "test_loss")
        assert bool(refit.converged(1e-12).all())
        torch.testing.assert_close(refit.theta[0], theta_s, rtol=0, atol=1e-12)  # the control stays at theta_s
        solved = refit.theta[1].clone().requires_grad_(True)
        assert float(torch.autograd.grad(pbrf(solved), solved)[0].norm()) <= 1e-11  # stationary, as written here
        torch.testing.assert_close(refit.theta[1], theta.detach(), rtol=0, atol=1e-7)  # L-BFGS stops near 2e-9


SHORT_NEWTON_PBRF = """\
    study: pm
    dataset: {name: iris, test_size: 30}
    model: {arch: mlp, depth: 1, width: 6, activation: tanh}
    training: {optimizer: adam, lr: 0.01, epochs: 20, weight_decay: 0.01, dtype: float64}
    estimators: [{name: exact, curvature: ggn, damping: 0.01}]
    test_points: {count: 2}
    ground_truth: {protocol: pbrf, solver: newton, %s, removals: {select: random, k: 5}}
    """  # a short Iris study under a converged PBRF; %s: damping and the solver's limits


def test_pbrf_refits_that_do_not_converge_are_kept_and_reported(write, tmp_path: Path):
    db = run(write, tmp_path, SHORT_NEWTON_PBRF % "damping: 0.0, tol: 1e-14, max_iter: 1")
    refits = rows(db, "SELECT converged, iterations FROM refits WHERE train_index IS NOT NULL")
    assert len(refits) == 5 and not any(c for c, _ in refits) and all(i == 1 for _, i in refits)
    assert rows(db, "SELECT count(*) FROM influence WHERE actual IS NOT NULL") == [(10,)]  # kept
    ((message,),) = rows(db, "SELECT message FROM diagnostics WHERE \"check\" = 'refits_not_converged'")
    assert "of 6 solved refits did not reach their tolerance" in message


def test_pbrf_refits_that_start_within_their_tolerance_are_reported_as_not_solved(write, tmp_path: Path):
    """A tolerance above the removed points' gradients over n leaves every refit where it started: each removal's
    effect is then 0 by construction, and refits_not_solved says so."""
    db = run(write, tmp_path, SHORT_NEWTON_PBRF % "damping: 0.01, tol: 1.0")
    assert rows(db, "SELECT count(*), max(iterations) FROM refits WHERE train_index IS NOT NULL") == [(5, 0)]
    assert rows(db, "SELECT count(*) FROM influence WHERE actual IS NOT NULL AND actual != 0") == [(0,)]
    ((value, message),) = rows(db, "SELECT value, message FROM diagnostics WHERE \"check\" = 'refits_not_solved'")
    assert value == 1.0 and message.startswith("5 of 5 removals' refits started within their tolerance")


def test_a_relative_tolerance_solves_each_pbrf_refit_to_a_share_of_its_starting_gradient():
    """rtol: each refit's tolerance is rtol x its starting gradient norm (the removed point's gradient over N), not
    below tol; a tolerance above the starting gradients leaves the refits where they started, while rtol solves
    them, and to the refits an absolute tolerance far below gives, to within what rtol allows."""
    from runners.objective import FlatModel, per_example_loss
    from runners.protocols.pbrf import newton_pbrf

    module, x, y, training, trained = toy_mlp(3, epochs=300)
    problem = Problem(module, RetrainSetup(trained.params, [trained.init], [0]), training, x, y, x[:2], y[:2])
    flat = FlatModel(module, trained.params)
    theta = flat.theta.detach().requires_grad_(True)
    losses = per_example_loss(flat.logits(theta, x), y)
    starts = torch.stack([torch.autograd.grad(losses[i], theta, retain_graph=True)[0].norm() / 40 for i in range(40)])
    items = np.array([int(torch.argmin(starts)), int(torch.argmax(starts))])
    loose = float(starts.max()) * 2  # above every removal's starting gradient
    _, still = newton_pbrf(problem, items, 0.05, loose, 100, "test_loss")
    assert (still.iterations[1:] == 0).all()
    _, relative = newton_pbrf(problem, items, 0.05, 1e-15, 100, "test_loss", rtol=1e-6)
    torch.testing.assert_close(relative.tolerance[1:], torch.clamp(1e-6 * starts[items], min=1e-15))
    assert bool(relative.converged().all()) and (relative.iterations[1:] > 0).all()
    _, exact = newton_pbrf(problem, items, 0.05, 1e-13, 100, "test_loss")
    shift = (exact.theta[1:] - flat.theta).norm(dim=1)
    assert ((relative.theta[1:] - exact.theta[1:]).norm(dim=1) <= 1e-4 * shift).all()
