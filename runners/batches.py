"""Minibatch order: a fresh seeded permutation each epoch, the same for every model given the same seed."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from runners.device import generator as seeded_generator
from runners.device import here


def batch_order(n: int, batch_size: int | None, steps: int, seed: int) -> Iterator[Tensor | None]:
    """Minibatch indices for ``steps`` steps (a fresh seeded permutation each epoch); None = full batch."""
    if batch_size is None or batch_size >= n:
        for _ in range(steps):
            yield None
        return
    generator = seeded_generator(seed)
    done = 0
    while done < steps:
        perm = here(torch.randperm(n, generator=generator, device="cpu"))
        for start in range(0, n, batch_size):
            if done == steps:
                return
            yield perm[start:start + batch_size]
            done += 1
