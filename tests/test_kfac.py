"""K-FAC and EK-FAC against numpy: factors from hand-written forward and backward passes, inverses by solving
the explicit Kronecker-structured matrix, and the exact case where both equal the Gauss-Newton influence."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from inflang.spec import CnnModel, EkfacEstimator, ExactEstimator, KfacEstimator, LogregModel, MlpModel, TrainingSpec
from runners.curvature import objective_ggn, spectrum
from runners.errors import TaskFailure
from runners.estimators import ESTIMATORS, EstimatorInputs
from runners.models import build
from runners.train import train
from tests.test_tracin_representer_datainf import per_example_grads

WD = 0.05


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def roots(p: np.ndarray) -> np.ndarray:
    """[n, C, C]: column c is sqrt(p_c) (e_c - p), so L L^T = diag(p) - p p^T."""
    C = p.shape[1]
    return np.stack([np.sqrt(p[:, c:c + 1]) * (np.eye(C)[c] - p) for c in range(C)], axis=2)


def matrix_to_flat(out: int, inp: int) -> np.ndarray:
    """perm such that flat = vec_row([W | b])[perm], the parameter vector being W row-major then b."""
    idx = np.arange(out * (inp + 1)).reshape(out, inp + 1)
    return np.concatenate([idx[:, :inp].reshape(-1), idx[:, inp]])


def block_inverse(blocks: list[np.ndarray], perms: list[np.ndarray]) -> np.ndarray:
    """Block-diagonal matrix in flat parameter order, each block given in matrix order, inverted by solve."""
    size = sum(b.shape[0] for b in blocks)
    M = np.zeros((size, size))
    start = 0
    for b, perm in zip(blocks, perms, strict=True):
        k = b.shape[0]
        M[start:start + k, start:start + k] = b[np.ix_(perm, perm)]
        start += k
    return np.linalg.inv(M)


def assert_matches_inverse(module, params, x, y, tests: int, inv: np.ndarray, spec, rtol: float) -> None:
    """The estimator's scores against (1/n) g_test^T inv g_i, gradients by per-example autograd loops."""
    g_test = per_example_grads(module, params, x[:tests], y[:tests])
    expected = g_test @ inv @ per_example_grads(module, params, x, y).T / len(y)
    inputs = EstimatorInputs(module, params, x, y, x[:tests], y[:tests], "test_loss", WD, 0)
    ours = ESTIMATORS[spec.name](spec, inputs).numpy()
    assert np.allclose(ours, expected, rtol=rtol, atol=1e-14)


@pytest.fixture(scope="module")
def mlp():
    torch.manual_seed(0)
    x = torch.randn(40, 3, dtype=torch.float64)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    module = build(MlpModel(arch="mlp", depth=1, width=4), 3, 3, seed=0, dtype=torch.float64)
    trained = train(module, x, y, TrainingSpec(optimizer="sgd", lr=0.3, epochs=60, weight_decay=WD), 0)
    return module, trained.params, x, y


def mlp_statistics(params: dict, x: np.ndarray, y: np.ndarray | None = None):
    """Per layer: (a_bar [n, in+1], pseudo-gradients g [n, K, out]) by a hand-written tanh MLP backward pass;
    with labels y, the single true-label gradient p - e_y (empirical Fisher)."""
    W1, b1 = params["0.weight"].numpy(), params["0.bias"].numpy()
    W2, b2 = params["2.weight"].numpy(), params["2.bias"].numpy()
    h = np.tanh(x @ W1.T + b1)
    p = softmax(h @ W2.T + b2)
    L = roots(p) if y is None else (p - np.eye(p.shape[1])[y])[:, :, None]  # [n, C, K]
    g2 = L.transpose(0, 2, 1)  # [n, K, C]: dlogits
    g1 = (g2 @ W2) * (1 - h * h)[:, None, :]
    ones = np.ones((len(x), 1))
    return [(np.hstack([x, ones]), g1), (np.hstack([h, ones]), g2)]


def test_kfac_matches_a_hand_written_kronecker_solve(mlp):
    module, params, x, y = mlp
    n = len(y)
    blocks, perms = [], []
    damping = 0.02
    for a, g in mlp_statistics(params, x.numpy()):
        A = a.T @ a / n
        S = np.einsum("nko,nkp->op", g, g) / n
        blocks.append(np.kron(S, A) + (WD + damping) * np.eye(A.shape[0] * S.shape[0]))
        perms.append(matrix_to_flat(S.shape[0], A.shape[0] - 1))
    inv = block_inverse(blocks, perms)
    assert_matches_inverse(module, params, x, y, 3, inv, KfacEstimator(name="kfac", damping=damping), rtol=1e-9)


def test_kfac_default_damping_is_a_tenth_of_the_mean_eigenvalue_per_layer(mlp):
    module, params, x, y = mlp
    n = len(y)
    blocks, perms = [], []
    for a, g in mlp_statistics(params, x.numpy()):
        A = a.T @ a / n
        S = np.einsum("nko,nkp->op", g, g) / n
        mean_eig = np.trace(A) / A.shape[0] * np.trace(S) / S.shape[0]
        blocks.append(np.kron(S, A) + (WD + 0.1 * mean_eig) * np.eye(A.shape[0] * S.shape[0]))
        perms.append(matrix_to_flat(S.shape[0], A.shape[0] - 1))
    inv = block_inverse(blocks, perms)
    assert_matches_inverse(module, params, x, y, 2, inv, KfacEstimator(name="kfac"), rtol=1e-8)


@pytest.mark.parametrize("fisher", ["expected", "empirical"])
def test_ekfac_refits_eigenvalues_to_the_gauss_newton_diagonal(mlp, fisher):
    """EK-FAC = Q diag(diag(Q^T G_l Q) + shift) Q^T per layer, Q = Q_S (x) Q_A, G_l the layer's GGN block
    (or its empirical Fisher block, from true-label gradients)."""
    module, params, x, y = mlp
    n = len(y)
    blocks, perms = [], []
    damping = 0.01
    for a, g in mlp_statistics(params, x.numpy(), y.numpy() if fisher == "empirical" else None):
        A = a.T @ a / n
        S = np.einsum("nko,nkp->op", g, g) / n
        vecs = np.einsum("nko,ni->nkoi", g, a).reshape(n * g.shape[1], -1)  # vec_row(g a^T) per example, column
        G = vecs.T @ vecs / n
        Q = np.kron(np.linalg.eigh(S)[1], np.linalg.eigh(A)[1])
        lam = np.diag(Q.T @ G @ Q)
        blocks.append(Q @ np.diag(lam + WD + damping) @ Q.T)
        perms.append(matrix_to_flat(S.shape[0], A.shape[0] - 1))
    inv = block_inverse(blocks, perms)
    spec = EkfacEstimator(name="ekfac", damping=damping, fisher=fisher)
    assert_matches_inverse(module, params, x, y, 3, inv, spec, rtol=1e-8)


def test_both_equal_exact_ggn_where_the_factorisation_is_exact():
    """Logistic regression whose weights are zero: every example has the same softmax output, so the GGN is
    exactly A (x) S and K-FAC, EK-FAC and exact (curvature: ggn) agree; checked against a numpy solve too."""
    torch.manual_seed(3)
    n, d, C = 30, 4, 3
    x = torch.randn(n, d, dtype=torch.float64)
    y = torch.randint(0, C, (n,))
    module = build(LogregModel(arch="logreg"), d, C, seed=0, dtype=torch.float64)
    params = {"0.weight": torch.zeros(C, d, dtype=torch.float64),
              "0.bias": torch.tensor([0.3, -0.2, 0.5], dtype=torch.float64)}
    damping = 1e-3
    G = objective_ggn(module, params, x, y, WD)
    inputs = EstimatorInputs(module, params, x, y, x[:4], y[:4], "test_loss", WD, 0, spectrum=spectrum(G))
    exact = ESTIMATORS["exact"](ExactEstimator(name="exact", curvature="ggn", damping=damping), inputs).numpy()
    kfac = ESTIMATORS["kfac"](KfacEstimator(name="kfac", damping=damping), inputs).numpy()
    ekfac = ESTIMATORS["ekfac"](EkfacEstimator(name="ekfac", damping=damping), inputs).numpy()
    # independent: G = H (x) A + wd I in matrix order, H the (common) softmax Hessian, A the input moments
    p = softmax(params["0.bias"].numpy()[None])[0]
    a = np.hstack([x.numpy(), np.ones((n, 1))])
    M = np.kron(np.diag(p) - np.outer(p, p), a.T @ a / n) + (WD + damping) * np.eye(C * (d + 1))
    inv = block_inverse([M], [matrix_to_flat(C, d)])
    expected = per_example_grads(module, params, x[:4], y[:4]) @ inv @ per_example_grads(module, params, x, y).T / n
    scale = np.abs(expected).max()
    for ours in (exact, kfac, ekfac):
        assert np.abs(ours - expected).max() <= 1e-6 * scale
    assert np.abs(ekfac - exact).max() <= 1e-10 * scale


def unfold(x: np.ndarray, k: int, stride: int, pad: int) -> np.ndarray:
    """[n, T, C*k*k] patches by loops (channel-major, then kernel row, then column, as Conv2d's weight)."""
    n, C, H, W = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    out_h, out_w = (H + 2 * pad - k) // stride + 1, (W + 2 * pad - k) // stride + 1
    patches = [xp[:, :, r * stride:r * stride + k, c * stride:c * stride + k].reshape(n, -1)
               for r in range(out_h) for c in range(out_w)]
    return np.stack(patches, axis=1)


def test_kfac_on_a_convolution_matches_loops():
    """One Conv2d (3x3, stride 2, padding 1) + tanh + Linear: A sums patch moments over positions, S averages
    output-gradient moments over positions (Grosse & Martens 2016); pseudo-gradients by autograd per example."""
    torch.manual_seed(1)
    n, C = 12, 3
    x = torch.randn(n, 1, 4, 4, dtype=torch.float64)
    y = torch.randint(0, C, (n,))
    module = build(CnnModel(arch="cnn", depth=1, channels=2), (1, 4, 4), C, seed=0, dtype=torch.float64)
    params = {k: v.detach() for k, v in module.named_parameters()}
    damping = 0.05
    conv_a, conv_g, lin_a, lin_g = [], [], [], []
    for i in range(n):
        p = {k: v.clone().requires_grad_(True) for k, v in params.items()}
        pre = torch.nn.functional.conv2d(x[i:i + 1], p["0.weight"], p["0.bias"], stride=2, padding=1)
        h = torch.tanh(pre).flatten(1)
        z = h @ p["3.weight"].T + p["3.bias"]
        prob = torch.softmax(z, -1).detach().numpy()
        L = roots(prob)[0]
        g_conv, g_lin = [], []
        for k in range(C):
            gp, gz = torch.autograd.grad(z, [pre, z], grad_outputs=torch.as_tensor(L[:, k])[None], retain_graph=True)
            g_conv.append(gp[0].reshape(2, -1).T.numpy())  # [T, out]
            g_lin.append(gz[0].numpy())
        conv_g.append(np.stack(g_conv))
        lin_g.append(np.stack(g_lin))
        lin_a.append(np.append(h.detach().numpy()[0], 1.0))
    conv_a = np.concatenate([unfold(x.numpy(), 3, 2, 1), np.ones((n, 4, 1))], axis=2)  # [n, T, 10]
    A_conv = np.einsum("ntp,ntq->pq", conv_a, conv_a) / n
    S_conv = np.einsum("nktp,nktq->pq", np.stack(conv_g), np.stack(conv_g)) / (n * 4)
    la, lg = np.stack(lin_a), np.stack(lin_g)
    A_lin, S_lin = la.T @ la / n, np.einsum("nko,nkp->op", lg, lg) / n
    blocks = [np.kron(S, A) + (WD + damping) * np.eye(len(A) * len(S)) for S, A in ((S_conv, A_conv), (S_lin, A_lin))]
    inv = block_inverse(blocks, [matrix_to_flat(2, 9), matrix_to_flat(C, 8)])
    assert_matches_inverse(module, params, x, y, 2, inv, KfacEstimator(name="kfac", damping=damping), rtol=1e-9)


def test_last_layer_and_parameter_change(mlp):
    module, params, x, y = mlp
    inputs = EstimatorInputs(module, params, x, y, x[:2], y[:2], "test_loss", WD, 0, selected=["2.weight", "2.bias"])
    last = ESTIMATORS["ekfac"](EkfacEstimator(name="ekfac", damping=0.01), inputs)
    assert last.shape == (2, 40) and bool(torch.isfinite(last).all())
    change = EstimatorInputs(module, params, x, y, x[:1], y[:1], "param_change_norm", WD, 0)
    norms = ESTIMATORS["kfac"](KfacEstimator(name="kfac", damping=0.01), change)
    assert norms.shape == (1, 40) and bool((norms > 0).all())


def test_no_kronecker_layer_selected_fails_clearly(mlp):
    module, params, x, y = mlp
    inputs = EstimatorInputs(module, params, x, y, x[:2], y[:2], "test_loss", 0.0, 0, selected=[])
    with pytest.raises(TaskFailure, match="Linear, Conv1d or Conv2d"):
        ESTIMATORS["kfac"](KfacEstimator(name="kfac"), inputs)


def test_trak_with_a_full_rank_projection_is_the_unprojected_formula(mlp):
    """With proj_dim >= P, R (R^T G^T G R)^+ R^T = (G^T G)^-1 whatever R is, so TRAK over two models equals
    [1/M sum_m g_m(test)^T (G_m^T G_m)^-1 g_m(i)] [1/M sum_m (1 - p_i,m)], gradients of f = log(p/(1-p)) by loops."""
    from inflang.spec import TrakEstimator

    module, params, x, y = mlp
    other = train(build(MlpModel(arch="mlp", depth=1, width=4), 3, 3, seed=7, dtype=torch.float64), x, y,
                  TrainingSpec(optimizer="sgd", lr=0.3, epochs=60, weight_decay=WD), 1).params

    def f_grads(p: dict, xs: torch.Tensor, ys: torch.Tensor) -> np.ndarray:
        out = []
        for i in range(len(ys)):
            q = {k: v.detach().clone().requires_grad_(True) for k, v in p.items()}
            prob = torch.softmax(torch.func.functional_call(module, q, (xs[i:i + 1],)), -1)[0, ys[i]]
            f = torch.log(prob) - torch.log1p(-prob)
            out.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(f, list(q.values()))]).numpy())
        return np.stack(out)

    kernel, q = 0.0, 0.0
    for p in (params, other):
        G = f_grads(p, x, y)
        kernel = kernel + f_grads(p, x[:3], y[:3]) @ np.linalg.solve(G.T @ G, G.T)
        prob = torch.softmax(torch.func.functional_call(module, p, (x,)), -1).detach().numpy()
        q = q + 1 - prob[np.arange(len(y)), y.numpy()]
    expected = (kernel / 2) * (q / 2)
    inputs = EstimatorInputs(module, params, x, y, x[:3], y[:3], "test_loss", WD, 0, replicas=[other])
    ours = ESTIMATORS["trak"](TrakEstimator(name="trak", proj_dim=64, models=2), inputs).numpy()
    assert np.abs(ours - expected).max() <= 1e-6 * np.abs(expected).max()
    margin = EstimatorInputs(module, params, x, y, x[:3], y[:3], "margin", WD, 0, replicas=[other])
    assert np.allclose(ESTIMATORS["trak"](TrakEstimator(name="trak", proj_dim=64, models=2), margin).numpy(),
                       -ours)


def test_per_example_gradients_are_the_same_in_chunks(mlp):
    from runners.estimators.common import gradients
    from runners.objective import FlatModel

    module, params, x, y = mlp
    flat = FlatModel(module, params)
    whole = gradients(flat, x, y)
    chunked = gradients(flat, x, y, budget=7 * flat.theta.numel() * 8)  # 7 rows at a time
    # rows of 7 and of all 30 may run different matmul kernels (AVX2 vs AVX-512 blocking): equal to rounding
    torch.testing.assert_close(chunked, whole, rtol=1e-13, atol=1e-16)
    assert np.allclose(whole.numpy(), per_example_grads(module, params, x, y), rtol=1e-12, atol=1e-15)


def test_tracin_honours_params(mlp):
    from inflang.spec import TracinEstimator

    module, params, x, y = mlp
    inputs = EstimatorInputs(module, params, x, y, x[:2], y[:2], "test_loss", WD, 0, checkpoints=[(0.5, params)],
                             selected=["2.weight", "2.bias"])
    g = per_example_grads(module, params, x, y)[:, -15:]
    expected = 0.5 * g[:2] @ g.T / len(y)
    assert np.allclose(ESTIMATORS["tracin"](TracinEstimator(name="tracin"), inputs).numpy(), expected, rtol=1e-10)
