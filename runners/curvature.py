"""Curvature of the training objective at the trained parameters, and its eigendecomposition.

H = d^2/dtheta^2 [ (1/n) sum_j loss_j(theta) + weight_decay/2 ||theta||^2 ], or its Gauss-Newton matrix G;
computed once per trained model and shared by every ``exact`` estimator (any damping) of that curvature and
by the ``hessian:`` diagnostics.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import jacrev, vmap

from runners import engine as engines
from runners import stacked
from runners.device import generator as seeded_generator
from runners.device import here
from runners.objective import FlatModel, output_hessian, per_example_loss, vmap_failure


@dataclass(frozen=True)
class Spectrum:
    """H = vectors @ diag(values) @ vectors.T, eigenvalues ascending."""

    values: Tensor
    vectors: Tensor


HESSIAN_ROWS = 64  # Hessian rows per batched reverse-over-reverse pass
HESSIAN_COPIES_ELEMENTS = 50_000  # examples x parameters up to which a Linear stack's curvature comes from copies


def objective_hessian(module: nn.Module, params: dict[str, Tensor], x: Tensor, y: Tensor,
                      weight_decay: float, smoothing: float = 0.0) -> Tensor:
    """The explicit Hessian, by reverse-over-reverse differentiation: the gradient with its graph, then its
    rows HESSIAN_ROWS at a time as one batched backward pass (``is_grads_batched``) of unit vectors.
    ``torch.autograd`` rather than ``torch.func.jacrev``, whose first call imports torch's compiler (an import
    a small study would wait for); the same arithmetic. A small Linear stack (``stacked.linear_only``, at most
    HESSIAN_COPIES_ELEMENTS examples x parameters) takes its rows from copies instead (``products_from_copies`` of the
    unit vectors): the same derivatives through scalar backward passes, without the batched pass, whose first
    call imports ``sympy``."""
    flat = FlatModel(module, params)
    theta = flat.theta.detach().requires_grad_(True)
    P = theta.numel()
    copies = by_copies(module, x, P)
    if not copies:
        with torch.enable_grad():  # a caller's no_grad would leave nothing to differentiate
            objective = flat.objective(theta, x, y, weight_decay, smoothing)
            (g,) = torch.autograd.grad(objective, theta, create_graph=True)
    H = torch.empty(P, P, dtype=theta.dtype, device=theta.device)
    batched = True
    for lo in range(0, P, HESSIAN_ROWS):
        rows = torch.zeros(min(HESSIAN_ROWS, P - lo), P, dtype=theta.dtype, device=theta.device)
        rows[torch.arange(len(rows)), torch.arange(lo, lo + len(rows))] = 1.0  # unit vectors e_lo, e_lo+1, ...
        if copies:
            H[lo:lo + len(rows)] = products_from_copies(flat, x, y, weight_decay, rows, smoothing)
            continue
        if batched:
            try:
                (H[lo:lo + len(rows)],) = torch.autograd.grad(g, theta, grad_outputs=rows, is_grads_batched=True,
                                                              retain_graph=True)
                continue
            except RuntimeError as exc:  # a module vmap cannot batch (a study's own network): row by row
                if not vmap_failure(exc):
                    raise
                engines.looped("Hessian rows", module, exc, "taking the Hessian row by row")
                batched = False
        for i, row in enumerate(rows):
            H[lo + i] = torch.autograd.grad(g, theta, grad_outputs=row, retain_graph=True)[0]
    return 0.5 * (H + H.T)


def by_copies(module: nn.Module, x: Tensor, parameters: int) -> bool:
    """Whether Hessian-vector products of ``module`` on x come from copies (``products_from_copies``): a Linear
    stack the stack engine runs, at most HESSIAN_COPIES_ELEMENTS examples x parameters: small enough that the
    extra forward passes cost less than the first batched pass's import of sympy."""
    return (int(x.shape[0]) * parameters <= HESSIAN_COPIES_ELEMENTS and stacked.linear_only(module)
            and stacked.chosen(module, x) != "vmap")


def products_from_copies(flat: FlatModel, x: Tensor, y: Tensor, weight_decay: float, vectors: Tensor,
                         smoothing: float = 0.0) -> Tensor:
    """Rows H v_k of the objective's Hessian at theta, for v_k the rows of ``vectors`` [K, P], HESSIAN_ROWS at
    a time: k copies theta_k of theta stacked as models of the stack engine, g_k = grad L(theta_k) with its
    graph, then d/dtheta_k sum_k g_k . v_k = H v_k (each copy's objective depends on its own parameters
    only). Scalar backward passes only: no batched pass (whose first call imports ``sympy``)."""
    P = flat.theta.numel()
    out = torch.empty(vectors.shape[0], P, dtype=flat.theta.dtype, device=flat.theta.device)
    how = stacked.chosen(flat.module, x)
    with torch.enable_grad():
        for lo in range(0, vectors.shape[0], HESSIAN_ROWS):
            v = vectors[lo:lo + HESSIAN_ROWS].to(flat.theta.dtype)
            count = v.shape[0]
            leaf = flat.theta.detach().expand(count, P).clone().requires_grad_(True)
            logits = stacked.forward(flat.module, flat.unflatten(leaf), x, False, how)  # type: ignore[arg-type]
            loss = per_example_loss(logits, y.expand(count, *y.shape), smoothing).mean(dim=1)
            (g,) = torch.autograd.grad((loss + 0.5 * weight_decay * (leaf * leaf).sum(dim=1)).sum(), leaf,
                                       create_graph=True)
            (out[lo:lo + count],) = torch.autograd.grad((g * v).sum(), leaf)
    return out


GRAM_BLOCK = 1024  # above this many parameters the Gauss-Newton sum is formed by blocks of this many columns


def _add_upper_blocks(G: Tensor, A: Tensor, B: Tensor) -> None:
    """G += A^T B [P, P] for a symmetric A^T B, computing only the blocks on and above the diagonal (about half
    the multiplications of the whole product) and mirroring the rest."""
    P = G.shape[0]
    edges = list(range(0, P, GRAM_BLOCK)) + [P]
    for i in range(len(edges) - 1):
        rows = slice(edges[i], edges[i + 1])
        for j in range(i, len(edges) - 1):
            cols = slice(edges[j], edges[j + 1])
            block = A[:, rows].T @ B[:, cols]
            G[rows, cols] += block
            if j > i:
                G[cols, rows] += block.T


def objective_ggn(module: nn.Module, params: dict[str, Tensor], x: Tensor, y: Tensor, weight_decay: float,
                  smoothing: float = 0.0, chunk_elements: int = 20_000_000) -> Tensor:
    """G = (1/n) sum_i J_i^T (diag(p_i) - p_i p_i^T) J_i + weight_decay I, with J_i = d logits_i / d theta and
    p_i = softmax(logits_i) (label smoothing does not change the output Hessian, so it is not used here; for
    the squared error the output Hessian is the identity):
    the Gauss-Newton matrix of the objective (positive semi-definite; equal to the
    Hessian for logistic regression)."""
    flat = FlatModel(module, params)
    theta = flat.theta.detach()
    P = theta.numel()
    n = x.shape[0]
    G = torch.zeros(P, P, dtype=torch.float64, device=theta.device)
    jac = vmap(jacrev(lambda th, xi: flat.logits(th, xi.unsqueeze(0)).squeeze(0)), in_dims=(None, 0))
    step = max(1, chunk_elements // max(1, P * 16))
    for lo in range(0, n, step):
        xb = x[lo:lo + step]
        J = jac(theta, xb).to(torch.float64)  # [b, C, P]
        with torch.no_grad():
            H_out = output_hessian(flat.logits(theta, xb).to(torch.float64), y[lo:lo + step])
        HJ = H_out @ J
        if P <= GRAM_BLOCK:
            G += torch.einsum("bcp,bcq->pq", J, HJ)
        else:
            _add_upper_blocks(G, J.reshape(-1, P), HJ.reshape(-1, P))
    G = G / n + weight_decay * torch.eye(P, dtype=torch.float64, device=theta.device)
    return 0.5 * (G + G.T)


CURVATURES = {"hessian": objective_hessian, "ggn": objective_ggn}


def spectrum(H: Tensor) -> Spectrum:
    values, vectors = torch.linalg.eigh(H.to(torch.float64))
    return Spectrum(values=values, vectors=vectors)


def krylov_basis(hvp: Callable[[Tensor], Tensor], P: int, dim: int, seed: int) -> tuple[Tensor, Tensor]:
    """Arnoldi (for a symmetric H: Lanczos) with full reorthogonalisation from a seeded random start:
    (Q [P, d'], T = Q^T H Q [d', d']), d' <= min(dim, P) (fewer when the Krylov space is exhausted)."""
    dim = min(dim, P)
    generator = seeded_generator(seed)
    q = here(torch.randn(P, generator=generator, dtype=torch.float64, device="cpu"))
    basis = [q / q.norm()]
    T = torch.zeros(dim + 1, dim, dtype=torch.float64)
    for k in range(dim):
        w = hvp(basis[k]).to(torch.float64)
        Q = torch.stack(basis, dim=1)
        for _ in range(2):  # twice, for stability
            coeff = Q.T @ w
            w = w - Q @ coeff
            T[: k + 1, k] += coeff
        norm = w.norm()
        T[k + 1, k] = norm
        if k + 1 == dim or norm <= 1e-10 * T[: k + 1, k].abs().max().clamp_min(1e-300):
            return Q, T[: k + 1, : k + 1]
        basis.append(w / norm)
    return torch.stack(basis[:dim], dim=1), T[:dim, :dim]


def lanczos_extremes(hvp: Callable[[Tensor], Tensor], P: int, iterations: int, seed: int) -> Tensor:
    """Ritz values (ascending) of H from ``iterations`` Lanczos steps: the largest and smallest converge first."""
    _, T = krylov_basis(hvp, P, iterations, seed)
    return torch.linalg.eigvalsh(0.5 * (T + T.T))


def hutchinson_trace(hvp_batch: Callable[[Tensor], Tensor], P: int, samples: int, seed: int) -> float:
    """tr(H) ~ mean of v^T H v over Rademacher probes v (Hutchinson 1989)."""
    generator = seeded_generator(seed)
    probes = here(torch.randint(0, 2, (samples, P), generator=generator, device="cpu")).to(torch.float64) * 2 - 1
    return float((probes * hvp_batch(probes).to(torch.float64)).sum(1).mean())
