"""Influence estimators: a registry from ``name`` to the function that computes scores.

Every estimator returns scores [T, n_train]: the predicted change in the measured quantity of each selected
test point when each training point is removed (LANGUAGE.md sign and scale).
A new estimator is one module here plus one entry in ``ESTIMATORS``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor

from runners.estimators.exact import exact_scores

Estimator = Callable[..., Tensor]

ESTIMATORS: dict[str, Estimator] = {
    "exact": exact_scores,
}

# which estimators need the eigendecomposition of the objective's Hessian (a shared `curvature` task)
NEEDS_CURVATURE: dict[str, bool] = {"exact": True}


def get(name: str) -> Estimator:
    return ESTIMATORS[name]


__all__ = ["ESTIMATORS", "NEEDS_CURVATURE", "get", "Any"]
