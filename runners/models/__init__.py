"""Architectures: a registry from ``model.arch`` to a builder of an ``nn.Module``.

A new architecture is one module here plus one entry in ``BUILDERS`` (and its spec in inflang/spec/model.py).
Modules are returned in eval mode; training switches dropout on for its own steps only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from runners.custom import build_custom
from runners.device import current
from runners.models.cnn import build_cnn, build_lenet
from runners.models.mlp import build_logreg, build_mlp
from runners.models.resnet import build_resnet, build_vgg
from runners.models.transformer import build_transformer

BUILDERS: dict[str, Callable[[Any, tuple[int, ...], int], nn.Module]] = {
    "logreg": build_logreg,
    "mlp": build_mlp,
    "cnn": build_cnn,
    "lenet": build_lenet,
    "vgg": build_vgg,
    "resnet": build_resnet,
    "transformer": build_transformer,
    "custom": build_custom,
}


def build(spec: Any, shape: tuple[int, ...] | int, classes: int, seed: int, dtype: torch.dtype) -> nn.Module:
    """The architecture for inputs of ``shape`` with its default initialisation drawn from ``seed``
    (the global RNG is left untouched)."""
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    device = current()  # initialised on the CPU, so every device starts from the same weights
    with torch.device("cpu"), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = BUILDERS[spec.arch](spec, shape, classes)
    return module.to(device=device, dtype=dtype).eval()
