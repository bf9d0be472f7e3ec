"""Logits of M models of one architecture at once, for stacked parameters: the stack engine
(``runners.stacked``) for a plain layer stack, else ``vmap`` over ``functional_call``, else one model at a time.
Below the training engines (``runners.ensemble``, ``runners.compiled``), which both call it."""

from __future__ import annotations

import weakref

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from runners import engine as engines
from runners import stacked
from runners.objective import vmap_failure

Stacked = dict[str, Tensor]

SEQUENTIAL: weakref.WeakKeyDictionary[nn.Module, str] = weakref.WeakKeyDictionary()  # modules vmap cannot batch
# (one model at a time) -> why


def ensemble_logits(module: nn.Module, params: Stacked, x: Tensor, per_model: bool = False,
                    how: str | None = None) -> Tensor:
    """Logits [M, b, C] of every model: on shared inputs x [b, d], or with ``per_model`` on x [M, b, d].
    ``params`` may hold stacked buffers too (each model's running statistics). In training mode every model
    draws the same dropout masks (common random numbers: a removal is compared with its control under the
    same noise). A module that ``vmap`` cannot batch (a study's own network with data-dependent control flow or
    in-place state) runs one model at a time, each from the same random state, recorded with the task
    (``runners.engine.looped``: its rows, the run's log and one line per run say so).
    A plain convolutional stack (``runners.stacked.supports``) runs without vmap, its convolutions as matmuls
    batched over models (``runners.stacked``); ``how``: its strategy when the caller already chose it
    (``stacked.chosen``)."""
    how = how or stacked.chosen(module, x, per_model)
    if how != "vmap":
        return stacked.forward(module, params, x, per_model, how)  # type: ignore[arg-type]
    if module not in SEQUENTIAL:
        call = vmap(lambda p, xb: functional_call(module, p, (xb,)), in_dims=(0, 0 if per_model else None),
                    randomness="same")
        try:
            return call(params, x)
        except RuntimeError as exc:
            if not vmap_failure(exc):
                raise
            SEQUENTIAL[module] = engines.first_line(exc)
    engines.looped("models", module, SEQUENTIAL[module], "retraining its models one at a time")
    count = next(iter(params.values())).shape[0]
    devices = [x.device] if x.device.type == "cuda" else []
    state = torch.get_rng_state(), [torch.cuda.get_rng_state(d) for d in devices]
    out = []
    for m in range(count):
        torch.set_rng_state(state[0])  # every model draws what the first drew: common random numbers
        for d, cuda_state in zip(devices, state[1], strict=True):
            torch.cuda.set_rng_state(cuda_state, d)
        out.append(functional_call(module, {k: v[m] for k, v in params.items()}, (x[m] if per_model else x,)))
    return torch.stack(out)
