"""Ground-truth protocols: a registry from ``protocol`` to the function that measures actual effects.

Each returns actual [T, n_train] with NaN where a pair was not evaluated (LANGUAGE.md: actual =
measure(retrained without) - measure(the same retraining with nothing removed)).
A new protocol is one module here plus one entry in ``PROTOCOLS``.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from runners.protocols.loo import leave_one_out

PROTOCOLS: dict[str, Callable[..., Tensor]] = {
    "loo": leave_one_out,
}

__all__ = ["PROTOCOLS"]
