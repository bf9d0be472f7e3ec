"""Convolutional models: the small CNN of Koh & Liang's MNIST experiment and LeNet-5 (see the specs)."""

from __future__ import annotations

from torch import nn

from inflang.spec import CnnModel, LenetModel
from runners.models.mlp import ACTIVATIONS


def build_cnn(spec: CnnModel, shape: tuple[int, ...], classes: int) -> nn.Module:
    """Conv2d blocks on images (c, h, w) and tables (a 1 x 1 x features image), Conv1d on signals (c, length)."""
    if len(shape) == 2:
        channels_in, spatial, conv = shape[0], [shape[1]], nn.Conv1d
    else:
        channels_in, h, w = shape if len(shape) == 3 else (1, 1, shape[-1])
        spatial, conv = [h, w], nn.Conv2d  # type: ignore[assignment]
    layers: list[nn.Module] = []
    for _ in range(spec.depth):
        layers += [conv(channels_in, spec.channels, spec.kernel, stride=2, padding=spec.padding),
                   ACTIVATIONS[spec.activation]()]
        channels_in = spec.channels
        spatial = [(size + 2 * spec.padding - spec.kernel) // 2 + 1 for size in spatial]
    size = spec.channels
    for s in spatial:
        size *= s
    layers += [nn.Flatten(), nn.Linear(size, classes)]
    return nn.Sequential(*layers)


def build_lenet(spec: LenetModel, shape: tuple[int, ...], classes: int) -> nn.Module:
    channels_in, h, w = shape if len(shape) == 3 else (1, 1, shape[-1])
    act = ACTIVATIONS[spec.activation]
    return nn.Sequential(
        nn.Conv2d(channels_in, 6, 5, padding=2), act(), nn.AvgPool2d(2),
        nn.Conv2d(6, 16, 5, padding=2), act(), nn.AvgPool2d(2),
        nn.Flatten(), nn.Linear(16 * (h // 2 // 2) * (w // 2 // 2), 120), act(),
        nn.Linear(120, 84), act(), nn.Linear(84, classes))
