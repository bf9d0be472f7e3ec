"""``model:`` -- the architecture, discriminated by ``arch``.

A new architecture is one model here plus one module in ``runners/models``.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from inflang.spec.base import Spec

Activation = Literal["tanh", "relu", "gelu", "selu", "sigmoid"]


class LogregModel(Spec):
    """Multinomial logistic regression: logits = W x + b (convex with weight decay > 0)."""

    arch: Literal["logreg"]

    def n_params(self, features: int, classes: int) -> int:
        return features * classes + classes

    def activations_per_example(self, features: int, classes: int) -> int:
        """Layer outputs kept for backward per example (pre- and post-activation)."""
        return 2 * classes


class MlpModel(Spec):
    """Fully connected network: ``depth`` hidden layers of ``width`` units, then a linear output layer."""

    arch: Literal["mlp"]
    depth: int = Field(2, ge=1, le=64, description="number of hidden layers")
    width: int = Field(16, ge=1, le=65536, description="units per hidden layer")
    activation: Activation = Field("tanh", description="tanh | relu | gelu | selu | sigmoid")

    def n_params(self, features: int, classes: int) -> int:
        sizes = [features] + [self.width] * self.depth + [classes]
        return sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:], strict=False))

    def activations_per_example(self, features: int, classes: int) -> int:
        """Layer outputs kept for backward per example (pre- and post-activation)."""
        return 2 * (self.depth * self.width + classes)


ModelSpec = Annotated[LogregModel | MlpModel, Field(discriminator="arch")]
