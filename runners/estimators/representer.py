"""Representer points (Yeh, Kim, Yen & Ravikumar 2018) on the last linear layer.

At a stationary point of (1/n) sum_i loss_i + (weight_decay/2) ||W||^2 the last layer's weights are
W = sum_i alpha_i f_i^T with alpha_i = -(1/(weight_decay n)) dloss_i/dlogits_i and f_i the layer's input, so the
test logits decompose as sum_i alpha_i (f_i . f_test). Removing point i takes its share, alpha_i (f_i . f_test),
out of the test logits. For ``measure: test_loss`` the score is Yeh et al.'s representer value, the share in
the true-class logit, alpha_i[y_test] (f_i . f_test): positive when removing the point lowers the true-class
logit, i.e. raises the loss (LANGUAGE.md's sign). For ``measure: margin`` it is the change of the margin
when that share is taken out, -(alpha_i[y_test] - alpha_i[c]) (f_i . f_test), c the test point's runner-up
class (the largest other logit). Ranks only.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from inflang.spec import RepresenterEstimator
from runners.errors import TaskFailure
from runners.estimators.common import EstimatorInputs


def _features(module: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """(inputs of the last nn.Linear, logits) for x."""
    last = [m for m in module.modules() if isinstance(m, nn.Linear)][-1]
    seen: list[Tensor] = []
    handle = last.register_forward_hook(lambda layer, args, output: seen.append(args[0].detach()))
    try:
        with torch.no_grad():
            logits = module(x)
    finally:
        handle.remove()
    return seen[0].flatten(1).to(torch.float64), logits.to(torch.float64)


def representer_scores(spec: RepresenterEstimator, inputs: EstimatorInputs) -> Tensor:
    if inputs.weight_decay <= 0:
        raise TaskFailure("representer points need weight_decay > 0")
    module = inputs.module
    saved = {k: v.detach().clone() for k, v in module.named_parameters()}
    with torch.no_grad():
        for k, p in module.named_parameters():
            p.copy_(inputs.params[k])
    try:
        f_train, z_train = _features(module, inputs.x_train)
        f_test, z_test = _features(module, inputs.x_test)
    finally:
        with torch.no_grad():
            for k, p in module.named_parameters():
                p.copy_(saved[k])
    classes = z_train.shape[1]
    dloss = torch.softmax(z_train, dim=1) - inputs.smoothing / classes  # minus the (smoothed) target
    dloss[torch.arange(inputs.n), inputs.y_train] -= 1.0 - inputs.smoothing
    alpha = -dloss / (inputs.weight_decay * inputs.n)  # [n, C]
    similarity = f_test @ f_train.T  # [T, n]
    if inputs.measure == "margin":
        others = z_test.clone()
        others[torch.arange(len(inputs.y_test)), inputs.y_test] = float("-inf")
        runner_up = others.argmax(dim=1)
        return -(alpha[:, inputs.y_test] - alpha[:, runner_up]).T * similarity
    return alpha[:, inputs.y_test].T * similarity
