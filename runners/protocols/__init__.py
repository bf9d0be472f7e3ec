"""Ground-truth protocols: a registry from ``protocol`` to the function that measures actual effects.

Each entry maps (spec, Problem, the ranking estimator's scores or None, seed) to a GroundTruth: per retraining
repeat, the measured change of every selected test point for every item (a training point or a group),
measure(retrained without it) - measure(the same retraining with nothing removed) (LANGUAGE.md).
A new protocol is one module here plus one entry in ``PROTOCOLS`` (and its spec in inflang/spec/protocols.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor

from runners.protocols import group, lds, loo, pbrf
from runners.protocols.common import GroundTruth, Problem, RetrainSetup

PROTOCOLS: dict[str, Callable[[Any, Problem, Tensor | None, int], GroundTruth]] = {
    "loo": loo.run,
    "pbrf": pbrf.run,
    "group": group.run,
    "lds": lds.run,
}

__all__ = ["PROTOCOLS", "GroundTruth", "Problem", "RetrainSetup"]
