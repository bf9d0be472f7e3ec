"""Gradient similarity, the single-checkpoint special cases of TracIn (Pruthi et al. 2020); ranks only.

grad_dot: (1/n) g_test . g_i, the influence function with H replaced by the identity (same sign convention);
grad_cos: g_test . g_i / (||g_test|| ||g_i||).
"""

from __future__ import annotations

from torch import Tensor

from inflang.spec import GradCosEstimator, GradDotEstimator
from runners.estimators.common import EstimatorInputs


def grad_dot_scores(spec: GradDotEstimator, inputs: EstimatorInputs) -> Tensor:
    return (inputs.test_gradients() @ inputs.train_gradients().T) / inputs.n


def grad_cos_scores(spec: GradCosEstimator, inputs: EstimatorInputs) -> Tensor:
    g_test, g_train = inputs.test_gradients(), inputs.train_gradients()
    norms = g_test.norm(dim=1, keepdim=True) * g_train.norm(dim=1)[None]
    return (g_test @ g_train.T) / norms.clamp_min(1e-300)
