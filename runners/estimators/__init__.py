"""Influence estimators: a registry from ``name`` to the function that computes scores.

Every estimator maps (its spec, EstimatorInputs) to scores [T, n_train]: the predicted change in the
measured quantity of each selected test point when each training point is removed (LANGUAGE.md sign and
scale), or a raw score for estimators that only rank. A new estimator is one module here plus one entry
in ``ESTIMATORS`` (and its spec in ``inflang/spec/estimators.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor

from runners.custom import custom_scores
from runners.estimators.arnoldi import arnoldi_scores
from runners.estimators.cg import cg_scores
from runners.estimators.common import EstimatorInputs
from runners.estimators.datainf import datainf_scores
from runners.estimators.ekfac import ekfac_scores
from runners.estimators.exact import exact_scores
from runners.estimators.kfac import kfac_scores
from runners.estimators.lissa import lissa_scores
from runners.estimators.representer import representer_scores
from runners.estimators.similarity import grad_cos_scores, grad_dot_scores
from runners.estimators.tracin import tracin_scores
from runners.estimators.trak import trak_scores

ESTIMATORS: dict[str, Callable[[Any, EstimatorInputs], Tensor]] = {
    "exact": exact_scores,
    "cg": cg_scores,
    "lissa": lissa_scores,
    "arnoldi": arnoldi_scores,
    "grad_dot": grad_dot_scores,
    "grad_cos": grad_cos_scores,
    "tracin": tracin_scores,
    "representer": representer_scores,
    "datainf": datainf_scores,
    "kfac": kfac_scores,
    "ekfac": ekfac_scores,
    "trak": trak_scores,
    "custom": custom_scores,
}

__all__ = ["ESTIMATORS", "EstimatorInputs"]
