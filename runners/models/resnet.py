"""VGG and ResNets (see their specs in inflang/spec/model.py for the layouts and citations)."""

from __future__ import annotations

from torch import Tensor, nn

from inflang.spec import ResnetModel, VggModel
from runners.models.mlp import ACTIVATIONS


def norm_layer(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":  # up to 8 groups, each of at least two channels
        groups = max([g for g in range(1, 9) if channels % g == 0 and channels // g >= 2] or [1])
        return nn.GroupNorm(groups, channels)
    return nn.Identity()


def build_vgg(spec: VggModel, shape: tuple[int, ...], classes: int) -> nn.Module:
    c_in, h, w = shape if len(shape) == 3 else (1, 1, shape[-1])
    layers: list[nn.Module] = []
    for c in spec.channels():
        if c == "M":
            layers.append(nn.MaxPool2d(2))
            h, w = h // 2, w // 2
            continue
        assert isinstance(c, int)
        layers += [nn.Conv2d(c_in, c, 3, padding=1), norm_layer(spec.norm, c), ACTIVATIONS[spec.activation]()]
        c_in = c
    layers += [nn.Flatten(), nn.Linear(c_in * h * w, classes)]
    return nn.Sequential(*layers)


class Block(nn.Module):
    """A basic (two 3x3) or bottleneck (1x1, 3x3, 1x1) residual block with a projection shortcut if needed."""

    def __init__(self, c_in: int, width: int, stride: int, norm: str, bottleneck: bool) -> None:
        super().__init__()
        out = width * 4 if bottleneck else width
        if bottleneck:
            convs = [nn.Conv2d(c_in, width, 1, bias=False), norm_layer(norm, width), nn.ReLU(),
                     nn.Conv2d(width, width, 3, stride, 1, bias=False), norm_layer(norm, width), nn.ReLU(),
                     nn.Conv2d(width, out, 1, bias=False), norm_layer(norm, out)]
        else:
            convs = [nn.Conv2d(c_in, width, 3, stride, 1, bias=False), norm_layer(norm, width), nn.ReLU(),
                     nn.Conv2d(width, out, 3, 1, 1, bias=False), norm_layer(norm, out)]
        self.body = nn.Sequential(*convs)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, out, 1, stride, bias=False), norm_layer(norm, out))
        self.act = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.body(x) + self.shortcut(x))


def build_resnet(spec: ResnetModel, shape: tuple[int, ...], classes: int) -> nn.Module:
    c_in = shape[0] if len(shape) == 3 else 1
    style, blocks, widths = spec.stages()
    stem = widths[0]
    layers: list[nn.Module]
    if style == "cifar":
        layers = [nn.Conv2d(c_in, stem, 3, 1, 1, bias=False), norm_layer(spec.norm, stem), nn.ReLU()]
    else:
        layers = [nn.Conv2d(c_in, stem, 7, 2, 3, bias=False), norm_layer(spec.norm, stem), nn.ReLU(),
                  nn.MaxPool2d(3, 2, 1)]
    c = stem
    bottleneck = spec.depth == 50
    for stage, (count, width) in enumerate(zip(blocks, widths, strict=True)):
        for b in range(count):
            layers.append(Block(c, width, 2 if stage > 0 and b == 0 else 1, spec.norm, bottleneck))
            c = width * 4 if bottleneck else width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, classes)]
    return nn.Sequential(*layers)
