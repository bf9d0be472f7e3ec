"""The training objective and measured quantities, as pure functions of logits and parameters.

Objective (LANGUAGE.md): L(theta) = (1/n) sum_j w_j loss_j(theta) + weight_decay/2 ||theta||^2, with n the
full training-set size; on a minibatch B the data term is (1/|B|) sum_{j in B} w_j loss_j.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import Tensor, nn
from torch.func import functional_call


def per_example_loss(logits: Tensor, y: Tensor, smoothing: float = 0.0) -> Tensor:
    """Cross-entropy of each example (nats): logsumexp(z) - z_y; logits [..., C], y [...] -> [...].
    With label ``smoothing`` e the target is (1 - e) one_hot(y) + e / C: logsumexp(z) - (1 - e) z_y - e mean(z).
    Real-valued targets y [..., C] (regression) give the squared error (1/2) ||z - y||^2 instead.

    Written out (max-shifted) rather than with ``log_softmax``, which is slower on CPU for the few classes and
    many rows of an ensemble.
    """
    return loss_parts(logits, y, smoothing)[0]


def loss_parts(logits: Tensor, y: Tensor, smoothing: float = 0.0) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """(``per_example_loss``, exp(z - max z) [..., C], its sum [...]): the softmax's numerator and denominator
    the loss computed on the way, for a gradient in the logits by hand; (loss, None, None) for regression."""
    if y.is_floating_point():
        return 0.5 * ((logits - y) ** 2).sum(dim=-1), None, None
    shift = logits.detach().amax(dim=-1, keepdim=True)
    exps = (logits - shift).exp()
    total = exps.sum(dim=-1)
    lse = total.log() + shift.squeeze(-1)
    true = logits.gather(-1, y.unsqueeze(-1)).squeeze(-1)
    if smoothing:
        return lse - (1.0 - smoothing) * true - smoothing * logits.mean(dim=-1), exps, total
    return lse - true, exps, total


def margin(logits: Tensor, y: Tensor) -> Tensor:
    """True-class logit minus the largest other logit; positive when correctly classified."""
    true = logits.gather(-1, y.unsqueeze(-1)).squeeze(-1)
    others = logits.scatter(-1, y.unsqueeze(-1), float("-inf"))
    return true - others.max(dim=-1).values


def correct(logits: Tensor, y: Tensor) -> Tensor | None:
    """Whether each example is classified correctly (None for regression targets)."""
    return None if y.is_floating_point() else logits.argmax(-1) == y


def output_hessian(logits: Tensor, y: Tensor) -> Tensor:
    """d^2 loss / d logits^2 per example, [..., C, C]: diag(p) - p p^T for cross-entropy (label smoothing does
    not change it), the identity for the squared error."""
    if y.is_floating_point():
        eye = torch.eye(logits.shape[-1], dtype=logits.dtype)
        return eye.expand(*logits.shape[:-1], *eye.shape)
    p = torch.softmax(logits, dim=-1)
    return torch.diag_embed(p) - p.unsqueeze(-1) * p.unsqueeze(-2)


def bregman(z: Tensor, z_s: Tensor, squared: bool = False) -> Tensor:
    """D(z, z_s) of the cross-entropy in logit space, over the last axis; of the squared error (regression
    targets), (1/2) ||z - z_s||^2."""
    if squared:
        return 0.5 * ((z - z_s) ** 2).sum(-1)
    return torch.logsumexp(z, -1) - torch.logsumexp(z_s, -1) - (torch.softmax(z_s, -1) * (z - z_s)).sum(-1)


MEASURES = {"test_loss": per_example_loss, "margin": margin}
PARAM_CHANGE = "param_change_norm"  # a measure of the parameters, not of test points


def squared_norm(params: Iterable[Tensor]) -> Tensor:
    return sum((p * p).sum() for p in params)  # type: ignore[return-value]


def objective(module: nn.Module, params: Mapping[str, Tensor], x: Tensor, y: Tensor, weight_decay: float,
              weights: Tensor | None = None, denominator: int | None = None, smoothing: float = 0.0) -> Tensor:
    """L(theta) on (x, y): weighted mean loss over ``denominator`` (default len(x)) + weight_decay/2 ||theta||^2."""
    losses = per_example_loss(functional_call(module, dict(params), (x,)), y, smoothing)
    if weights is not None:
        losses = losses * weights
    data = losses.sum() / (denominator or x.shape[0])
    return data + 0.5 * weight_decay * squared_norm(params.values())


class FlatModel:
    """A module's parameters as one flat vector theta, and the model as a function of theta."""

    def __init__(self, module: nn.Module, params: Mapping[str, Tensor]) -> None:
        self.module = module
        self.names = list(params)
        self.shapes = [params[k].shape for k in self.names]
        self.sizes = [params[k].numel() for k in self.names]
        self.theta = torch.cat([params[k].detach().reshape(-1) for k in self.names])

    def unflatten(self, theta: Tensor) -> dict[str, Tensor]:
        """Parameters by name from theta [..., P] (leading axes, e.g. models, are kept)."""
        parts = torch.split(theta, self.sizes, dim=-1)
        return {k: p.reshape(*theta.shape[:-1], *s) for k, p, s in zip(self.names, parts, self.shapes, strict=True)}

    def logits(self, theta: Tensor, x: Tensor) -> Tensor:
        return functional_call(self.module, self.unflatten(theta), (x,))

    def objective(self, theta: Tensor, x: Tensor, y: Tensor, weight_decay: float, smoothing: float = 0.0) -> Tensor:
        data = per_example_loss(self.logits(theta, x), y, smoothing).mean()
        return data + 0.5 * weight_decay * (theta * theta).sum()


def vmap_failure(exc: BaseException) -> bool:
    """Whether an error is torch.func's refusal to batch a module (``.item()``, data-dependent control flow, an
    operation without a batching rule), as a study's own network may cause; callers then loop instead."""
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(
        word in text for word in ("vmap", "batching rule", "data-dependent", "functorch"))
