"""The gradient of a stack of Linear layers and tanh/ReLU activations, back-propagated by hand.

For an ensemble of M models with stacked parameters (``runners.stacked``), layer l computes
z_l = h_{l-1} W_l^T + b_l and h_l = f(z_l). Given g = dD/dz_L of the data term D (by hand for the weighted
cross-entropy, ``runners.ensemble.WeightedCrossEntropy``; by autograd on D alone for any other term),

    dD/dW_l = g_l^T h_{l-1},   dD/db_l = sum_b g_l,   g_{l-1} = f'(z_{l-1}) * (g_l W_l),

per model (batched matmuls over the model axis, so a model's numbers do not depend on the ensemble's size),
with f' from torch's own backward kernels (``tanh_backward(g, tanh z)``, ``threshold_backward(g, relu z,
0)``). These are the sums autograd forms for ``stacked.forward``'s graph (equal to rounding; tested), without
recording and walking the graph, which was most of a small MLP's eager step.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from runners import stacked

Views = Callable[[Tensor], dict[str, Tensor]]
Term = Callable[[Tensor, "Tensor | None", dict[str, Tensor]], Tensor]

_LAYERS = (nn.Linear, nn.Tanh, nn.ReLU, nn.Identity)  # layers whose backward this module writes out


def handles(module: nn.Module) -> bool:
    """Whether ``module`` is a Linear stack (``stacked.linear_only``) of Linear, Tanh, ReLU and Identity layers
    after at most a leading Flatten, each layer a distinct instance (the stack engine's own rule)."""
    if not stacked.linear_only(module):
        return False
    layers = list(module)  # type: ignore[call-overload]
    if layers and type(layers[0]) is nn.Flatten:
        layers = layers[1:]
    return any(type(layer) is nn.Linear for layer in layers) and all(type(layer) in _LAYERS for layer in layers)


@torch.no_grad()
def gradient(module: nn.Module, views: Views, flat: Tensor, x: Tensor, batch: Tensor | None,
             per_model: bool, data_term: Term) -> tuple[Tensor, Tensor]:
    """(data terms [M], d sum_m D_m / d flat [M, P]) for the stacked parameters ``flat`` on inputs x [b, ...]
    (shared) or [M, b, ...] (``per_model``); ``views`` maps a flat buffer to its named parameter views.
    A data term that reads the parameters itself (the PBRF's removed point) adds its own gradient, by autograd.
    The first Linear layer's weight gradient is (h^T g)^T whether its input is shared or per model, and every
    later one's g^T h, so a model's numbers do not depend on whether its batch was shared."""
    params = views(flat)
    h, shared = x, not per_model
    saved: list[tuple[str, str, Tensor, bool]] = []  # (kind, layer name, its input or output, input shared)
    for name, layer in module.named_children():
        if type(layer) is nn.Linear:
            saved.append(("linear", name, h, shared))
            h, shared = stacked.linear(h, params[f"{name}.weight"], params.get(f"{name}.bias"), shared), False
        elif type(layer) is nn.Flatten:
            h = h.flatten(1 if shared else 2)
        elif type(layer) is nn.Tanh and h.device.type == "cpu":
            h = stacked.tanh_value(h, not shared)
            saved.append(("tanh", name, h, shared))
        else:  # ReLU, Identity: exact elementwise functions, the same bits on any slab
            h = layer(h)
            saved.append((type(layer).__name__.lower(), name, h, shared))
    own: Tensor | None = None
    by_hand = getattr(data_term, "value_and_gradient", None)
    if by_hand is not None:  # a term that gives its own gradient in the logits (runners.ensemble's)
        data, g = by_hand(h, batch)
    else:
        logits = h.detach().requires_grad_(True)  # a leaf of its own: h may be a saved activation
        leaf = flat.detach().requires_grad_(True)
        with torch.enable_grad():
            data = data_term(logits, batch, views(leaf))
            found, own = torch.autograd.grad(data.sum(), (logits, leaf), allow_unused=True)
        g = torch.zeros_like(logits) if found is None else found
    grad = torch.empty_like(flat)
    out = views(grad)
    first = next(i for i, s in enumerate(saved) if s[0] == "linear")
    for index in range(len(saved) - 1, first - 1, -1):
        kind, name, value, was_shared = saved[index]
        if kind == "tanh":
            g = torch.ops.aten.tanh_backward(g, value)
        elif kind == "relu":
            g = torch.ops.aten.threshold_backward(g, value, 0)
        elif kind == "linear":
            weight = params[f"{name}.weight"]
            if index == first:  # [M, in, b] @ [M, b, out], the input through a stride-0 batch when shared
                inputs = value.expand(weight.shape[0], *value.shape) if was_shared else value
                out[f"{name}.weight"].copy_(torch.bmm(inputs.transpose(1, 2), g).transpose(1, 2))
            else:  # [M, out, b] @ [M, b, in]: already in W's layout (faster for few outputs)
                out[f"{name}.weight"].copy_(torch.bmm(g.transpose(1, 2), value))
            if f"{name}.bias" in out:
                out[f"{name}.bias"].copy_(g.sum(1))
            if index > first:  # the first Linear layer's input needs no gradient
                g = torch.bmm(g, weight)
    if own is not None:
        grad.add_(own)
    return data.detach(), grad
