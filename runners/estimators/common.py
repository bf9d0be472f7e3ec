"""What every estimator receives, and the derivatives they share (per-example gradients, HVPs).

All quantities are for the training objective L(theta) = (1/n) sum_j loss_j + weight_decay/2 ||theta||^2
at the trained parameters; gradients are per example, flattened over all parameters (P entries).
"""

from __future__ import annotations

import itertools
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.func import grad, vmap

from runners import engine as engines
from runners import stacked
from runners.curvature import Spectrum, by_copies, products_from_copies
from runners.device import chunk_bytes
from runners.objective import MEASURES, PARAM_CHANGE, FlatModel, per_example_loss, vmap_failure


@dataclass
class EstimatorInputs:
    module: nn.Module
    params: dict[str, Tensor]
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor  # the selected test points only
    y_test: Tensor
    measure: str  # test_loss | margin: what g_test is the gradient of
    weight_decay: float
    seed: int
    spectrum: Spectrum | None = None
    checkpoints: list[tuple[float, dict[str, Tensor]]] = field(default_factory=list)  # (lr, params) in order
    selected: list[str] | None = None  # parameters influence is computed over (None: all of them)
    smoothing: float = 0.0  # the training loss's label smoothing
    replicas: list[dict[str, Tensor]] = field(default_factory=list)  # other models trained on the same data
    # running statistics (BatchNorm) that go with each checkpoint and replica; empty without buffers
    checkpoint_buffers: list[dict[str, Tensor]] = field(default_factory=list)
    replica_buffers: list[dict[str, Tensor]] = field(default_factory=list)
    memory_budget: int | None = None  # bytes of a gradient pass (gradient_rows; None: GRADIENT_BYTES)
    # what an estimator observed about its own approximation (kfac_uncovered, arnoldi_mass): health checks
    notes: dict[str, float] = field(default_factory=dict)
    _cache: dict[str, Tensor] = field(default_factory=dict)

    @property
    def flat(self) -> FlatModel:
        return FlatModel(self.module, self.params)

    @property
    def n(self) -> int:
        return int(self.x_train.shape[0])

    @property
    def columns(self) -> Tensor | None:
        """Positions of the selected parameters in the flat vector (None: every parameter)."""
        if self.selected is None:
            return None
        flat = self.flat
        starts = dict(zip(flat.names, itertools.accumulate([0, *flat.sizes[:-1]]), strict=True))
        sizes = dict(zip(flat.names, flat.sizes, strict=True))
        return torch.cat([torch.arange(starts[k], starts[k] + sizes[k]) for k in self.selected])

    @property
    def dim(self) -> int:
        """How many parameters influence is computed over."""
        cols = self.columns
        return int(self.flat.theta.numel()) if cols is None else int(cols.numel())

    def keep_selected(self, g: Tensor) -> Tensor:
        cols = self.columns
        return g if cols is None else g[:, cols]

    def train_gradients(self, native: bool = False) -> Tensor:
        """[n, P] gradients of each training example's loss over the selected parameters, in float64 (or in
        the model's dtype with ``native``: plain inner products need no float64 copy of float32 gradients)."""
        return self._cached("train", native, lambda: gradients(self.flat, self.x_train, self.y_train,
                                                              smoothing=self.smoothing, budget=self.memory_budget))

    def test_gradients(self, native: bool = False) -> Tensor:
        """[T, P] gradients of the measured quantity at each selected test point (float64, or native)."""
        return self._cached("test", native, lambda: gradients(self.flat, self.x_test, self.y_test, self.measure,
                                                             budget=self.memory_budget))

    def train_products(self, M: Tensor) -> Tensor:
        """M @ G^T [K, n] (float64) for rows M [K, P] (float64) and the training gradients G: from G where an
        estimator computed it already, else a chunk of ``gradient_rows`` examples at a time, never all of G
        (on ResNet-20 with 2,000 examples, G is 2.2 GB in float32 and 4.3 GB in float64)."""
        if "train" in self._cache:
            return M @ self._cache["train"].T
        out = torch.empty(M.shape[0], self.n, dtype=torch.float64, device=M.device)
        step = gradient_rows(self.flat, self.x_train, self.memory_budget)
        for lo in range(0, self.n, step):
            if "train_native" in self._cache:
                G = self._cache["train_native"][lo:lo + step]
            else:
                G = self.keep_selected(gradients(self.flat, self.x_train[lo:lo + step], self.y_train[lo:lo + step],
                                                 smoothing=self.smoothing, budget=self.memory_budget))
            out[:, lo:lo + step] = M @ G.to(torch.float64).T
        return out

    def _cached(self, key: str, native: bool, compute: Callable[[], Tensor]) -> Tensor:
        """Selected columns of ``compute()``, computed once; its float64 copy made once, when first asked for."""
        if f"{key}_native" not in self._cache:
            self._cache[f"{key}_native"] = self.keep_selected(compute())
        if native:
            return self._cache[f"{key}_native"]
        if key not in self._cache:
            self._cache[key] = self._cache[f"{key}_native"].to(torch.float64)
        return self._cache[key]

    def hvp(self, vectors: Tensor, batch: Tensor | None = None) -> Tensor:
        """(H_B) v for each row of ``vectors`` [K, P]; H_B on the minibatch ``batch`` (all points if None).
        Over selected parameters this is the Hessian's block for them (the others held fixed)."""
        cols = self.columns
        if cols is None:
            return hessian_vector_products(self.flat, self.x_train, self.y_train, self.weight_decay, vectors, batch,
                                           self.smoothing, self.memory_budget)
        full = torch.zeros(vectors.shape[0], int(self.flat.theta.numel()), dtype=vectors.dtype)
        full[:, cols] = vectors
        return hessian_vector_products(self.flat, self.x_train, self.y_train, self.weight_decay, full,
                                       batch, self.smoothing, self.memory_budget)[:, cols]

    def curvature(self) -> Spectrum:
        """The eigendecomposition of the curvature (its block for the selected parameters)."""
        assert self.spectrum is not None, "this estimator needs the curvature task's eigendecomposition"
        cols = self.columns
        if cols is None:
            return self.spectrum
        V = self.spectrum.vectors[cols]
        block = (V * self.spectrum.values) @ V.T
        values, vectors = torch.linalg.eigh(0.5 * (block + block.T))
        return Spectrum(values, vectors)


@contextmanager
def running_statistics(module: nn.Module, buffers: dict[str, Tensor] | None) -> Iterator[None]:
    """The module evaluates with ``buffers`` (another checkpoint's or model's BatchNorm statistics) inside."""
    if not buffers:
        yield
        return
    saved = {k: b.detach().clone() for k, b in module.named_buffers()}
    with torch.no_grad():
        for k, b in module.named_buffers():
            b.copy_(buffers[k])
    try:
        yield
    finally:
        with torch.no_grad():
            for k, b in module.named_buffers():
                b.copy_(saved[k])


def inverse_scores(inputs: EstimatorInputs, apply_inverse: Callable[[Tensor], Tensor]) -> Tensor:
    """Scores [T, n] from an estimator's (H + damping I)^-1 applied to rows of a matrix:
    (1/n) g_test^T M g_i for a measured quantity at test points, or, for ``param_change_norm``, the predicted
    size of the parameter change, (1/n) ||M g_i||, as a single row (Basu et al. 2021, Sec. 5.1)."""
    if inputs.measure == PARAM_CHANGE:
        return (apply_inverse(inputs.train_gradients()).norm(dim=1) / inputs.n).unsqueeze(0)
    return inputs.train_products(apply_inverse(inputs.test_gradients())) / inputs.n


GRADIENT_BYTES = 1 << 30  # per-example gradients, and the layer outputs their pass keeps, at once by default


def gradient_rows(flat: FlatModel, x: Tensor, budget: int | None = None) -> int:
    """Examples whose gradients one pass computes: at most ``budget`` bytes (default GRADIENT_BYTES, on a GPU a
    share of its memory: ``runners.device.chunk_bytes``) of gradients and of the layer outputs their pass keeps
    (three per activation, as the diagnose task counts them)."""
    size = flat.theta.element_size()
    per_row = int(flat.theta.numel()) * size + 3 * _activations(flat.module, tuple(x.shape[1:])) * size
    return max(1, (budget or chunk_bytes(flat.theta.device, GRADIENT_BYTES)) // max(1, per_row))


COPIES_ELEMENTS = 4_000_000  # examples x parameters up to which a Linear stack's gradients come from copies


def _copies_gradients(one: Callable[[Tensor, Tensor, Tensor], Tensor]) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    """Per-example gradients as the gradient of sum_i one(theta_i, x_i, y_i) with respect to a copy theta_i of
    theta per example (every copy equal to theta, so each row is d one(theta, x_i, y_i) / d theta): ``vmap``
    for the forward pass and one ordinary backward pass. For Linear stacks, where a copy per example costs what
    the gradient row does, and only where every copy together is small (``COPIES_ELEMENTS``: a small study, for
    which ``torch.func.grad``'s first call, which imports torch's compiler, would cost more than the gradients;
    larger ones take ``vmap(grad)``, faster there)."""

    def many(theta: Tensor, x: Tensor, y: Tensor) -> Tensor:
        with torch.enable_grad():  # a caller's no_grad would leave nothing to differentiate
            copies = theta.detach().expand(int(x.shape[0]), -1).clone().requires_grad_(True)
            (rows,) = torch.autograd.grad(vmap(one)(copies, x, y).sum(), copies)
        return rows

    return many


def per_example_gradients(flat: FlatModel, fn: Callable[[Tensor, Tensor], Tensor], x: Tensor, y: Tensor,
                          budget: int | None = None) -> Tensor:
    """[N, P] gradients of fn(logits [1, C], y [1]) -> [1] at each example (torch.func ``vmap(grad)``), in row
    chunks of ``gradient_rows``."""

    def one(theta: Tensor, xi: Tensor, yi: Tensor) -> Tensor:
        return fn(flat.logits(theta, xi.unsqueeze(0)), yi.unsqueeze(0)).squeeze(0)

    n = int(x.shape[0])
    step = gradient_rows(flat, x, budget)
    if flat.module not in UNBATCHED_EXAMPLES:
        small = n * int(flat.theta.numel()) <= COPIES_ELEMENTS and stacked.linear_only(flat.module)
        many = _copies_gradients(one) if small else vmap(grad(one), in_dims=(None, 0, 0))
        try:
            if step >= n:
                return many(flat.theta, x, y)
            out = torch.empty(n, int(flat.theta.numel()), dtype=flat.theta.dtype, device=flat.theta.device)
            for lo in range(0, n, step):  # filled in place: no second copy of every row, as a concatenation makes
                out[lo:lo + step] = many(flat.theta, x[lo:lo + step], y[lo:lo + step])
            return out
        except RuntimeError as exc:
            if not vmap_failure(exc):
                raise
            UNBATCHED_EXAMPLES[flat.module] = engines.first_line(exc)
    engines.looped("examples", flat.module, UNBATCHED_EXAMPLES[flat.module],
                   "taking per-example gradients one example at a time")
    theta = flat.theta.detach().requires_grad_(True)  # a module vmap cannot batch: one example at a time
    return torch.stack([torch.autograd.grad(one(theta, x[i], y[i]), theta)[0] for i in range(int(x.shape[0]))])


def gradients(flat: FlatModel, x: Tensor, y: Tensor, measure: str = "loss", smoothing: float = 0.0,
              budget: int | None = None) -> Tensor:
    """Per-example gradients [N, P] of the training loss (label ``smoothing`` as trained) or of a measured
    quantity at flat.theta."""
    if measure == "loss":
        return per_example_gradients(flat, lambda z, t: per_example_loss(z, t, smoothing), x, y, budget)
    return per_example_gradients(flat, MEASURES[measure], x, y, budget)


UNBATCHED: weakref.WeakSet[nn.Module] = weakref.WeakSet()  # modules whose double backward cannot be batched
UNBATCHED_EXAMPLES: weakref.WeakKeyDictionary[nn.Module, str] = weakref.WeakKeyDictionary()  # modules vmap
# cannot batch over examples -> why


HVP_ELEMENTS = 20_000_000  # layer outputs (examples x outputs per example) of one double-backward pass on a CPU
HVP_BYTES = 60  # bytes a double-backward pass holds per layer output (ResNet-20: 1.2 GB for 20M outputs)
ACTIVATIONS: weakref.WeakKeyDictionary[nn.Module, dict[tuple[int, ...], int]] = weakref.WeakKeyDictionary()


def hessian_vector_products(flat: FlatModel, x: Tensor, y: Tensor, weight_decay: float, vectors: Tensor,
                            batch: Tensor | None = None, smoothing: float = 0.0, budget: int | None = None) -> Tensor:
    """Rows H v_k of the objective's Hessian (on ``batch``, or all points) times each row of ``vectors``, over
    the examples in chunks of at most HVP_ELEMENTS layer outputs (on a GPU as many as a share of its memory
    holds, ``runners.device.chunk_bytes``; with a ``budget``, as many as HVP_BYTES each fit in it): each
    chunk's mean-loss products weighted by
    its share of the examples, weight decay added once: on ResNet-20 chunks are faster than one pass and hold a
    fraction of its memory (README, "At ResNet size"); a network small enough for one chunk is computed in one
    pass."""
    xb, yb = (x, y) if batch is None else (x[batch], y[batch])
    n = int(xb.shape[0])
    elements = (budget or chunk_bytes(flat.theta.device, HVP_ELEMENTS * HVP_BYTES)) // HVP_BYTES
    rows = max(1, elements // max(1, _activations(flat.module, tuple(xb.shape[1:]))))
    if rows >= n:
        return _products(flat, xb, yb, weight_decay, vectors, smoothing)
    chunks = -(-n // rows)  # as few as the limit allows, of equal size to one example
    bounds = [i * n // chunks for i in range(chunks + 1)]
    total = weight_decay * vectors
    for lo, hi in itertools.pairwise(bounds):
        total += (hi - lo) / n * _products(flat, xb[lo:hi], yb[lo:hi], 0.0, vectors, smoothing)
    return total


def _activations(module: nn.Module, shape: tuple[int, ...]) -> int:
    """Layer outputs kept per example (``activations_per_example``), counted once per module and input shape."""
    from runners.ensemble import activations_per_example  # here: runners.ensemble loads the training engines

    known = ACTIVATIONS.setdefault(module, {})
    if shape not in known:
        known[shape] = activations_per_example(module, shape)
    return known[shape]


def _products(flat: FlatModel, x: Tensor, y: Tensor, weight_decay: float, vectors: Tensor, smoothing: float
              ) -> Tensor:
    """H v_k on (x, y) in one pass: one batched double backward, or one per vector for modules whose double
    backward has no batching rule (GroupNorm's), remembered per module so that iterative solvers try the
    batched pass once; a small Linear stack's from copies of its parameters (``curvature.by_copies``)."""
    if by_copies(flat.module, x, int(flat.theta.numel())):  # a small Linear stack: no batched pass
        return products_from_copies(flat, x, y, weight_decay, vectors, smoothing).to(vectors.dtype)
    theta = flat.theta.detach().requires_grad_(True)
    loss = flat.objective(theta, x, y, weight_decay, smoothing)
    (g,) = torch.autograd.grad(loss, theta, create_graph=True)
    v = vectors.to(theta.dtype)
    if flat.module not in UNBATCHED:
        try:
            (hv,) = torch.autograd.grad(g, theta, grad_outputs=v, is_grads_batched=True, retain_graph=True)
            return hv.to(vectors.dtype)
        except torch.OutOfMemoryError:
            raise
        except RuntimeError:  # GroupNorm's batched double backward fails with a shape mismatch; an error that
            UNBATCHED.add(flat.module)  # is not the batching's raises again from the per-vector pass below
    hv = torch.stack([torch.autograd.grad(g, theta, grad_outputs=row, retain_graph=True)[0] for row in v])
    return hv.to(vectors.dtype)
