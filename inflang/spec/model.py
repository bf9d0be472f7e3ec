"""``model:`` -- the architecture, discriminated by ``arch``.

A new architecture is one model here (added to ``ModelSpec``) plus one module in ``runners/models``.
Each model states its parameter count, the layer outputs it keeps per example and the multiply-adds of one
example's forward pass through its Linear, Conv1d and Conv2d layers, from the dataset's shape alone, so the compiler
can check sizes and price a study without building it (a training step of one model on a batch of b costs
about 6 b multiply_adds FLOPs: 2 forward, 4 backward), and whether it is ``convolutional``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Annotated, ClassVar, Literal

from pydantic import Field, PrivateAttr, model_validator

from inflang.spec.base import CodeFields, Spec
from inflang.spec.dataset import DatasetInfo

Activation = Literal["tanh", "relu", "gelu", "selu", "sigmoid"]


def _dense(sizes: list[int]) -> tuple[int, int]:
    """(parameters, layer outputs kept per example) of a chain of Linear layers with activations between."""
    params = sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:], strict=False))
    return params, 2 * sum(sizes[1:])


def _dense_macs(sizes: list[int]) -> int:
    return sum(a * b for a, b in zip(sizes[:-1], sizes[1:], strict=False))


def _chain(sizes: list[int]) -> tuple[int, int, int]:
    """``counts`` of a chain of Linear layers with activations between."""
    return (*_dense(sizes), _dense_macs(sizes))


class BuiltinModel(Spec, ABC):
    """A built-in architecture: its sizes from the dataset's shape alone (module docstring)."""

    @abstractmethod
    def counts(self, info: DatasetInfo) -> tuple[int, int, int]:
        """(parameters, layer outputs kept per example, multiply-adds of one example's forward pass)."""

    def n_params(self, info: DatasetInfo) -> int:
        return self.counts(info)[0]

    def activations_per_example(self, info: DatasetInfo) -> int:
        return self.counts(info)[1]

    def multiply_adds(self, info: DatasetInfo) -> int:
        return self.counts(info)[2]


class LogregModel(BuiltinModel):
    """Multinomial logistic regression: logits = W x + b (convex with weight decay > 0)."""

    convolutional: ClassVar[bool] = False  # has convolutions (the engine choice depends on it)
    stacked: ClassVar[bool] = True  # a plain layer stack: retrained without vmap (runners.stacked)

    arch: Literal["logreg"]

    def counts(self, info: DatasetInfo) -> tuple[int, int, int]:
        return _chain([info.features, info.classes])


class MlpModel(BuiltinModel):
    """Fully connected network: ``depth`` hidden layers of ``width`` units, then a linear output layer
    (images are flattened first). The Iris networks of Basu et al. 2021, Sec. 5.1."""

    convolutional: ClassVar[bool] = False  # has convolutions (the engine choice depends on it)

    arch: Literal["mlp"]
    depth: int = Field(2, ge=1, le=64, description="number of hidden layers")
    width: int = Field(16, ge=1, le=65536, description="units per hidden layer")
    activation: Activation = Field("tanh", description="tanh | relu | gelu | selu | sigmoid")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout after each hidden activation (training only)")

    @property
    def stacked(self) -> bool:
        """Without dropout, a plain layer stack: retrained without vmap (runners.stacked)."""
        return not self.dropout

    def sizes(self, info: DatasetInfo) -> list[int]:
        return [info.features] + [self.width] * self.depth + [info.classes]

    def counts(self, info: DatasetInfo) -> tuple[int, int, int]:
        return _chain(self.sizes(info))


def conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


class CnnModel(BuiltinModel):
    """The small convolutional network of Koh & Liang's MNIST experiment, scaled by ``channels`` and
    ``depth``: ``depth`` blocks of a ``kernel`` x ``kernel`` convolution (stride 2, ``padding``) and an
    activation, then a linear layer on the flattened feature map. On 1D signals (a dataset of shape
    (channels, length), such as mnist1d) the convolutions are 1D: with kernel 5, padding 1, 3 blocks of 25
    channels and relu it is Greydanus's (2020) MNIST-1D CNN."""

    convolutional: ClassVar[bool] = True  # has convolutions (the engine choice depends on it)
    stacked: ClassVar[bool] = True  # a plain layer stack: retrained without vmap (runners.stacked)
    late_fields: ClassVar[tuple[str, ...]] = ("kernel", "padding")

    arch: Literal["cnn"]
    depth: int = Field(2, ge=1, le=8, description="convolution blocks (each halves the image side)")
    channels: int = Field(16, ge=1, le=1024, description="channels of every convolution")
    activation: Activation = Field("tanh", description="tanh | relu | gelu | selu | sigmoid")
    kernel: int = Field(3, ge=1, le=15, description="the convolutions' kernel size")
    padding: int = Field(1, ge=0, le=7, description="the convolutions' zero padding")

    stride: ClassVar[int] = 2  # of every convolution

    def maps(self, shape: tuple[int, ...]) -> list[tuple[int, ...]]:
        """(channels, *spatial) after each block for inputs of ``shape``: (c, h, w) for images, (c, length) for
        1D signals (Conv1d), and a table's (features,) as a 1 x 1 x features image. ``runners.models.cnn``
        builds the network from these."""
        if len(shape) == 1:
            shape = (1, 1, shape[0])
        spatial = list(shape[1:])
        maps = []
        for _ in range(self.depth):
            spatial = [conv_out(size, self.kernel, self.stride, self.padding) for size in spatial]
            maps.append((self.channels, *spatial))
        return maps

    def feature_maps(self, info: DatasetInfo) -> list[tuple[int, ...]]:
        """``maps`` of the dataset's inputs."""
        return self.maps(info.shape or (info.features,))

    def _taps(self, info: DatasetInfo) -> int:
        return self.kernel ** (len(info.shape or (1, 1, 1)) - 1)  # kernel elements per input channel

    def counts(self, info: DatasetInfo) -> tuple[int, int, int]:
        maps, taps = self.feature_maps(info), self._taps(info)
        c_in = (info.shape or (1,))[0]
        params = macs = 0
        for feature_map in maps:
            params += c_in * feature_map[0] * taps + feature_map[0]
            macs += math.prod(feature_map) * c_in * taps
            c_in = feature_map[0]
        flat = math.prod(maps[-1])
        outputs = 2 * (sum(math.prod(m) for m in maps) + info.classes)
        return params + flat * info.classes + info.classes, outputs, macs + flat * info.classes


class LenetModel(BuiltinModel):
    """LeNet-5 (LeCun et al. 1998): two 5x5 convolutions (6 and 16 channels, padding 2), each followed by an
    activation and 2x2 average pooling, then fully connected layers of 120 and 84 units."""

    convolutional: ClassVar[bool] = True  # has convolutions (the engine choice depends on it)
    stacked: ClassVar[bool] = True  # a plain layer stack: retrained without vmap (runners.stacked)

    arch: Literal["lenet"]
    activation: Activation = Field("tanh", description="tanh | relu | gelu | selu | sigmoid")

    def _shapes(self, info: DatasetInfo) -> tuple[int, list[int], int]:
        c, h, w = info.shape or (1, 1, info.features)
        h1, w1 = h // 2, w // 2
        h2, w2 = h1 // 2, w1 // 2
        return c, [6 * h * w, 16 * h1 * w1], 16 * h2 * w2

    def counts(self, info: DatasetInfo) -> tuple[int, int, int]:
        c, (first, second), flat = self._shapes(info)
        params, outputs, macs = _chain([flat, 120, 84, info.classes])
        convs = (c * 6 * 25 + 6) + (6 * 16 * 25 + 16)
        return convs + params, 2 * (first + second) + outputs, first * c * 25 + second * 6 * 25 + macs




VGG_LAYERS: dict[int, list[int | str]] = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    13: [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
}


def _norm_params(norm: str, channels: int) -> int:
    return 0 if norm == "none" else 2 * channels


class VggModel(BuiltinModel):
    """VGG (Simonyan & Zisserman 2015) for 32x32 images: 3x3 convolutions with an activation (and
    ``norm``), 2x2 max pooling between stages, then one linear layer on the pooled features."""

    convolutional: ClassVar[bool] = True  # has convolutions (the engine choice depends on it)

    arch: Literal["vgg"]
    depth: Literal[11, 13, 16] = Field(11, description="11 | 13 | 16")
    width_multiplier: float = Field(1.0, gt=0, le=4, description="scales every layer's channels")
    norm: Literal["batch", "group", "none"] = Field("none", description="batch | group (up to 8 groups) | none")
    activation: Activation = Field("relu", description="tanh | relu | gelu | selu | sigmoid")

    @property
    def stacked(self) -> bool:
        """Without normalisation, a plain layer stack: retrained without vmap (runners.stacked)."""
        return self.norm == "none"

    def channels(self) -> list[int | str]:
        return [max(1, int(round(c * self.width_multiplier))) if isinstance(c, int) else c
                for c in VGG_LAYERS[self.depth]]

    def counts(self, info: DatasetInfo) -> tuple[int, int, int]:
        """(parameters, layer outputs kept per example, multiply-adds per example)."""
        c_in, h, w = info.shape or (1, 1, info.features)
        params = outputs = macs = 0
        for c in self.channels():
            if c == "M":
                h, w = h // 2, w // 2
                continue
            assert isinstance(c, int)
            params += c_in * c * 9 + c + _norm_params(self.norm, c)
            outputs += 2 * c * h * w
            macs += c_in * c * 9 * h * w
            c_in = c
        params += c_in * h * w * info.classes + info.classes
        return params, outputs + 2 * info.classes, macs + c_in * h * w * info.classes


RESNET_STAGES: dict[int, tuple[str, list[int], list[int]]] = {
    20: ("cifar", [3, 3, 3], [16, 32, 64]),
    32: ("cifar", [5, 5, 5], [16, 32, 64]),
    56: ("cifar", [9, 9, 9], [16, 32, 64]),
    18: ("imagenet", [2, 2, 2, 2], [64, 128, 256, 512]),
    50: ("imagenet", [3, 4, 6, 3], [64, 128, 256, 512]),
}


class ResnetModel(BuiltinModel):
    """Residual networks (He et al. 2016): CIFAR-style ResNet-20/32/56 (3x3 stem, three stages of basic blocks
    with 16/32/64 channels) and ImageNet-style ResNet-18 (basic blocks) and ResNet-50 (bottleneck blocks), with
    ``norm`` after every convolution, 1x1 projection shortcuts where the shape changes, global average pooling
    and a linear layer. With ``norm: batch`` every ensemble member keeps its own running statistics
    (stacked buffers), training on batch statistics and evaluating on running ones as ``nn.BatchNorm`` does."""

    convolutional: ClassVar[bool] = True  # has convolutions (the engine choice depends on it)
    stacked: ClassVar[bool] = False  # a plain layer stack (runners.stacked)

    arch: Literal["resnet"]
    depth: Literal[20, 32, 56, 18, 50] = Field(20, description="20 | 32 | 56 (CIFAR-style) | 18 | 50 (ImageNet)")
    norm: Literal["batch", "group", "none"] = Field("group", description="batch | group (up to 8 groups) | none")
    width_multiplier: float = Field(1.0, gt=0, le=4, description="scales every stage's channels")

    def stages(self) -> tuple[str, list[int], list[int]]:
        style, blocks, widths = RESNET_STAGES[self.depth]
        return style, blocks, [max(1, int(round(w * self.width_multiplier))) for w in widths]

    def counts(self, info: DatasetInfo) -> tuple[int, int, int]:
        """(parameters, layer outputs kept per example, multiply-adds per example)."""
        style, blocks, widths = self.stages()
        c_in, h, w = info.shape or (1, 1, info.features)
        params = outputs = macs = 0

        def conv(cin: int, cout: int, k: int, stride: int) -> None:
            nonlocal params, outputs, macs, h, w
            h, w = (h + stride - 1) // stride, (w + stride - 1) // stride
            params += cin * cout * k * k + _norm_params(self.norm, cout)  # convolutions without bias
            outputs += 2 * cout * h * w
            macs += cin * cout * k * k * h * w

        stem = widths[0]
        if style == "cifar":
            conv(c_in, stem, 3, 1)
        else:
            conv(c_in, stem, 7, 2)
            h, w = (h + 1) // 2, (w + 1) // 2  # 3x3 max pooling, stride 2
        c = stem
        bottleneck = self.depth == 50
        for stage, (count, width) in enumerate(zip(blocks, widths, strict=True)):
            for b in range(count):
                stride = 2 if stage > 0 and b == 0 else 1
                out = width * 4 if bottleneck else width
                h0, w0 = h, w
                if bottleneck:
                    conv(c, width, 1, 1)
                    conv(width, width, 3, stride)
                    conv(width, out, 1, 1)
                else:
                    conv(c, width, 3, stride)
                    conv(width, out, 3, 1)
                if stride != 1 or c != out:
                    h1, w1 = h, w
                    h, w = h0, w0
                    conv(c, out, 1, stride)
                    h, w = h1, w1
                c = out
        params += c * info.classes + info.classes
        return params, outputs + 2 * info.classes, macs + c * info.classes


class TransformerModel(BuiltinModel):
    """A small transformer encoder over the input's steps: a signal (channels, length) is ``length`` tokens of
    ``channels`` features (an image's pixels, a table's features one per token); each token embedded by a
    Linear layer plus a learned position embedding, then ``depth`` pre-norm blocks of multi-head
    self-attention (query, key, value and output projections as Linear layers, so K-FAC and EK-FAC factor them)
    and an MLP (``mlp_ratio`` x ``width`` hidden units, gelu), each with a residual connection; a final
    LayerNorm, mean pooling over tokens and a linear head. Dropout after the attention and MLP outputs."""

    convolutional: ClassVar[bool] = False
    stacked: ClassVar[bool] = False  # a plain layer stack (runners.stacked)

    arch: Literal["transformer"]
    width: int = Field(32, ge=2, le=4096, description="the token embedding's size")
    heads: int = Field(4, ge=1, le=64, description="attention heads (must divide width)")
    depth: int = Field(2, ge=1, le=48, description="transformer blocks")
    mlp_ratio: int = Field(2, ge=1, le=8, description="hidden units of each block's MLP, per width")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the attention and MLP outputs (training only)")

    @model_validator(mode="after")
    def _heads_divide_width(self) -> TransformerModel:
        if self.width % self.heads:
            raise ValueError(f"heads ({self.heads}) must divide width ({self.width})")
        return self

    @staticmethod
    def tokens(shape: tuple[int, ...]) -> tuple[int, int]:
        """(tokens, features per token) of inputs of ``shape``: a signal (channels, length) is length tokens of
        channels features, an image (c, h, w) h x w tokens of c, a table's (features,) one token per feature.
        ``runners.models.transformer`` builds the network from these."""
        if len(shape) == 1:
            return shape[0], 1
        return math.prod(shape[1:]), shape[0]

    def _tokens(self, info: DatasetInfo) -> tuple[int, int]:
        return self.tokens(info.shape or (info.features,))

    def _linears(self, info: DatasetInfo) -> list[tuple[int, int, int]]:
        """(tokens it runs on, in, out) of every Linear layer."""
        tokens, channels = self._tokens(info)
        w, hidden = self.width, self.width * self.mlp_ratio
        block = [(tokens, w, w)] * 4 + [(tokens, w, hidden), (tokens, hidden, w)]
        return [(tokens, channels, w)] + block * self.depth + [(1, w, info.classes)]

    def counts(self, info: DatasetInfo) -> tuple[int, int, int]:
        """Multiply-adds: the Linear layers' and the attention's two matmuls (scores and weighted values)."""
        tokens, _ = self._tokens(info)
        linears = self._linears(info)
        params = sum(i * o + o for _, i, o in linears) + 2 * self.width * (2 * self.depth + 1) + tokens * self.width
        outputs = 2 * sum(t * o for t, _, o in linears) + self.depth * self.heads * tokens * tokens
        macs = sum(t * i * o for t, i, o in linears) + self.depth * 2 * tokens * tokens * self.width
        return params, outputs, macs


@dataclass(frozen=True)
class ModelFacts:
    """What probing a custom model's factory found (``runners.custom``): its sizes, counted by hooks."""

    n_params: int
    activations: int  # layer outputs kept per example (Linear, Conv1d and Conv2d, before and after their activation)
    multiply_adds: int  # of one example's forward pass through its Linear, Conv1d and Conv2d layers
    convolutional: bool
    stacked: bool = False  # a plain layer stack, retrained without vmap (runners.stacked)
    fixed: bool = True  # no dropout and no buffers: the compiled engine may run it (runners.engine.fixed_structure)
    name: str = "the module"  # its class name
    unbatched: str | None = None  # why vmap cannot batch it over models (retraining loops over them), else None
    unbatched_examples: str | None = None  # why vmap cannot batch its per-example gradients, else None


class CustomModel(CodeFields):
    """The study's own network: ``factory`` (module:callable) is called as factory(input_shape, classes, **args)
    and returns a ``torch.nn.Module`` mapping inputs [b, *input_shape] to outputs [b, classes]. Its sizes (for
    checks and pricing) are counted from one forward pass when ``inflang plan`` or ``run`` probes it; a
    estimate: layers other than Linear, Conv1d and Conv2d are not in the FLOP count."""

    arch: Literal["custom"]
    factory: str = Field(description="module:callable building the nn.Module, e.g. my_nets:gated_mlp")
    _facts: ModelFacts | None = PrivateAttr(default=None)

    @property
    def convolutional(self) -> bool:
        return self._facts.convolutional if self._facts is not None else False

    @property
    def stacked(self) -> bool:
        return self._facts.stacked if self._facts is not None else False

    def engine_facts(self) -> dict[str, bool]:
        """What the engine choice (and a measured rate) depends on in the probed module, for a plan's workload (a
        dump of the spec leaves the probed facts out)."""
        facts = self._facts
        return {"convolutional": self.convolutional, "stacked": self.stacked,
                "fixed": facts.fixed if facts is not None else True,
                "batches": facts is None or facts.unbatched is None}

    def loops(self) -> list[str]:
        """What runs one model or one example at a time because vmap cannot batch the probed module, and why."""
        facts = self._facts
        if facts is None:
            return []
        found = []
        if facts.unbatched is not None:
            found.append(f"{facts.name} cannot be batched over models ({facts.unbatched}): retraining runs its "
                         "models one at a time")
        if facts.unbatched_examples is not None:
            found.append(f"{facts.name} cannot be batched over examples ({facts.unbatched_examples}): its "
                         "per-example gradients and Hessian are taken one example (one row) at a time")
        return found

    def with_facts(self, facts: ModelFacts) -> CustomModel:
        copy = self.model_copy()
        copy._facts = facts
        return copy

    def n_params(self, info: DatasetInfo) -> int:
        return self._facts.n_params if self._facts is not None else 0

    def activations_per_example(self, info: DatasetInfo) -> int:
        return self._facts.activations if self._facts is not None else 0

    def multiply_adds(self, info: DatasetInfo) -> int:
        return self._facts.multiply_adds if self._facts is not None else 0


AnyModel = LogregModel | MlpModel | CnnModel | LenetModel | VggModel | ResnetModel | TransformerModel | CustomModel
ModelSpec = Annotated[AnyModel, Field(discriminator="arch")]
IMAGE_ARCHS = ("cnn", "lenet", "vgg", "resnet")
