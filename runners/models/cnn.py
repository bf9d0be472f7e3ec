"""Convolutional models: the small CNN of Koh & Liang's MNIST experiment and LeNet-5 (see the specs)."""

from __future__ import annotations

from torch import nn

from inflang.spec import CnnModel, LenetModel
from runners.models.mlp import ACTIVATIONS


def build_cnn(spec: CnnModel, shape: tuple[int, ...], classes: int) -> nn.Module:
    channels_in, h, w = shape if len(shape) == 3 else (1, 1, shape[-1])
    layers: list[nn.Module] = []
    for _ in range(spec.depth):
        layers += [nn.Conv2d(channels_in, spec.channels, 3, stride=2, padding=1), ACTIVATIONS[spec.activation]()]
        channels_in = spec.channels
        h, w = (h + 1) // 2, (w + 1) // 2
    layers += [nn.Flatten(), nn.Linear(spec.channels * h * w, classes)]
    return nn.Sequential(*layers)


def build_lenet(spec: LenetModel, shape: tuple[int, ...], classes: int) -> nn.Module:
    channels_in, h, w = shape if len(shape) == 3 else (1, 1, shape[-1])
    act = ACTIVATIONS[spec.activation]
    return nn.Sequential(
        nn.Conv2d(channels_in, 6, 5, padding=2), act(), nn.AvgPool2d(2),
        nn.Conv2d(6, 16, 5, padding=2), act(), nn.AvgPool2d(2),
        nn.Flatten(), nn.Linear(16 * (h // 2 // 2) * (w // 2 // 2), 120), act(),
        nn.Linear(120, 84), act(), nn.Linear(84, classes))
