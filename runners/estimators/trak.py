"""TRAK (Park, Georgiev, Ilyas, Leclerc & Madry 2023, "TRAK: Attributing Model Behavior at Scale", Alg. 1).

Per trained model m (the cell's model and ``models - 1`` more on the same training set, each with its own
initialisation and batch order): the model output f(z) = log(p_y / (1 - p_y)) = z_y - logsumexp_{c != y} z_c,
projected gradients phi(z) = R_m^T grad f(z) with R_m a seeded Gaussian matrix [P, proj_dim] (entries of
variance 1/proj_dim), Phi_m the training points' phi as rows, and Q_m = diag(1 - p_i). The score is
    tau(z_test, z_i) = [1/M sum_m phi_m(z_test)^T (Phi_m^T Phi_m + damping I)^+ phi_m(z_i)] x [1/M sum_m (1 - p_i,m)],
with ^+ a pseudo-inverse (eigenvalues below 1e-10 x the largest dropped). A positive tau means z_i supports
z_test's prediction, so removing it raises the test loss: stored as tau for measure test_loss and -tau for
measure margin (LANGUAGE.md's sign); TRAK only ranks, so the scale is its own.
"""

from __future__ import annotations

import torch
from torch import Tensor

from inflang.spec import TrakEstimator
from runners.device import generator as seeded_generator
from runners.device import here
from runners.estimators.common import EstimatorInputs, per_example_gradients, running_statistics
from runners.objective import FlatModel

BLOCK = 65536  # rows of the projection generated at a time


def output_function(logits: Tensor, y: Tensor) -> Tensor:
    """f = log(p_y / (1 - p_y)) = z_y - logsumexp of the other logits; logits [..., C], y [...]."""
    true = logits.gather(-1, y.unsqueeze(-1)).squeeze(-1)
    others = logits.scatter(-1, y.unsqueeze(-1), float("-inf"))
    return true - torch.logsumexp(others, dim=-1)




def project(G: Tensor, dim: int, seed: int) -> Tensor:
    """G [N, P] @ R -> float64, R [P, dim] Gaussian with variance 1/dim in G's dtype, generated block by block
    from ``seed``."""
    generator = seeded_generator(seed)
    out = torch.zeros(G.shape[0], dim, dtype=G.dtype)
    for lo in range(0, G.shape[1], BLOCK):
        block = G[:, lo:lo + BLOCK]
        R = here(torch.randn(block.shape[1], dim, generator=generator, dtype=G.dtype, device="cpu")) / dim ** 0.5
        out += block @ R
    return out.to(torch.float64)


def pseudo_inverse_times(Phi: Tensor, damping: float) -> Tensor:
    """(Phi^T Phi + damping I)^+ Phi^T [k, n], through the smaller of the two Gram matrices
    (push-through: it equals Phi^T (Phi Phi^T + damping I)^+)."""
    n, k = Phi.shape
    small = Phi @ Phi.T if n < k else Phi.T @ Phi
    values, vectors = torch.linalg.eigh(small + damping * torch.eye(min(n, k), dtype=Phi.dtype))
    keep = values > 1e-10 * values.abs().max().clamp_min(1e-300)
    V = vectors[:, keep]
    inverse = (V / values[keep]) @ V.T
    return Phi.T @ inverse if n < k else inverse @ Phi.T


def trak_scores(spec: TrakEstimator, inputs: EstimatorInputs) -> Tensor:
    models = [inputs.params, *inputs.replicas]
    kernel = torch.zeros(inputs.x_test.shape[0], inputs.n, dtype=torch.float64)
    q = torch.zeros(inputs.n, dtype=torch.float64)
    stats: list[dict[str, Tensor] | None] = [None]  # the cell's own model: the module's statistics already
    stats += inputs.replica_buffers or [None] * len(inputs.replicas)
    for m, params in enumerate(models):
        with running_statistics(inputs.module, stats[m]):
            kernel_m, q_m = _one_model(spec, inputs, params, inputs.seed + m)
        kernel += kernel_m
        q += q_m
    sign = -1.0 if inputs.measure == "margin" else 1.0
    return sign * (kernel / len(models)) * (q / len(models))


def _one_model(spec: TrakEstimator, inputs: EstimatorInputs, params: dict[str, Tensor], seed: int
               ) -> tuple[Tensor, Tensor]:
    """phi_test^T (Phi^T Phi + damping I)^+ Phi^T [T, n] and 1 - p_i [n] for one trained model."""
    flat = FlatModel(inputs.module, params)
    Phi, phi = (project(inputs.keep_selected(per_example_gradients(flat, output_function, x, y, inputs.memory_budget)),
                        spec.proj_dim, seed)
                for x, y in ((inputs.x_train, inputs.y_train), (inputs.x_test, inputs.y_test)))
    with torch.no_grad():
        p = torch.softmax(flat.logits(flat.theta, inputs.x_train), dim=-1).to(torch.float64)
    return phi @ pseudo_inverse_times(Phi, spec.damping), 1.0 - p.gather(1, inputs.y_train.unsqueeze(1)).squeeze(1)
