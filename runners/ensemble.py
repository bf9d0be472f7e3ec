"""The batched retraining engine: many models of one architecture trained at once.

Model m minimises L_m(theta_m) = (1/|B|) sum_{j in B} w_mj loss_j(theta_m) + weight_decay/2 ||theta_m||^2
(B = all n points for full batch). A removal is w_mj = 0 with the denominator unchanged (LANGUAGE.md).
Parameters are stacked along a leading model axis; the forward pass is ``runners.forward.ensemble_logits``;
the gradient of sum_m L_m gives every model's own gradient (the models share nothing), by hand for a Linear
stack (``runners.backprop``), else by one autograd backward pass. The updates
replicate ``torch.optim.SGD`` (momentum, no dampening) and ``torch.optim.Adam`` (defaults) operation by
operation, so one model here follows the same trajectory as a sequential optimizer loop.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from inflang.compiling.cost import member_bytes, models_per_chunk
from runners import backprop, stacked
from runners import engine as engines
from runners.batches import batch_order
from runners.compiled import CompileUnavailable, compiled_gradient
from runners.device import here
from runners.errors import DivergenceError
from runners.forward import ensemble_logits
from runners.objective import loss_parts, per_example_loss

Stacked = dict[str, Tensor]


@dataclass(frozen=True)
class UpdateRule:
    """The optimizer that retraining replays: sgd (with momentum) or adam (torch defaults)."""

    optimizer: str
    lr: float
    weight_decay: float
    momentum: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    schedule: str = "constant"  # constant | cosine | step
    total_steps: int = 1  # cosine: T
    step_size: int = 1  # step: steps between decays
    gamma: float = 0.1  # step: decay factor

    def lr_at(self, step: int) -> float:
        """The learning rate of optimizer step ``step`` (0-based)."""
        if self.schedule == "cosine":
            return self.lr * 0.5 * (1.0 + math.cos(math.pi * step / max(1, self.total_steps)))
        if self.schedule == "step":
            return self.lr * self.gamma ** (step // max(1, self.step_size))
        return self.lr


def stack(params: dict[str, Tensor], copies: int) -> Stacked:
    """``copies`` identical models stacked along a new leading axis."""
    return {k: v.detach().unsqueeze(0).expand(copies, *v.shape).clone() for k, v in params.items()}


def split_state(module: nn.Module, state: Stacked, copies: int) -> tuple[Stacked, Stacked]:
    """(parameters, buffers) of stacked model states; buffers (BatchNorm's running statistics) missing from
    ``state`` are stacked from the module's own."""
    names = {k for k, _ in module.named_parameters()}
    params = {k: v for k, v in state.items() if k in names}
    buffers = {k: v.detach().clone() for k, v in state.items() if k not in names}
    for k, b in module.named_buffers():
        if k not in buffers:
            buffers[k] = b.detach().unsqueeze(0).expand(copies, *b.shape).clone()
    return params, buffers


class Layout:
    """Where each parameter lives in one flat [M, P] buffer (model m's parameters are row m)."""

    def __init__(self, stacked: Stacked) -> None:
        self.names = list(stacked)
        self.shapes = [tuple(stacked[k].shape[1:]) for k in self.names]
        sizes = [int(torch.Size(s).numel()) for s in self.shapes]
        self.bounds = list(zip([0, *itertools.accumulate(sizes)][:-1], itertools.accumulate(sizes), strict=True))

    def flatten(self, stacked: Stacked) -> Tensor:
        return torch.cat([stacked[k].reshape(stacked[k].shape[0], -1) for k in self.names], dim=1)

    def views(self, flat: Tensor) -> Stacked:
        count = flat.shape[0]
        return {k: flat[:, a:b].view(count, *shape)
                for k, shape, (a, b) in zip(self.names, self.shapes, self.bounds, strict=True)}


class _Optimizer:
    """SGD (momentum, no dampening) and Adam (torch defaults), as torch.optim computes them, on [M, P]."""

    def __init__(self, rule: UpdateRule) -> None:
        self.rule = rule
        self.t = 0
        self.state: list[Tensor] = []

    @torch.no_grad()
    def step(self, p: Tensor, g: Tensor) -> None:
        r = self.rule
        self.t += 1
        if r.optimizer == "sgd":
            if r.momentum:
                if not self.state:
                    self.state.append(g.clone())
                else:
                    self.state[0].mul_(r.momentum).add_(g)
                g = self.state[0]
            p.add_(g, alpha=-r.lr_at(self.t - 1))
            return
        if not self.state:
            self.state.extend([torch.zeros_like(p), torch.zeros_like(p)])
        m, v = self.state
        beta1, beta2 = r.betas
        m.lerp_(g, 1 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        step_size = r.lr_at(self.t - 1) / (1 - beta1**self.t)
        denom = (v.sqrt() / math.sqrt(1 - beta2**self.t)).add_(r.eps)
        p.addcdiv_(m, denom, value=-step_size)


Batch = Tensor | None  # None: every point; [b]: one batch shared by all models; [M, b]: a batch per model
DataTerm = Callable[[Tensor, Batch, Stacked], Tensor]  # (logits [M, b, C], batch, params) -> per-model [M]


class WeightedCrossEntropy:
    """The data term of LANGUAGE.md: (1/|B|) sum_{j in B} w_mj loss_j for model m (B = all n points).

    ``normalise="kept"`` divides by sum_{j in B} w_mj instead: each model averages its loss over the points
    it keeps (a training set of its own; a batch that keeps none contributes 0). ``value_and_gradient`` also
    gives its gradient in the logits, by hand (``runners.backprop``): (softmax(z) - (1 - e) one_hot(y) - e / C)
    w_mj / |B| for cross-entropy with label smoothing e, (z - y) w_mj / |B| for the squared error."""

    def __init__(self, y: Tensor, weights: Tensor, smoothing: float = 0.0, normalise: str = "all") -> None:
        self.y, self.weights, self.smoothing, self.normalise = y, weights, smoothing, normalise
        self.rows = torch.arange(weights.shape[0]).unsqueeze(1)

    def _batch(self, batch: Batch) -> tuple[Tensor, Tensor, Tensor | int]:
        y, weights, count = self.y, self.weights, self.weights.shape[0]
        if batch is None:
            yb, wb, denom = y.expand(count, *y.shape), weights, y.shape[0]
        elif batch.dim() == 1:
            yb, wb, denom = y[batch].expand(count, len(batch), *y.shape[1:]), weights[:, batch], len(batch)
        else:
            yb, wb, denom = y[batch], weights[self.rows, batch], batch.shape[1]
        if self.normalise == "kept":
            kept = wb.sum(dim=1)
            return yb, wb, torch.where(kept > 0, kept, torch.ones_like(kept))
        return yb, wb, denom

    def __call__(self, logits: Tensor, batch: Batch, params: Stacked) -> Tensor:
        yb, wb, denom = self._batch(batch)
        return (per_example_loss(logits, yb, self.smoothing) * wb).sum(dim=1) / denom

    def value_and_gradient(self, logits: Tensor, batch: Batch) -> tuple[Tensor, Tensor]:
        """(data terms [M], d sum_m data_m / d logits [M, b, C]), the value computed as ``__call__`` does."""
        yb, wb, denom = self._batch(batch)
        scale = (wb / (denom.unsqueeze(1) if isinstance(denom, Tensor) else denom)).unsqueeze(-1)
        loss, exps, total = loss_parts(logits, yb, self.smoothing)
        if exps is None or total is None:  # the squared error
            grad = (logits - yb).mul_(scale)
        else:  # the softmax from the loss's own exp(z - max z), minus the (smoothed) one-hot
            e = self.smoothing
            grad = exps.div_(total.unsqueeze(-1))
            grad.scatter_add_(-1, yb.unsqueeze(-1), torch.full_like(total, -(1.0 - e)).unsqueeze(-1))
            if e:
                grad.sub_(e / logits.shape[-1])
            grad.mul_(scale)
        return (loss * wb).sum(dim=1) / denom, grad


def weighted_cross_entropy(y: Tensor, weights: Tensor, smoothing: float = 0.0,
                           normalise: str = "all") -> WeightedCrossEntropy:
    """``WeightedCrossEntropy``: the data term of LANGUAGE.md, weighted per model and training point."""
    return WeightedCrossEntropy(y, weights, smoothing, normalise)


def stochastic(module: nn.Module) -> bool:
    """Whether a training-mode forward pass draws random numbers (dropout)."""
    return any(isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0 for m in module.modules())


def step_seed(noise_seed: int, step: int) -> int:
    """The 32-bit seed of the random draws of one training step (torch's CPU generator keeps 32 bits of a
    seed): the seed and the step mixed by SplitMix64's finaliser, so nearby seeds and steps land far apart."""
    mask = (1 << 64) - 1
    z = (int(noise_seed) * 0x9E3779B97F4A7C15 + int(step) + 1) & mask
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    return (z ^ (z >> 31)) & 0xFFFFFFFF


def train_ensemble(module: nn.Module, start: Stacked, x: Tensor, rule: UpdateRule, steps: int,
                   batch_size: int | None, order_seeds: list[int], data_term: DataTerm,
                   anchor: Stacked | None = None, proximity: float = 0.0,
                   on_step: Callable[[int, Stacked], bool | None] | None = None,
                   lr_name: str = "the retraining lr", noise_seed: int = 0,
                   tolerate_divergence: bool = False, engine: str | None = None,
                   gradient_norms: list[tuple[Tensor, Tensor]] | None = None) -> Stacked:
    """Train M models together from ``start`` ([M, ...] per parameter) on the inputs x [n, d].

    Model m minimises data_term(...)[m] + weight_decay/2 ||theta_m||^2 + proximity/2 ||theta_m - anchor_m||^2.
    ``order_seeds`` gives each model's minibatch order (models sharing a seed see identical batches).
    ``on_step(step, state)`` runs after every update; training ends early when it returns True.
    All parameters live in one [M, P] buffer, so an optimizer step is a handful of tensor operations; the
    gradients of the two quadratic terms are added analytically rather than through autograd.
    Random draws (dropout masks) of step t come from the generator seeded with ``step_seed(noise_seed, t)``
    and are shared by every model (common random numbers), so they depend on the seed and the step only:
    not on the ensemble's size, its chunking, the process or a resume. The caller's random state is kept.
    With ``tolerate_divergence`` a model whose loss stops being finite is frozen at NaN and the others go
    on (the caller decides what a NaN model means); otherwise any such model raises.
    Buffers (BatchNorm's running statistics) are stacked per model too, from ``start`` or else from the
    module, and updated by each model's own training-mode forward passes, as ``nn.BatchNorm`` does.
    ``engine`` (eager | compiled | auto; None: the task's ``--engine``) picks how each step's gradient is
    computed (``runners.engine``); the arithmetic is the same, the rounding not.
    With a ``gradient_norms`` list, full-batch training of a deterministic model appends each model's
    ||gradient of its objective|| at the start and at the end ([M] each): how far training took it towards a
    stationary point (nothing is appended for minibatches or dropout, where a step's gradient is noisy).
    Returns the final stacked parameters and buffers; raises DivergenceError if any model's loss is not
    finite.
    """
    start, buffers = split_state(module, start, next(iter(start.values())).shape[0])
    layout = Layout(start)
    flat = layout.flatten(start).detach().clone()
    centre = layout.flatten(anchor).detach() if anchor is not None and proximity else None
    opt = _Optimizer(rule)
    was_training = module.training
    module.train()  # dropout on (masks seeded per step, shared by the models); switched back below
    seeded = noise_seed if stochastic(module) else None
    devices = [x.device] if x.device.type == "cuda" else []
    count = flat.shape[0]
    name = engines.choose(module, count * steps, engine)
    try:
        if name == "compiled":
            try:  # every graph the steps will need is compiled here, before step 0: a failure falls back cleanly
                gradient = _gradients(name, module, layout, buffers, data_term, rule.weight_decay, proximity,
                                      centre)
                _compile_shapes(gradient, flat, x, batch_size, steps, len(set(order_seeds)))
            except CompileUnavailable as exc:
                engines.unavailable(str(exc))
                name = "eager"
        if name == "eager":
            gradient = _gradients(name, module, layout, buffers, data_term, rule.weight_decay, proximity, centre)
        measure = gradient_norms is not None and seeded is None and (batch_size is None or batch_size >= x.shape[0])
        before = _gradient_norms(gradient, flat, x, buffers) if measure else None
        with torch.random.fork_rng(devices=devices, enabled=seeded is not None):
            out = _train(layout, flat, buffers, x, rule, steps, batch_size, order_seeds, gradient, opt, on_step,
                         lr_name, seeded, tolerate_divergence)
            engines.record(name)
        if gradient_norms is not None and before is not None:
            after = _gradient_norms(gradient, layout.flatten(out).detach(), x, buffers)
            gradient_norms.append((before, after))
        return out
    finally:
        module.train(was_training)


def _gradient_norms(gradient: Gradient, flat: Tensor, x: Tensor, buffers: Stacked) -> Tensor:
    """[M] ||full-batch gradient|| of each model's objective, leaving the running statistics (BatchNorm) as
    they were: measuring must not change what training computes."""
    saved = {k: b.clone() for k, b in buffers.items()}
    try:
        return gradient(flat, x, None, False)[1].norm(dim=1).detach().cpu()
    finally:
        with torch.no_grad():
            for k, b in buffers.items():
                b.copy_(saved[k])


def _compile_shapes(gradient: Gradient, flat: Tensor, x: Tensor, batch_size: int | None, steps: int,
                    orders: int) -> None:
    """Call the compiled step once on each input shape the training will meet (the full batch; or minibatches
    of ``batch_size`` and, when an epoch ends short and the steps reach its end, of n mod batch_size), so that
    compiling happens before any step is taken. The calls are pure: nothing they return is kept."""
    n = x.shape[0]
    if batch_size is None or batch_size >= n:
        gradient(flat, x, None, False)
        return
    sizes = [batch_size] + ([n % batch_size] if n % batch_size and steps > n // batch_size else [])
    for size in sizes:
        idx = here(torch.arange(size))
        if orders == 1:
            gradient(flat, x[idx], idx, False)
        else:
            batch = idx.repeat(flat.shape[0], 1)  # [M, size], laid out as the steps' stacked indices
            gradient(flat, x[batch], batch, True)


Gradient = Callable[[Tensor, Tensor, Batch, bool], tuple[Tensor, Tensor]]


def _gradients(name: str, module: nn.Module, layout: Layout, buffers: Stacked, data_term: DataTerm,
               weight_decay: float, proximity: float, centre: Tensor | None) -> Gradient:
    """(data terms [M], gradient [M, P]) of one step as a function of (flat, inputs, batch, per_model)."""
    if name == "compiled":
        return compiled_gradient(module, layout, data_term, weight_decay, proximity, centre)

    strategies: dict[tuple[bool, int, torch.dtype, str], str] = {}  # chosen once per training and input layout
    by_hand = backprop.handles(module) and not buffers

    def eager(flat: Tensor, xb: Tensor, batch: Batch, per_model: bool) -> tuple[Tensor, Tensor]:
        key = (per_model, xb.dim(), xb.dtype, xb.device.type)
        how = strategies.get(key) or strategies.setdefault(key, stacked.chosen(module, xb, per_model))
        if by_hand and how != "vmap":  # a Linear/tanh/ReLU stack: autograd's operations without its graph
            data, grad = backprop.gradient(module, layout.views, flat, xb, batch, per_model, data_term)
        else:
            leaf = flat.detach().requires_grad_(True)
            params = layout.views(leaf)
            logits = ensemble_logits(module, {**params, **buffers}, xb, per_model=per_model, how=how)
            data = data_term(logits, batch, params)
            (grad,) = torch.autograd.grad(data.sum(), leaf)
            data = data.detach()
        if weight_decay:
            grad.add_(flat, alpha=weight_decay)
        if centre is not None:
            grad.add_(flat - centre, alpha=proximity)
        return data, grad

    return eager


def _seed_streams(seed: int, device: torch.device) -> None:
    """Seed the random streams dropout draws from on ``device``: what ``torch.manual_seed`` does for it, without
    also queueing the seeding of every CUDA device on a CPU run (torch records a stack trace for each such call
    while CUDA is not initialised, which costs more than the step of a small model)."""
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.manual_seed_all(seed)


def _train(layout: Layout, flat: Tensor, buffers: Stacked, x: Tensor, rule: UpdateRule, steps: int,
           batch_size: int | None, order_seeds: list[int], gradient: Gradient, opt: _Optimizer,
           on_step: Callable[[int, Stacked], bool | None] | None, lr_name: str, noise_seed: int | None,
           tolerate_divergence: bool) -> Stacked:
    n = x.shape[0]
    count = flat.shape[0]
    distinct = sorted(set(order_seeds))
    orders: list[Iterator[Tensor | None]] = [batch_order(n, batch_size, steps, s) for s in distinct]
    which = torch.tensor([distinct.index(s) for s in order_seeds])
    frozen = torch.zeros(count, dtype=torch.bool)  # diverged models (tolerate_divergence)
    for step in range(steps):
        if noise_seed is not None:
            _seed_streams(step_seed(noise_seed, step), flat.device)
        idx_each = [next(o) for o in orders]
        batch: Batch
        if idx_each[0] is None:
            batch = None
            data, grad = gradient(flat, x, batch, False)
        elif len(distinct) == 1:
            batch = idx_each[0]
            data, grad = gradient(flat, x[batch], batch, False)
        else:
            batch = torch.stack([i for i in idx_each if i is not None])[which]  # [M, b]
            data, grad = gradient(flat, x[batch], batch, True)
        if tolerate_divergence:
            finite = torch.isfinite(data).cpu() & torch.isfinite(grad).all(dim=1).cpu()
            if not bool(finite[~frozen].all()):
                frozen |= ~finite
                if bool(frozen.all()):
                    raise DivergenceError(f"diverged at step {step} for all {count} models (loss not finite); "
                                          f"lower {lr_name} (now {rule.lr:g})")
            if bool(frozen.any()):
                grad[frozen.to(grad.device)] = 0.0
        elif step % 100 == 0 or step == steps - 1:
            finite = torch.isfinite(data)
            if not bool(finite.all()):
                models = f" for {int((~finite).sum())} of {count} models" if count > 1 else ""
                raise DivergenceError(f"diverged at step {step}{models} (loss not finite); lower {lr_name} "
                                      f"(now {rule.lr:g})")
        opt.step(flat, grad)
        if tolerate_divergence and bool(frozen.any()):
            with torch.no_grad():
                flat[frozen.to(flat.device)] = float("nan")
        if on_step is not None and on_step(step, {**layout.views(flat), **buffers}):
            break  # the caller's monitor (early stopping) ended training
    if not tolerate_divergence and not bool(torch.isfinite(flat).all()):
        raise DivergenceError(f"parameters became non-finite; lower {lr_name} (now {rule.lr:g})")
    return {**{k: v.clone() for k, v in layout.views(flat).items()}, **{k: b.clone() for k, b in buffers.items()}}


def activations_per_example(module: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Layer outputs kept per example: pre- and post-activation of every Linear and convolution layer (the
    count inflang's model specs state analytically)."""
    count = 0

    def hook(layer: nn.Module, args: object, output: Tensor) -> None:
        nonlocal count
        count += 2 * output[0].numel()

    layers = [m for m in module.modules() if isinstance(m, nn.Linear | nn.Conv1d | nn.Conv2d)]
    handles = [m.register_forward_hook(hook) for m in layers]
    was_training = module.training
    try:
        module.eval()  # a training-mode pass would overwrite BatchNorm's running statistics with this zero input
        with torch.no_grad():
            dtype = next(module.parameters()).dtype
            module(torch.zeros(1, *input_shape, dtype=dtype))
    finally:
        module.train(was_training)
        for h in handles:
            h.remove()
    return count


def multiply_adds(module: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-adds of one example's forward pass through every Linear and convolution layer (a Linear on a
    sequence counts once per token; a training step costs about 6 batch multiply_adds FLOPs: 2 forward, 4
    backward)."""
    total = 0

    def hook(layer: nn.Module, args: object, output: Tensor) -> None:
        nonlocal total
        if isinstance(layer, nn.Linear):
            total += output[0].numel() * layer.in_features
        elif isinstance(layer, nn.Conv1d | nn.Conv2d):
            kernel = math.prod(layer.kernel_size)
            total += output[0].numel() * layer.in_channels * kernel // layer.groups

    layers = [m for m in module.modules() if isinstance(m, nn.Linear | nn.Conv1d | nn.Conv2d)]
    handles = [m.register_forward_hook(hook) for m in layers]
    was_training = module.training
    try:
        module.eval()
        with torch.no_grad():
            dtype = next(module.parameters()).dtype
            module(torch.zeros(1, *input_shape, dtype=dtype, device=next(module.parameters()).device))
    finally:
        module.train(was_training)
        for h in handles:
            h.remove()
    return total


def chunk_size(module: nn.Module, input_shape: tuple[int, ...], batch: int, dtype: torch.dtype, budget: int | None,
               cap: int = 1024) -> int:
    """How many models to train at once within ``budget`` bytes (see ``inflang.compiling.cost``)."""
    n_params = sum(p.numel() for p in module.parameters())
    itemsize = torch.empty((), dtype=dtype).element_size()
    member = member_bytes(n_params, activations_per_example(module, input_shape), batch, itemsize)
    return models_per_chunk(member, budget, cap)
