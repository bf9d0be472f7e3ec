"""Convolutional models: the small CNN of Koh & Liang's MNIST experiment and LeNet-5 (see the specs)."""

from __future__ import annotations

import math

from torch import nn

from inflang.spec import CnnModel, LenetModel
from runners.models.mlp import ACTIVATIONS


def build_cnn(spec: CnnModel, shape: tuple[int, ...], classes: int) -> nn.Module:
    """Conv2d blocks on images (c, h, w) and tables (a 1 x 1 x features image), Conv1d on signals (c, length);
    the feature maps are the spec's (``CnnModel.maps``, which prices the network too)."""
    channels_in = shape[0] if len(shape) > 1 else 1
    conv: type[nn.Conv1d | nn.Conv2d] = nn.Conv1d if len(shape) == 2 else nn.Conv2d
    maps = spec.maps(shape)
    layers: list[nn.Module] = []
    for channels, *_ in maps:
        layers += [conv(channels_in, channels, spec.kernel, stride=spec.stride, padding=spec.padding),
                   ACTIVATIONS[spec.activation]()]
        channels_in = channels
    layers += [nn.Flatten(), nn.Linear(math.prod(maps[-1]), classes)]
    return nn.Sequential(*layers)


def build_lenet(spec: LenetModel, shape: tuple[int, ...], classes: int) -> nn.Module:
    channels_in, h, w = shape if len(shape) == 3 else (1, 1, shape[-1])
    act = ACTIVATIONS[spec.activation]
    return nn.Sequential(
        nn.Conv2d(channels_in, 6, 5, padding=2), act(), nn.AvgPool2d(2),
        nn.Conv2d(6, 16, 5, padding=2), act(), nn.AvgPool2d(2),
        nn.Flatten(), nn.Linear(16 * (h // 2 // 2) * (w // 2 // 2), 120), act(),
        nn.Linear(120, 84), act(), nn.Linear(84, classes))
