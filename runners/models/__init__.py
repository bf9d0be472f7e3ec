"""Architectures: a registry from ``model.arch`` to a builder of an ``nn.Module``.

A new architecture is one module here plus one entry in ``BUILDERS``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from runners.models.mlp import build_logreg, build_mlp

BUILDERS: dict[str, Callable[[Any, int, int], nn.Module]] = {
    "logreg": build_logreg,
    "mlp": build_mlp,
}


def build(spec: Any, features: int, classes: int, seed: int, dtype: torch.dtype) -> nn.Module:
    """The architecture with its default initialisation drawn from ``seed`` (global RNG untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = BUILDERS[spec.arch](spec, features, classes)
    return module.to(dtype)
