"""TracInCP (Pruthi, Liu, Kale & Sundararajan 2020): the training run's checkpoints stand in for the path.

score(z_i, z_test) = (1/n) sum_c lr_c g_test(theta_c) . g_i(theta_c), over the checkpoints that
``training.checkpoints`` keeps (evenly spaced; the last is the trained model), lr_c the learning rate at that
step (with that step's BatchNorm running statistics, where the model has them). A positive score marks a
proponent: training on z_i lowered the test loss, so removing it raises it, the
sign of LANGUAGE.md. ``grad_dot`` is the single-checkpoint case with lr = 1. Ranks only.
"""

from __future__ import annotations

import torch
from torch import Tensor

from inflang.spec import TracinEstimator
from runners.errors import TaskFailure
from runners.estimators.common import EstimatorInputs, gradients, running_statistics
from runners.objective import FlatModel


def tracin_scores(spec: TracinEstimator, inputs: EstimatorInputs) -> Tensor:
    if not inputs.checkpoints:
        raise TaskFailure("tracin: the trained model kept no checkpoints; set training.checkpoints")
    total = torch.zeros(inputs.x_test.shape[0], inputs.n, dtype=torch.float64)
    same = inputs.measure == "test_loss" and not inputs.smoothing  # one function for both sides: one pass
    buffers = inputs.checkpoint_buffers or [{}] * len(inputs.checkpoints)
    for (lr, params), stats in zip(inputs.checkpoints, buffers, strict=True):
        with running_statistics(inputs.module, stats):
            total += lr * _products(inputs, params, same)
    return total / inputs.n


def _products(inputs: EstimatorInputs, params: dict[str, Tensor], same: bool) -> Tensor:
    """g_test . g_i at one checkpoint [T, n], in the gradients' own dtype, returned as float64."""
    flat = FlatModel(inputs.module, params)
    if same:
        both = gradients(flat, torch.cat([inputs.x_test, inputs.x_train]),
                         torch.cat([inputs.y_test, inputs.y_train]), budget=inputs.memory_budget)
        g_test, g_train = both[: inputs.x_test.shape[0]], both[inputs.x_test.shape[0]:]
    else:
        g_test = gradients(flat, inputs.x_test, inputs.y_test, inputs.measure, budget=inputs.memory_budget)
        g_train = gradients(flat, inputs.x_train, inputs.y_train, smoothing=inputs.smoothing,
                            budget=inputs.memory_budget)
    g_test, g_train = (inputs.keep_selected(g) for g in (g_test, g_train))
    return (g_test @ g_train.T).double()
