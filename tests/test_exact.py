"""Exact influence against a closed form for L2 multinomial logistic regression, written in numpy here."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from inflang.spec import ExactEstimator, LogregModel, TrainingSpec
from runners.curvature import objective_hessian, spectrum
from runners.estimators.common import EstimatorInputs
from runners.estimators.exact import exact_scores, inverse_eigenvalues
from runners.models import build
from runners.train import train


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def numpy_influence(W: np.ndarray, b: np.ndarray, x: np.ndarray, y: np.ndarray, xt: np.ndarray, yt: np.ndarray,
                    wd: float, damping: float) -> np.ndarray:
    """(1/n) g_test^T (H + damping I)^-1 g_i with theta = [W | b] row by row, all by hand."""
    n, d = x.shape
    C = W.shape[0]
    xa = np.hstack([x, np.ones((n, 1))])
    xta = np.hstack([xt, np.ones((len(xt), 1))])
    theta_dim = C * (d + 1)
    p = softmax(x @ W.T + b)
    H = np.zeros((theta_dim, theta_dim))
    for j in range(n):
        H += np.kron(np.diag(p[j]) - np.outer(p[j], p[j]), np.outer(xa[j], xa[j]))
    H = H / n + wd * np.eye(theta_dim)
    g_train = np.stack([np.kron(p[j] - np.eye(C)[y[j]], xa[j]) for j in range(n)])
    pt = softmax(xt @ W.T + b)
    g_test = np.stack([np.kron(pt[j] - np.eye(C)[yt[j]], xta[j]) for j in range(len(xt))])
    return g_test @ np.linalg.solve(H + damping * np.eye(theta_dim), g_train.T) / n


def test_exact_matches_numpy_closed_form():
    rng = np.random.default_rng(0)
    n, d, C = 40, 3, 3
    x = rng.normal(size=(n, d))
    y = rng.integers(0, C, size=n)
    xt, yt = rng.normal(size=(4, d)), rng.integers(0, C, size=4)
    X, Y = torch.tensor(x), torch.tensor(y)
    module = build(LogregModel(arch="logreg"), d, C, seed=0, dtype=torch.float64)
    wd = 0.05
    trained = train(module, X, Y, TrainingSpec(optimizer="lbfgs", lr=1.0, epochs=200, weight_decay=wd), 0)
    H = objective_hessian(module, trained.params, X, Y, wd)
    for damping in (0.0, 0.01):
        spec = ExactEstimator(name="exact", damping=damping)
        inputs = EstimatorInputs(module, trained.params, X, Y, torch.tensor(xt), torch.tensor(yt), "test_loss", wd,
                                 0, spectrum(H))
        ours = exact_scores(spec, inputs).numpy()
        W = trained.params["0.weight"].numpy()
        b = trained.params["0.bias"].numpy()
        reference = numpy_influence(W, b, x, y, xt, yt, wd, damping)
        assert np.abs(ours - reference).max() / np.abs(reference).max() < 1e-6


def test_negative_eigenvalue_policies():
    values = torch.tensor([-2.0, 0.5, 3.0], dtype=torch.float64)
    assert torch.allclose(inverse_eigenvalues(values, 0.5, "abs"), torch.tensor([1 / 2.5, 1.0, 1 / 3.5],
                                                                                   dtype=torch.float64))
    assert torch.allclose(inverse_eigenvalues(values, 0.5, "clip"), torch.tensor([0.0, 1.0, 1 / 3.5],
                                                                                    dtype=torch.float64))
    import pytest

    from runners.errors import TaskFailure

    with pytest.raises(TaskFailure, match="raise damping above 2"):
        inverse_eigenvalues(values, 0.5, "error")


def test_label_smoothed_loss_matches_torch():
    from runners.objective import per_example_loss

    torch.manual_seed(0)
    z = torch.randn(7, 4, dtype=torch.float64)
    y = torch.randint(0, 4, (7,))
    for eps in (0.0, 0.1, 0.3):
        reference = torch.nn.functional.cross_entropy(z, y, reduction="none", label_smoothing=eps)
        assert torch.allclose(per_example_loss(z, y, eps), reference, atol=1e-14)


def test_exact_with_label_smoothing_matches_numpy():
    """With smoothing e the per-example gradient is (p - q) x_aug with q = (1 - e) one_hot + e / C; the Hessian
    is unchanged, so the closed form only swaps the targets."""
    rng = np.random.default_rng(5)
    n, d, C, wd, eps = 30, 2, 3, 0.05, 0.2
    x, y = rng.normal(size=(n, d)), rng.integers(0, C, size=n)
    xt, yt = rng.normal(size=(2, d)), rng.integers(0, C, size=2)
    X, Y = torch.tensor(x), torch.tensor(y)
    module = build(LogregModel(arch="logreg"), d, C, seed=0, dtype=torch.float64)
    spec = TrainingSpec(optimizer="lbfgs", lr=1.0, epochs=300, weight_decay=wd, label_smoothing=eps)
    trained = train(module, X, Y, spec, 0)
    H = objective_hessian(module, trained.params, X, Y, wd, eps)
    inputs = EstimatorInputs(module, trained.params, X, Y, torch.tensor(xt), torch.tensor(yt), "test_loss", wd, 0,
                             spectrum(H), smoothing=eps)
    ours = exact_scores(ExactEstimator(name="exact", damping=0.0), inputs).numpy()
    W, b = trained.params["0.weight"].numpy(), trained.params["0.bias"].numpy()
    xa = np.hstack([x, np.ones((n, 1))])
    p = softmax(x @ W.T + b)
    q = (1 - eps) * np.eye(C)[y] + eps / C
    Hn = sum(np.kron(np.diag(p[j]) - np.outer(p[j], p[j]), np.outer(xa[j], xa[j])) for j in range(n)) / n
    Hn += wd * np.eye(C * (d + 1))
    g_train = np.stack([np.kron(p[j] - q[j], xa[j]) for j in range(n)])
    pt = softmax(xt @ W.T + b)
    xta = np.hstack([xt, np.ones((2, 1))])
    g_test = np.stack([np.kron(pt[j] - np.eye(C)[yt[j]], xta[j]) for j in range(2)])  # test loss stays plain
    reference = g_test @ np.linalg.solve(Hn, g_train.T) / n
    assert np.abs(ours - reference).max() / np.abs(reference).max() < 1e-6


def test_a_small_model_s_curvature_and_gradients_do_not_import_the_compiler():
    """torch.func's grad imports torch._dynamo on first use (over a second), and torch.autograd's batched
    backward pass sympy: a small Linear stack's explicit Hessian and per-example gradients come from copies of
    its parameters through scalar backward passes, so a small study pays neither import."""
    import subprocess
    import sys

    code = """
import sys, torch
from torch import nn
from runners.curvature import objective_hessian
from runners.estimators.common import per_example_gradients
from runners.objective import FlatModel, per_example_loss
net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).double()
params = {k: v.detach() for k, v in net.named_parameters()}
x, y = torch.randn(30, 4, dtype=torch.float64), torch.randint(0, 3, (30,))
H = objective_hessian(net, params, x, y, 0.01)
G = per_example_gradients(FlatModel(net, params), per_example_loss, x, y)
assert H.shape == (67, 67) and G.shape == (30, 67)
print('torch._dynamo' in sys.modules, 'sympy' in sys.modules)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False False"  # nor sympy, which a batched backward pass imports


def test_per_example_gradients_from_copies_match_torch_func(monkeypatch):
    """The copies route (small Linear stacks) against vmap(grad), an independent computation."""
    from torch import nn
    from torch.func import grad, vmap

    from runners.estimators.common import per_example_gradients
    from runners.objective import FlatModel, per_example_loss

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    flat = FlatModel(net, {k: v.detach() for k, v in net.named_parameters()})
    x, y = torch.randn(30, 4, dtype=torch.float64), torch.randint(0, 3, (30,))

    def one(theta: torch.Tensor, xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        return per_example_loss(flat.logits(theta, xi.unsqueeze(0)), yi.unsqueeze(0)).squeeze(0)

    import runners.estimators.common as common

    routes = []
    copies = common._copies_gradients
    monkeypatch.setattr(common, "_copies_gradients", lambda f: routes.append(1) or copies(f))
    expected = vmap(grad(one), in_dims=(None, 0, 0))(flat.theta, x, y)
    torch.testing.assert_close(per_example_gradients(flat, per_example_loss, x, y), expected, rtol=0, atol=1e-14)
    assert routes == [1]  # the copies route ran


def test_the_gauss_newton_matrix_by_blocks_equals_the_whole_product(monkeypatch):
    """Above GRAM_BLOCK parameters objective_ggn forms only the blocks on and above the diagonal and mirrors
    them: the same matrix as the whole product, and as J^T H J written out per example here."""
    import runners.curvature as curvature
    from inflang.spec import MlpModel
    from runners.objective import FlatModel, output_hessian

    torch.manual_seed(0)
    x = torch.randn(30, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (30,))
    module = build(MlpModel(arch="mlp", depth=1, width=6, activation="tanh"), 4, 3, seed=0, dtype=torch.float64)
    params = {k: v.detach().clone() for k, v in module.named_parameters()}
    whole = curvature.objective_ggn(module, params, x, y, 0.01)
    monkeypatch.setattr(curvature, "GRAM_BLOCK", 7)  # 51 parameters: 8 blocks, the last one narrower
    blocks = curvature.objective_ggn(module, params, x, y, 0.01)
    torch.testing.assert_close(blocks, whole, rtol=1e-13, atol=1e-15)
    flat = FlatModel(module, params)
    J = torch.func.jacrev(lambda th: flat.logits(th, x))(flat.theta)  # [n, C, P]
    H = output_hessian(flat.logits(flat.theta, x), y)
    written = sum(J[i].T @ H[i] @ J[i] for i in range(30)) / 30 + 0.01 * torch.eye(J.shape[-1], dtype=torch.float64)
    torch.testing.assert_close(blocks, written, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("case", ["tanh", "relu, smoothing", "regression"])
def test_the_hessian_from_copies_is_the_batched_passes(case: str, monkeypatch: pytest.MonkeyPatch):
    """A small Linear stack's Hessian from copies against the batched reverse-over-reverse rows (float64)."""
    from runners import curvature

    torch.manual_seed(1)
    activation = nn.ReLU() if case.startswith("relu") else nn.Tanh()
    net = nn.Sequential(nn.Linear(3, 7), activation, nn.Linear(7, 4)).double()
    params = {k: v.detach() for k, v in net.named_parameters()}
    x = torch.randn(25, 3, dtype=torch.float64)
    y = torch.randn(25, 4, dtype=torch.float64) if case == "regression" else torch.randint(0, 4, (25,))
    smoothing = 0.1 if "smoothing" in case else 0.0
    ours = objective_hessian(net, params, x, y, 0.02, smoothing)
    monkeypatch.setattr(curvature, "HESSIAN_COPIES_ELEMENTS", 0)
    reference = objective_hessian(net, params, x, y, 0.02, smoothing)
    torch.testing.assert_close(ours, reference, rtol=1e-11, atol=1e-13)
    assert torch.equal(ours, ours.T)
