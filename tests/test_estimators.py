"""Every estimator against `exact` (same damping) and against independent computations written here."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from inflang.spec import (
    ArnoldiEstimator,
    CgEstimator,
    ExactEstimator,
    GradCosEstimator,
    GradDotEstimator,
    LissaEstimator,
    MlpModel,
    TrainingSpec,
)
from runners.curvature import objective_hessian, spectrum
from runners.errors import TaskFailure
from runners.estimators import ESTIMATORS, EstimatorInputs
from runners.models import build
from runners.objective import per_example_loss
from runners.train import train


@pytest.fixture(scope="module")
def problem():
    torch.manual_seed(0)
    x = torch.randn(40, 3, dtype=torch.float64)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long() + (x[:, 2] > 1).long()
    module = build(MlpModel(arch="mlp", depth=1, width=4, activation="tanh"), 3, 3, seed=0, dtype=torch.float64)
    wd = 0.01
    trained = train(module, x, y, TrainingSpec(optimizer="lbfgs", lr=1.0, epochs=300, weight_decay=wd), 0)
    H = objective_hessian(module, trained.params, x, y, wd)
    spec = spectrum(H)
    damping = max(0.05, -float(spec.values.min()) + 0.05)
    x_test, y_test = torch.randn(3, 3, dtype=torch.float64), torch.tensor([0, 1, 2])
    inputs = EstimatorInputs(module, trained.params, x, y, x_test, y_test, "test_loss", wd, 0, spec)
    return inputs, damping, H


def scores(spec, inputs):
    return ESTIMATORS[spec.name](spec, inputs)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def test_hvp_matches_the_explicit_hessian(problem):
    inputs, _, H = problem
    v = torch.randn(5, H.shape[0], dtype=torch.float64)
    assert rel(inputs.hvp(v), v @ H) < 1e-10


def test_hvp_in_chunks_of_examples(problem, monkeypatch):
    """Over more layer outputs than one pass holds, the products are summed over chunks of examples (weighted
    by their share, weight decay once), on the minibatch too, and equal the one-pass products."""
    from runners.estimators import common

    inputs, _, H = problem
    products = common._products
    v = torch.randn(3, H.shape[0], dtype=torch.float64)
    batch = torch.arange(0, 40, 3)
    whole, minibatch = inputs.hvp(v), inputs.hvp(v, batch)
    assert common._activations(inputs.module, (3,)) == 2 * (4 + 3)  # both layers' outputs, kept twice
    monkeypatch.setattr(common, "HVP_ELEMENTS", 14 * 7)  # at most 7 examples a pass: 40 in 6 passes
    passes = []
    monkeypatch.setattr(common, "_products", lambda *a: passes.append(len(a[1])) or products(*a))
    assert rel(inputs.hvp(v), whole) < 1e-12
    assert rel(inputs.hvp(v, batch), minibatch) < 1e-12
    assert rel(inputs.hvp(v), v @ H) < 1e-10
    assert passes[:6] == [6, 7, 7, 6, 7, 7] and passes[6:8] == [7, 7]


def test_training_gradients_in_chunks_and_streamed(problem):
    """Per-example gradients computed a few rows a pass equal those of one pass; scores' products with the
    training gradients take them a chunk at a time when no estimator cached them, and keep none."""
    from dataclasses import replace

    from runners.estimators.common import gradient_rows

    inputs, _, _ = problem
    whole = inputs.train_gradients()
    per_row = inputs.dim * 8 + 3 * 14 * 8  # float64 gradients and three per layer output (14 an example)
    fresh = replace(inputs, memory_budget=7 * per_row, _cache={})
    assert gradient_rows(fresh.flat, fresh.x_train, fresh.memory_budget) == 7
    M = torch.randn(3, inputs.dim, dtype=torch.float64)
    products = fresh.train_products(M)
    assert not fresh._cache  # nothing kept
    assert rel(products, M @ whole.T) < 1e-12
    assert rel(fresh.train_gradients(), whole) < 1e-12  # in 5 passes of 7 rows and one of 5
    assert rel(fresh.train_products(M), M @ whole.T) < 1e-12  # from the cache now


def test_hessian_vector_products_follow_the_memory_budget(problem, monkeypatch: pytest.MonkeyPatch):
    """With a memory budget, Hessian-vector products take as many examples a pass as HVP_BYTES per layer output
    allow (here 5 of 14 outputs each), and equal the one-pass products."""
    from dataclasses import replace

    from runners.estimators import common

    inputs, _, _ = problem
    v = torch.randn(2, inputs.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    whole = inputs.hvp(v)
    passes = []
    original = common._products
    monkeypatch.setattr(common, "_products", lambda *a, **k: passes.append(a[1].shape[0]) or original(*a, **k))
    small = replace(inputs, memory_budget=14 * 5 * common.HVP_BYTES, _cache={})
    assert rel(small.hvp(v), whole) < 1e-12
    assert len(passes) > 1 and max(passes) <= 5


def test_cg_matches_exact(problem):
    inputs, damping, _ = problem
    exact = scores(ExactEstimator(name="exact", damping=damping), inputs)
    cg = scores(CgEstimator(name="cg", damping=damping, tol=1e-12, max_iter=500), inputs)
    assert rel(cg, exact) < 1e-4


def test_lissa_matches_exact(problem):
    inputs, damping, H = problem
    top = float(torch.linalg.eigvalsh(H).max())
    exact = scores(ExactEstimator(name="exact", damping=damping), inputs)
    spec = LissaEstimator(name="lissa", damping=damping, scale=1.2 * (top + damping), recursion_depth=3000)
    assert rel(scores(spec, inputs), exact) < 1e-4


def test_lissa_divergence_is_reported(problem):
    inputs, damping, H = problem
    spec = LissaEstimator(name="lissa", damping=damping, scale=0.05, recursion_depth=500)
    with pytest.raises(TaskFailure, match="lissa diverged .* raise scale"):
        scores(spec, inputs)


def test_arnoldi_with_every_direction_matches_exact(problem):
    inputs, damping, H = problem
    P = H.shape[0]
    exact = scores(ExactEstimator(name="exact", damping=damping), inputs)
    arnoldi = scores(ArnoldiEstimator(name="arnoldi", damping=damping, arnoldi_dim=P, top_k=P), inputs)
    assert rel(arnoldi, exact) < 1e-6


def test_gradient_similarity_against_per_example_autograd(problem):
    inputs, _, _ = problem
    module, params = inputs.module, inputs.params

    def grad_of(x, y):
        model_params = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
        loss = per_example_loss(torch.func.functional_call(module, model_params, (x[None],)), y[None]).sum()
        return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(model_params.values()))]).numpy()

    g_train = np.stack([grad_of(inputs.x_train[i], inputs.y_train[i]) for i in range(inputs.n)])
    g_test = np.stack([grad_of(inputs.x_test[t], inputs.y_test[t]) for t in range(3)])
    dot = scores(GradDotEstimator(name="grad_dot"), inputs).numpy()
    assert np.allclose(dot, g_test @ g_train.T / inputs.n, rtol=1e-10, atol=1e-14)
    cos = scores(GradCosEstimator(name="grad_cos"), inputs).numpy()
    expected = (g_test @ g_train.T) / np.outer(np.linalg.norm(g_test, axis=1), np.linalg.norm(g_train, axis=1))
    assert np.allclose(cos, expected, rtol=1e-10)


def test_cg_refuses_an_indefinite_system():
    from runners.estimators.cg import conjugate_gradient

    A = torch.diag(torch.tensor([2.0, -1.0, 3.0], dtype=torch.float64))
    b = torch.ones(2, 3, dtype=torch.float64)
    with pytest.raises(TaskFailure, match="raise the estimator's damping"):
        conjugate_gradient(lambda v: v @ A, b, 50, 1e-12)
    x, residual, _ = conjugate_gradient(lambda v: v @ (A + 2 * torch.eye(3, dtype=torch.float64)), b, 50, 1e-12)
    assert torch.allclose(x, b / torch.tensor([4.0, 1.0, 5.0], dtype=torch.float64)) and residual.max() < 1e-12


def test_lanczos_and_hutchinson_against_the_exact_spectrum(problem):
    from runners.curvature import hutchinson_trace, lanczos_extremes

    inputs, _, H = problem
    exact = torch.linalg.eigvalsh(H)
    P = H.shape[0]
    full = lanczos_extremes(lambda v: inputs.hvp(v[None])[0], P, P, seed=0)
    # the Krylov space may close early (repeated eigenvalues); its extremes are the spectrum's
    assert abs(float(full[-1] - exact[-1])) < 1e-8 and abs(float(full[0] - exact[0])) < 1e-8
    few = lanczos_extremes(lambda v: inputs.hvp(v[None])[0], P, 20, seed=0)
    assert abs(float(few[-1]) - float(exact[-1])) / float(exact[-1]) < 1e-6  # the top one converges first
    trace = hutchinson_trace(inputs.hvp, P, 4000, seed=1)
    assert abs(trace - float(exact.sum())) / abs(float(exact.sum())) < 0.05


def test_last_layer_estimators_agree_with_a_block_computed_by_hand(problem):
    from dataclasses import replace

    from runners.tasks import selected_parameters

    inputs, damping, H = problem
    names = selected_parameters("last_layer", inputs.module)
    assert names == ["2.weight", "2.bias"]
    sub = replace(inputs, selected=names, _cache={})
    exact = scores(ExactEstimator(name="exact", damping=damping, params="last_layer"), sub)
    # by hand: the Hessian block of the last layer, and gradients with respect to it alone
    P_first = sum(v.numel() for k, v in inputs.params.items() if k.startswith("0."))
    block = H[P_first:, P_first:]
    g_train = inputs.train_gradients()[:, P_first:]
    g_test = inputs.test_gradients()[:, P_first:]
    expected = g_test @ torch.linalg.solve(block + damping * torch.eye(block.shape[0], dtype=block.dtype),
                                           g_train.T) / inputs.n
    assert rel(exact, expected) < 1e-8
    cg = scores(CgEstimator(name="cg", damping=damping, tol=1e-12, params="last_layer"), sub)
    assert rel(cg, expected) < 1e-6


def test_unknown_parameter_names_are_reported():
    from runners.tasks import selected_parameters

    module = build(MlpModel(arch="mlp", depth=1, width=3), 2, 2, seed=0, dtype=torch.float64)
    assert selected_parameters(["0.bias"], module) == ["0.bias"]
    with pytest.raises(TaskFailure, match="no parameter named 9.weight; this model has 0.weight, 0.bias"):
        selected_parameters(["9.weight"], module)


def test_hessian_vector_products_with_group_norm():
    """GroupNorm's double backward has no batching rule: the products fall back to one vector at a time and
    equal the per-vector autograd products (the CIFAR study's ResNet failed here before)."""
    from inflang.spec import ResnetModel
    from runners.estimators.common import hessian_vector_products
    from runners.models import build
    from runners.objective import FlatModel

    module = build(ResnetModel(arch="resnet", depth=20, width_multiplier=0.25, norm="group"), (3, 8, 8), 3, 0,
                   torch.float64)
    flat = FlatModel(module, dict(module.named_parameters()))
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(6, 3, 8, 8, generator=gen, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    vectors = torch.randn(3, flat.theta.numel(), generator=gen, dtype=torch.float64)
    products = hessian_vector_products(flat, x, y, 0.01, vectors)
    theta = flat.theta.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(flat.objective(theta, x, y, 0.01, 0.0), theta, create_graph=True)
    for k in range(3):
        (expected,) = torch.autograd.grad(g, theta, grad_outputs=vectors[k], retain_graph=True)
        assert torch.allclose(products[k], expected, rtol=1e-10, atol=1e-12)
    from runners.estimators.common import UNBATCHED

    assert module in UNBATCHED  # remembered: the next call goes straight to the per-vector pass
    # where both passes work, the per-vector one equals the batched one
    mlp = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 5), torch.nn.Tanh(),
                              torch.nn.Linear(5, 3)).double()
    small = FlatModel(mlp, dict(mlp.named_parameters()))
    v = torch.randn(4, small.theta.numel(), generator=gen, dtype=torch.float64)
    batched = hessian_vector_products(small, x, y, 0.01, v)
    UNBATCHED.add(mlp)
    assert torch.allclose(hessian_vector_products(small, x, y, 0.01, v), batched, rtol=1e-12, atol=1e-14)
