"""K-FAC influence (Martens & Grosse 2015; Grosse & Martens 2016 for convolutions; Grosse et al. 2023).

The Gauss-Newton matrix is approximated by one Kronecker product per Linear, Conv1d or Conv2d layer l,
    G_l ~ A_l (x) S_l,   A_l = (1/n) sum_i sum_t a_it a_it^T,   S_l = (1/n) sum_i (1/T) sum_t sum_k g_itk g_itk^T,
with a_it the layer's input at spatial position t (a convolution's unfolded patch, a Linear's input, T = 1),
extended by a constant 1 for the bias, and g_itk = J_s,i^T L_ik the backpropagated columns of a square root
of the output Hessian, L_i L_i^T = diag(p_i) - p_i p_i^T (column c: sqrt(p_ic) (e_c - p_i); the exact
expectation over labels, not a sampled one). With the layer's gradient written as a matrix V [out, in(+1)],
(G_l + (weight_decay + damping) I)^-1 vec(V) = Q_S [(Q_S^T V Q_A) / (s_o a_j + weight_decay + damping)] Q_A^T
for A = Q_A diag(a) Q_A^T, S = Q_S diag(s) Q_S^T. The estimate is LANGUAGE.md's
(1/n) g_test^T (G + (weight_decay + damping) I)^-1 g_i with G block-diagonal over layers; parameters that
belong to no Linear, Conv1d or Conv2d layer (normalisation scales) are left out of the product, as in
kronfluence.
Default damping: 0.1 x the mean of the layer's eigenvalues (s_o a_j over the grid).
``fisher: empirical`` replaces the columns of L_i by the single true-label gradient p_i - target_i (the
empirical Fisher, as dattri's EK-FAC and kronfluence's ``use_empirical_fisher``).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from inflang.spec import KfacEstimator
from runners.errors import TaskFailure
from runners.estimators.common import EstimatorInputs, inverse_scores

CHUNK_ELEMENTS = 20_000_000  # layer-output gradients held at once (examples x classes x positions x channels)


@dataclass(frozen=True)
class KroneckerLayer:
    """A Linear, Conv1d or Conv2d module and where its weight and bias sit in the estimator's gradient vector."""

    path: str
    module: nn.Linear | nn.Conv1d | nn.Conv2d
    weight: slice | None
    bias: slice | None

    @property
    def out_features(self) -> int:
        return int(self.module.weight.shape[0])

    def to_matrices(self, X: Tensor) -> Tensor:
        """Rows of gradient vectors [K, P] -> this layer's gradient matrices [K, out, in (+1)]."""
        parts = []
        if self.weight is not None:
            parts.append(X[:, self.weight].reshape(X.shape[0], self.out_features, -1))
        if self.bias is not None:
            parts.append(X[:, self.bias].reshape(X.shape[0], self.out_features, 1))
        return torch.cat(parts, dim=2)

    def from_matrices(self, M: Tensor, out: Tensor) -> None:
        """Write matrices [K, out, in (+1)] back into their columns of ``out`` [K, P]."""
        if self.weight is not None:
            width = self.weight.stop - self.weight.start
            out[:, self.weight] = M[:, :, : width // self.out_features].reshape(M.shape[0], -1)
        if self.bias is not None:
            out[:, self.bias] = M[:, :, -1]


def kronecker_layers(inputs: EstimatorInputs) -> list[KroneckerLayer]:
    """The Linear, Conv1d and Conv2d layers with a selected weight or bias, in module order."""
    flat = inputs.flat
    names = inputs.selected if inputs.selected is not None else flat.names
    sizes = dict(zip(flat.names, flat.sizes, strict=True))
    starts = dict(zip(names, itertools.accumulate([sizes[k] for k in names], initial=0), strict=False))

    def cols(name: str) -> slice | None:
        return slice(starts[name], starts[name] + sizes[name]) if name in starts else None

    layers = []
    for path, module in inputs.module.named_modules():
        if not isinstance(module, nn.Linear | nn.Conv1d | nn.Conv2d):
            continue
        prefix = f"{path}." if path else ""
        weight, bias = cols(f"{prefix}weight"), cols(f"{prefix}bias")
        if weight is None and bias is None:
            continue
        if isinstance(module, nn.Conv1d | nn.Conv2d) and (module.groups != 1 or isinstance(module.padding, str)
                                                          or module.padding_mode != "zeros"):
            raise TaskFailure(f"kfac: convolution '{path}' uses groups, string padding or non-zero padding mode; "
                              "only plain convolutions are Kronecker-factored")
        layers.append(KroneckerLayer(path, module, weight, bias))
    if not layers:
        raise TaskFailure("kfac/ekfac: none of the selected parameters belongs to a Linear, Conv1d or Conv2d layer")
    covered = sum(c.stop - c.start for layer in layers for c in (layer.weight, layer.bias) if c is not None)
    inputs.notes["kfac_uncovered"] = 1.0 - covered / sum(sizes[k] for k in names)  # treated as zero curvature
    return layers


def output_hessian_root(logits: Tensor, regression: bool = False) -> Tensor:
    """L [N, C, C] with L L^T = diag(p) - p p^T (the cross-entropy's Hessian in the logits; label smoothing
    does not change it): column c is sqrt(p_c) (e_c - p). For the squared error, L = I."""
    if regression:
        return torch.eye(logits.shape[-1], dtype=logits.dtype).expand(logits.shape[0], -1, -1)
    p = torch.softmax(logits, dim=-1)
    eye = torch.eye(p.shape[-1], dtype=p.dtype)
    return (eye.unsqueeze(0) - p.unsqueeze(1)).transpose(1, 2) * p.sqrt().unsqueeze(1)


def _patches(layer: KroneckerLayer, inp: Tensor) -> Tensor:
    """A layer's inputs as [N, T, in (+1)]: a convolution's unfolded patches (T positions; a Conv1d's as a
    1 x length image), extended by 1 for a bias (one copy, written in place)."""
    m = layer.module
    if isinstance(m, nn.Conv2d):
        assert not isinstance(m.padding, str)  # refused in kronecker_layers
        a = F.unfold(inp, m.kernel_size, m.dilation, m.padding, m.stride).transpose(1, 2)
    elif isinstance(m, nn.Conv1d):
        assert not isinstance(m.padding, str)
        a = F.unfold(inp.unsqueeze(2), (1, m.kernel_size[0]), (1, m.dilation[0]), (0, m.padding[0]),
                     (1, m.stride[0])).transpose(1, 2)
    else:
        a = inp.reshape(inp.shape[0], -1, inp.shape[-1])
    if layer.bias is None:
        return a
    width = a.shape[2] if layer.weight is not None else 0
    out = a.new_empty(*a.shape[:2], width + 1)
    if width:
        out[..., :width] = a
    out[..., width] = 1.0
    return out


def _outputs(layer: KroneckerLayer, grad: Tensor) -> Tensor:
    """A layer's output gradients as [N, T, out]."""
    if isinstance(layer.module, nn.Conv1d | nn.Conv2d):
        return grad.flatten(2).transpose(1, 2)
    return grad.reshape(grad.shape[0], -1, grad.shape[-1])


def _forward(inputs: EstimatorInputs, params: dict[str, Tensor], layers: list[KroneckerLayer], x: Tensor
             ) -> tuple[Tensor, dict[str, tuple[Tensor, Tensor]]]:
    """Logits, and each layer's (input, output) seen on the way."""
    seen: dict[str, tuple[Tensor, Tensor]] = {}

    def keep(path: str) -> Callable[[nn.Module, Any, Tensor], None]:
        def hook(_m: nn.Module, args: Any, out: Tensor) -> None:
            seen[path] = (args[0], out)
        return hook

    handles = [layer.module.register_forward_hook(keep(layer.path)) for layer in layers]
    try:
        logits = functional_call(inputs.module, params, (x,))
    finally:
        for h in handles:
            h.remove()
    return logits, seen


def empirical_root(logits: Tensor, y: Tensor, smoothing: float) -> Tensor:
    """[N, C, 1]: the loss's gradient in the logits at the true (smoothed) labels, p - target (for the
    squared error, z - y); its outer product is the empirical Fisher's output factor."""
    if y.is_floating_point():
        return (logits - y).unsqueeze(-1)
    p = torch.softmax(logits, dim=-1)
    target = F.one_hot(y, p.shape[-1]).to(p.dtype) * (1.0 - smoothing) + smoothing / p.shape[-1]
    return (p - target).unsqueeze(-1)


def layer_statistics(inputs: EstimatorInputs, layers: list[KroneckerLayer], fisher: str = "expected"
                     ) -> Iterator[list[tuple[Tensor, Tensor]]]:
    """Per chunk of training examples, per layer: (inputs a [N, T, in(+1)], pseudo-gradients g [N, K, T, out]),
    g[:, k] the output gradients backpropagated from column k of the output Hessian's root (``expected``, the
    Gauss-Newton matrix) or from the true-label loss gradient (``empirical``, K = 1), in the model's dtype
    (a chunk's sums are taken in it and accumulated over chunks in float64, as kronfluence does)."""
    params = {k: v.detach().requires_grad_(True) for k, v in inputs.params.items()}
    x = inputs.x_train
    with torch.no_grad():
        probe, seen = _forward(inputs, params, layers, x[:1])
    classes = int(probe.shape[-1]) if fisher == "expected" else 1
    per_example = 0  # elements per example: pseudo-gradients, patches, and EK-FAC's projected matrices
    for layer in layers:
        inp, out = seen[layer.path]
        patches = _patches(layer, inp)
        per_example += classes * (out.numel() + layer.out_features * patches.shape[-1]) + patches.numel()
    step = max(1, CHUNK_ELEMENTS // max(1, per_example))
    for lo in range(0, int(x.shape[0]), step):
        logits, seen = _forward(inputs, params, layers, x[lo:lo + step])
        root = (output_hessian_root(logits.detach(), inputs.y_train.is_floating_point()) if fisher == "expected"
                else empirical_root(logits.detach(), inputs.y_train[lo:lo + step], inputs.smoothing))
        outs = [seen[layer.path][1] for layer in layers]
        columns = [torch.autograd.grad(logits, outs, grad_outputs=root[:, :, k], retain_graph=True)
                   for k in range(classes)]
        chunk = []
        for j, layer in enumerate(layers):
            a = _patches(layer, seen[layer.path][0].detach())
            g = torch.stack([_outputs(layer, col[j]) for col in columns], dim=1)
            chunk.append((a, g))
        yield chunk


@dataclass(frozen=True)
class Factors:
    """Per layer: eigenvectors of A and S, and the eigenvalue grid [out, in(+1)] of the curvature in that basis."""

    layers: list[KroneckerLayer]
    q_a: list[Tensor]
    q_s: list[Tensor]
    grid: list[Tensor]
    fisher: str = "expected"


def kronecker_factors(inputs: EstimatorInputs, layers: list[KroneckerLayer], fisher: str = "expected") -> Factors:
    """A_l, S_l over the training set, eigendecomposed; the grid holds the K-FAC eigenvalues s_o a_j."""
    n = inputs.n
    A: list[Tensor] = [torch.zeros(0)] * len(layers)
    S: list[Tensor] = [torch.zeros(0)] * len(layers)
    for chunk in layer_statistics(inputs, layers, fisher):
        for j, (a, g) in enumerate(chunk):
            T = a.shape[1]
            a_part = torch.einsum("ntp,ntq->pq", a, a).to(torch.float64)
            s_part = torch.einsum("nktp,nktq->pq", g, g).to(torch.float64) / T
            A[j] = a_part if A[j].numel() == 0 else A[j] + a_part
            S[j] = s_part if S[j].numel() == 0 else S[j] + s_part
    q_a, q_s, grid = [], [], []
    for j in range(len(layers)):
        ea, va = torch.linalg.eigh(A[j] / n)
        es, vs = torch.linalg.eigh(S[j] / n)
        q_a.append(va)
        q_s.append(vs)
        grid.append(es.clamp_min(0).unsqueeze(1) * ea.clamp_min(0).unsqueeze(0))
    return Factors(layers, q_a, q_s, grid, fisher)


def kronecker_inverse(inputs: EstimatorInputs, factors: Factors, damping: float | None
                      ) -> Callable[[Tensor], Tensor]:
    """X [K, P] -> rows of (G_kron + (weight_decay + damping_l) I)^-1 X; zero outside the Kronecker layers."""
    shifts = [inputs.weight_decay + (damping if damping is not None else 0.1 * float(grid.mean()))
              for grid in factors.grid]
    for layer, shift in zip(factors.layers, shifts, strict=True):
        if shift <= 0:
            raise TaskFailure(f"kfac: layer '{layer.path}' has a zero curvature grid and no damping or weight "
                              "decay; set damping > 0")

    def apply(X: Tensor) -> Tensor:
        out = torch.zeros_like(X)
        for layer, qa, qs, grid, shift in zip(factors.layers, factors.q_a, factors.q_s, factors.grid, shifts,
                                              strict=True):
            V = qs.T @ layer.to_matrices(X) @ qa
            layer.from_matrices(qs @ (V / (grid + shift)) @ qa.T, out)
        return out

    return apply


def kfac_scores(spec: KfacEstimator, inputs: EstimatorInputs) -> Tensor:
    layers = kronecker_layers(inputs)
    factors = kronecker_factors(inputs, layers, spec.fisher)
    return inverse_scores(inputs, kronecker_inverse(inputs, factors, spec.damping))
