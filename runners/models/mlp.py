"""Fully connected models: logistic regression (no hidden layer) and the MLP of Basu et al. 2021 (Sec. 5.1)."""

from __future__ import annotations

from torch import nn

from inflang.spec import LogregModel, MlpModel

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "selu": nn.SELU,
    "sigmoid": nn.Sigmoid,
}


def build_logreg(spec: LogregModel, features: int, classes: int) -> nn.Module:
    return nn.Sequential(nn.Linear(features, classes))


def build_mlp(spec: MlpModel, features: int, classes: int) -> nn.Module:
    layers: list[nn.Module] = []
    width_in = features
    for _ in range(spec.depth):
        layers += [nn.Linear(width_in, spec.width), ACTIVATIONS[spec.activation]()]
        width_in = spec.width
    layers.append(nn.Linear(width_in, classes))
    return nn.Sequential(*layers)
