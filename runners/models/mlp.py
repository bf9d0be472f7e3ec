"""Fully connected models: logistic regression (no hidden layer) and the MLP of Basu et al. 2021 (Sec. 5.1).
Images are flattened first."""

from __future__ import annotations

import math

from torch import nn

from inflang.spec import LogregModel, MlpModel

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "selu": nn.SELU,
    "sigmoid": nn.Sigmoid,
}


def _inputs(shape: tuple[int, ...]) -> tuple[list[nn.Module], int]:
    return ([nn.Flatten()] if len(shape) > 1 else []), math.prod(shape)


def build_logreg(spec: LogregModel, shape: tuple[int, ...], classes: int) -> nn.Module:
    flatten, features = _inputs(shape)
    return nn.Sequential(*flatten, nn.Linear(features, classes))


def build_mlp(spec: MlpModel, shape: tuple[int, ...], classes: int) -> nn.Module:
    layers, width_in = _inputs(shape)
    for _ in range(spec.depth):
        layers += [nn.Linear(width_in, spec.width), ACTIVATIONS[spec.activation]()]
        if spec.dropout:
            layers.append(nn.Dropout(spec.dropout))
        width_in = spec.width
    layers.append(nn.Linear(width_in, classes))
    return nn.Sequential(*layers)
