"""Gradient similarity, the single-checkpoint special cases of TracIn (Pruthi et al. 2020); ranks only.

grad_dot: (1/n) g_test . g_i, the influence function with H replaced by the identity (same sign convention);
grad_cos: g_test . g_i / (||g_test|| ||g_i||).
"""

from __future__ import annotations

from torch import Tensor

from inflang.spec import GradCosEstimator, GradDotEstimator
from runners.estimators.common import EstimatorInputs


def grad_dot_scores(spec: GradDotEstimator, inputs: EstimatorInputs) -> Tensor:
    """In the model's dtype (the gradients' own precision), returned as float64."""
    return (inputs.test_gradients(native=True) @ inputs.train_gradients(native=True).T).double() / inputs.n


def grad_cos_scores(spec: GradCosEstimator, inputs: EstimatorInputs) -> Tensor:
    g_test, g_train = inputs.test_gradients(native=True), inputs.train_gradients(native=True)
    norms = g_test.norm(dim=1, keepdim=True).double() * g_train.norm(dim=1)[None].double()
    return (g_test @ g_train.T).double() / norms.clamp_min(1e-300)
