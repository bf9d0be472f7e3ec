"""``model:`` -- the architecture, discriminated by ``arch``.

A new architecture is one model here (added to ``ModelSpec``) plus one module in ``runners/models``.
Each model states its parameter count and the layer outputs it keeps per example, from the dataset's
shape alone, so the compiler can check sizes and cost without building it.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from inflang.spec.base import Spec
from inflang.spec.dataset import DatasetInfo

Activation = Literal["tanh", "relu", "gelu", "selu", "sigmoid"]


def _dense(sizes: list[int]) -> tuple[int, int]:
    """(parameters, layer outputs kept per example) of a chain of Linear layers with activations between."""
    params = sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:], strict=False))
    return params, 2 * sum(sizes[1:])


class LogregModel(Spec):
    """Multinomial logistic regression: logits = W x + b (convex with weight decay > 0)."""

    arch: Literal["logreg"]

    def n_params(self, info: DatasetInfo) -> int:
        return _dense([info.features, info.classes])[0]

    def activations_per_example(self, info: DatasetInfo) -> int:
        return _dense([info.features, info.classes])[1]


class MlpModel(Spec):
    """Fully connected network: ``depth`` hidden layers of ``width`` units, then a linear output layer
    (images are flattened first). The Iris networks of Basu et al. 2021, Sec. 5.1."""

    arch: Literal["mlp"]
    depth: int = Field(2, ge=1, le=64, description="number of hidden layers")
    width: int = Field(16, ge=1, le=65536, description="units per hidden layer")
    activation: Activation = Field("tanh", description="tanh | relu | gelu | selu | sigmoid")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout after each hidden activation (training only)")

    def sizes(self, info: DatasetInfo) -> list[int]:
        return [info.features] + [self.width] * self.depth + [info.classes]

    def n_params(self, info: DatasetInfo) -> int:
        return _dense(self.sizes(info))[0]

    def activations_per_example(self, info: DatasetInfo) -> int:
        return _dense(self.sizes(info))[1]


def conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


class CnnModel(Spec):
    """The small convolutional network of Koh & Liang's MNIST experiment, scaled by ``channels`` and
    ``depth``: ``depth`` blocks of a 3x3 convolution (stride 2, padding 1) and an activation, then a linear
    layer on the flattened feature map."""

    arch: Literal["cnn"]
    depth: int = Field(2, ge=1, le=8, description="convolution blocks (each halves the image side)")
    channels: int = Field(16, ge=1, le=1024, description="channels of every convolution")
    activation: Activation = Field("tanh", description="tanh | relu | gelu | selu | sigmoid")

    def feature_maps(self, info: DatasetInfo) -> list[tuple[int, int, int]]:
        c, h, w = info.shape or (1, 1, info.features)
        maps = []
        for _ in range(self.depth):
            h, w = conv_out(h, 3, 2, 1), conv_out(w, 3, 2, 1)
            maps.append((self.channels, h, w))
        return maps

    def n_params(self, info: DatasetInfo) -> int:
        c_in = (info.shape or (1,))[0]
        convs = 0
        for c_out, _, _ in self.feature_maps(info):
            convs += c_in * c_out * 9 + c_out
            c_in = c_out
        c, h, w = self.feature_maps(info)[-1]
        return convs + c * h * w * info.classes + info.classes

    def activations_per_example(self, info: DatasetInfo) -> int:
        return 2 * (sum(c * h * w for c, h, w in self.feature_maps(info)) + info.classes)


class LenetModel(Spec):
    """LeNet-5 (LeCun et al. 1998): two 5x5 convolutions (6 and 16 channels, padding 2), each followed by an
    activation and 2x2 average pooling, then fully connected layers of 120 and 84 units."""

    arch: Literal["lenet"]
    activation: Activation = Field("tanh", description="tanh | relu | gelu | selu | sigmoid")

    def _shapes(self, info: DatasetInfo) -> tuple[int, list[int], int]:
        c, h, w = info.shape or (1, 1, info.features)
        h1, w1 = h // 2, w // 2
        h2, w2 = h1 // 2, w1 // 2
        return c, [6 * h * w, 16 * h1 * w1], 16 * h2 * w2

    def n_params(self, info: DatasetInfo) -> int:
        c, _, flat = self._shapes(info)
        convs = (c * 6 * 25 + 6) + (6 * 16 * 25 + 16)
        return convs + _dense([flat, 120, 84, info.classes])[0]

    def activations_per_example(self, info: DatasetInfo) -> int:
        _, conv_maps, flat = self._shapes(info)
        return 2 * sum(conv_maps) + _dense([flat, 120, 84, info.classes])[1]


AnyModel = LogregModel | MlpModel | CnnModel | LenetModel
ModelSpec = Annotated[AnyModel, Field(discriminator="arch")]
IMAGE_ARCHS = ("cnn", "lenet")
