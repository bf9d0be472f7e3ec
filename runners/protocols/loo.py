"""Leave-one-out ground truth on the batched retraining engine (Koh & Liang 2017; Basu et al. 2021 Sec. 4).

For removal i and selected test point t: actual[t, i] = mean over repeats r of
measure_t(theta_{-i, r}) - measure_t(theta_{control, r}), where theta_{-i, r} is retrained with w_i = 0 and
theta_{control, r} is the same retraining (same start, same batch order) with every w_j = 1.
``start: optimum`` warm-starts from the trained parameters with a fresh optimizer state;
``start: scratch`` repeats the original training from the same initialisation and batch order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from inflang.spec import LooProtocol, TrainingSpec
from runners.ensemble import UpdateRule, chunk_size, stack, train_ensemble, weighted_cross_entropy
from runners.objective import MEASURES


@dataclass(frozen=True)
class RetrainSetup:
    """What the protocol needs from the trained model: start points and the original order seed."""

    trained: dict[str, Tensor]
    init: dict[str, Tensor]
    order_seed: int
    repeat_seeds: list[int]  # order seed of repeat r (repeat 0 uses the original order)


def update_rule(spec: LooProtocol, training: TrainingSpec) -> UpdateRule:
    return UpdateRule(optimizer=spec.optimizer or training.optimizer, lr=spec.lr or training.lr,
                      weight_decay=training.weight_decay, momentum=training.momentum)


def leave_one_out(spec: LooProtocol, training: TrainingSpec, module: nn.Module, setup: RetrainSetup,
                  x_train: Tensor, y_train: Tensor, x_test: Tensor, y_test: Tensor,
                  removals: list[np.ndarray], memory_budget: int | None = None,
                  progress: Callable[[int], None] | None = None) -> Tensor:
    """actual [T, n_train] (NaN where not removed for that test point); progress(k) counts retrained models."""
    n = x_train.shape[0]
    T = x_test.shape[0]
    union = np.unique(np.concatenate(removals)) if removals else np.array([], dtype=np.int64)
    original_steps = training.total_steps(n)
    steps = spec.retrain_steps(original_steps)
    rule = update_rule(spec, training)
    start = setup.trained if spec.start == "optimum" else setup.init
    batch = training.batch_size or n
    size = spec.batch if isinstance(spec.batch, int) else chunk_size(module, batch, x_train.dtype, memory_budget)
    per_chunk = max(1, size - 1)  # one slot per chunk is the control
    measure_fn = MEASURES[spec.measure]
    evaluate = vmap(lambda p: functional_call(module, p, (x_test,)))
    total = torch.zeros(len(union), T, dtype=torch.float64)
    for seed in setup.repeat_seeds:
        for lo in range(0, max(len(union), 1), per_chunk):
            chunk = union[lo:lo + per_chunk]
            weights = torch.ones(len(chunk) + 1, n, dtype=x_train.dtype)
            weights[torch.arange(1, len(chunk) + 1), torch.as_tensor(chunk, dtype=torch.long)] = 0.0
            final = train_ensemble(module, stack(start, len(chunk) + 1), x_train, rule, steps, training.batch_size,
                                   [seed] * (len(chunk) + 1), weighted_cross_entropy(y_train, weights))
            with torch.no_grad():
                measured = measure_fn(evaluate(final), y_test.expand(len(chunk) + 1, T)).to(torch.float64)
            total[lo:lo + len(chunk)] += measured[1:] - measured[0]
            if progress is not None:
                progress(len(chunk) + 1)
    mean = total / len(setup.repeat_seeds)
    actual = torch.full((T, n), float("nan"), dtype=torch.float64)
    column = {int(i): j for j, i in enumerate(union)}
    for t, rows in enumerate(removals):
        for i in rows:
            actual[t, int(i)] = mean[column[int(i)], t]
    return actual
