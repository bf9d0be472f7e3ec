"""A small transformer encoder (see ``inflang.spec.TransformerModel``), written with Linear layers so that
K-FAC and EK-FAC factor its projections, and with explicit attention matmuls so that vmap (the retraining
ensemble) and double backward (Hessian-vector products) pass through it."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from inflang.spec import TransformerModel


class Block(nn.Module):
    """h + attention(norm(h)), then h + mlp(norm(h)) (pre-norm)."""

    def __init__(self, width: int, heads: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width)
        self.query, self.key, self.value = nn.Linear(width, width), nn.Linear(width, width), nn.Linear(width, width)
        self.out = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        self.up, self.down = nn.Linear(width, hidden), nn.Linear(hidden, width)
        self.drop = nn.Dropout(dropout) if dropout else nn.Identity()

    def _split(self, z: Tensor) -> Tensor:  # [b, L, W] -> [b, heads, L, W / heads]
        b, length, width = z.shape
        return z.reshape(b, length, self.heads, width // self.heads).transpose(1, 2)

    def forward(self, h: Tensor) -> Tensor:
        z = self.norm1(h)
        q, k, v = self._split(self.query(z)), self._split(self.key(z)), self._split(self.value(z))
        weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
        attended = (weights @ v).transpose(1, 2).reshape(h.shape)
        h = h + self.drop(self.out(attended))
        return h + self.drop(self.down(nn.functional.gelu(self.up(self.norm2(h)))))


class Transformer(nn.Module):
    def __init__(self, spec: TransformerModel, tokens: int, channels: int, classes: int) -> None:
        super().__init__()
        self.tokens, self.channels = tokens, channels
        self.embed = nn.Linear(channels, spec.width)
        self.position = nn.Parameter(0.02 * torch.randn(tokens, spec.width))
        self.blocks = nn.ModuleList(Block(spec.width, spec.heads, spec.width * spec.mlp_ratio, spec.dropout)
                                    for _ in range(spec.depth))
        self.norm = nn.LayerNorm(spec.width)
        self.head = nn.Linear(spec.width, classes)

    def forward(self, x: Tensor) -> Tensor:
        h = self.embed(x.reshape(x.shape[0], self.channels, self.tokens).transpose(1, 2)) + self.position
        for block in self.blocks:
            h = block(h)
        return self.head(self.norm(h).mean(dim=1))


def build_transformer(spec: TransformerModel, shape: tuple[int, ...], classes: int) -> nn.Module:
    """Tokens as the spec counts them (``TransformerModel.tokens``): a signal (channels, length) gives length
    tokens of channels features; an image its pixels; a table one token per feature."""
    tokens, channels = spec.tokens(shape)
    return Transformer(spec, tokens, channels, classes)
