"""A gated MLP with a residual block and LayerNorm: a network inflang does not ship."""

import torch
from torch import nn


class GatedMLP(nn.Module):
    def __init__(self, features: int, classes: int, width: int) -> None:
        super().__init__()
        self.embed = nn.Linear(features, width)
        self.value = nn.Linear(width, width)
        self.gate = nn.Linear(width, width)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.embed(x.flatten(1)))
        h = h + torch.tanh(self.value(h)) * torch.sigmoid(self.gate(h))  # gated residual block
        return self.head(self.norm(h))


def gated_mlp(input_shape, classes, width=16):
    """inflang calls factory(input_shape, classes, **args) and trains what it returns."""
    features = 1
    for size in input_shape:
        features *= size
    return GatedMLP(features, classes, width)
