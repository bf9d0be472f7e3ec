"""Forward passes of M models of one plain layer stack at once, without ``vmap``: the stack engine.

``vmap`` batches a convolution over models by folding the models into the channels of one grouped
convolution (groups = M), which oneDNN runs far below the machine's matmul peak on the small images of
influence studies (``benchmarks/retrain.py``), and it adds Python work to every layer of every step, which
is most of a small MLP's step. For an ``nn.Sequential`` of convolutions, Linear, pooling, flatten and
elementwise activation layers (inflang's ``cnn``, ``lenet``, ``mlp`` and ``logreg``, or a study's own stack of
those; ``supports``), this module computes the same function, logits [M, b, classes] for stacked
parameters, each Linear layer one batched matmul over models, with each convolution done one of these ways
(``STRATEGIES``):

- ``grouped``: vmap's own rule, the models folded into the channels of one grouped convolution;
- ``channels_last``: the same on channels-last inputs (oneDNN's preferred layout);
- ``loop``: one ordinary convolution per model (M library calls per layer);
- ``im2col``: activations travel batch-last, [(M,) C, *spatial, b]; the patches [M, C k, L b] (L output
  positions, k kernel positions) are stacked from k strided slices of the zero-padded input, whose rows are
  b contiguous numbers, and one batched matmul over models gives out[m, o, (l, i)] = sum_j W[m, o, j]
  patch[m, j, (l, i)] + b[m, o], already in the next layer's layout; a Linear layer is W_m @ h_m the same way;
- ``matmul``: ``im2col``, except that a layer whose input has at most ``DENSE_RATIO`` times as many positions
  as its kernel (the last, smallest feature maps) multiplies by its convolution written out as a dense matrix
  T_m [O L_out, C L_in], built exactly (each entry a weight or zero) from a fixed 0/1 placement; its extra
  multiplications by zero cost less than gathering patches.

A layer whose input every model shares (the first, on a full batch or a shared minibatch) reads it through a
stride-0 batch, so each model's products are computed exactly as in an ensemble of one. In float64 a model's
numbers do not depend on the ensemble's size (tested, so chunking changes no bits, where the loss's exp and log
meet each model's logits in whole vector registers: docs/language.md; in float32 torch's elementwise kernels
already break that, with or without this module). tanh is computed as 2 sigmoid(2x) - 1 (``_Tanh``): the same
function, whose CPU kernel is vectorised where torch's tanh is not (README, "Speed of the ground truth";
within 2e-7 of it in float32 and 4e-16 in float64). Elementwise functions that round (tanh in every dtype;
sigmoid, gelu, selu, ... in float64; not relu) run model by model on each model's own slab of activations, so
that which of a model's elements fall in a vector kernel's scalar tail, which rounds differently, does not
depend on the ensemble's size, or on the whole ensemble at once where that gives the same bits
(``_aligned``). In float32 the others run on the whole ensemble (a layer at a time per model made a float32
GELU step several times slower), so there a model's last bits can depend on the ensemble's size, as the docs
say.

Which strategy runs is fixed per dtype and device (``STRATEGY``, the fastest measured by
``benchmarks/retrain.py``), never by timing. Inside ``torch.compile`` (the compiled engine) convolutions go
through vmap: inductor writes these small batched matmuls as slow loops.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules import module as module_hooks
from torch.nn.utils import parametrize

STRATEGIES = ("vmap", "grouped", "channels_last", "loop", "im2col", "matmul")
# measured with benchmarks/retrain.py --convolutions on the 2-core machine (README, "Retraining engine")
STRATEGY: dict[tuple[str, torch.dtype], str] = {
    ("cpu", torch.float32): "matmul", ("cpu", torch.float64): "matmul",
}
_forced: str | None = None  # benchmarks: measure every strategy side by side

_EXACT = (nn.ReLU, nn.Identity, nn.LeakyReLU)  # elementwise layers whose vector and scalar code round alike
_ELEMENTWISE = (nn.ReLU, nn.Tanh, nn.Sigmoid, nn.GELU, nn.SELU, nn.ELU, nn.LeakyReLU, nn.Softplus, nn.SiLU, nn.Identity)
DENSE_RATIO = 2  # matmul: a layer goes dense when its input positions are at most this many times its kernel's
_POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)


@contextmanager
def strategy(name: str) -> Iterator[None]:
    """Run every convolution of the ensembles inside with ``name`` (one of STRATEGIES; vmap: not this module)."""
    global _forced
    if name not in STRATEGIES:
        raise ValueError(f"convolution strategy '{name}' is not one of {', '.join(STRATEGIES)}")
    before, _forced = _forced, name
    try:
        yield
    finally:
        _forced = before


def _plain_conv(layer: nn.Module) -> bool:
    return bool(type(layer) in (nn.Conv1d, nn.Conv2d) and layer.groups == 1 and layer.padding_mode == "zeros"
                and not isinstance(layer.padding, str))


def _plain(layer: nn.Module) -> bool:
    """Exactly a torch layer (no subclass, whose forward may differ), without hooks or parametrizations, which
    this module's own arithmetic would skip."""
    hooks = (layer._forward_hooks, layer._forward_pre_hooks, layer._backward_hooks, layer._backward_pre_hooks)
    return not any(hooks) and not parametrize.is_parametrized(layer)


def supports(module: nn.Module) -> bool:
    """Whether ``module`` is a stack this module computes: exactly an nn.Sequential (no buffers, hooks or
    parametrizations) of convolutions (ungrouped, numeric zero padding) and pooling, then one Flatten(1, -1),
    then Linear layers, with elementwise activations anywhere; or, without convolutions, Linear layers and
    elementwise activations after at most a leading Flatten(1, -1) (inflang's ``mlp`` and ``logreg``). At least
    one layer has parameters. Each layer is its own instance: a layer used twice (one ``nn.Tanh()`` at two
    places) is one child to ``named_children``, which this module's passes walk."""
    if type(module) is not nn.Sequential or any(True for _ in module.buffers()) or not _plain(module):
        return False
    if len({id(layer) for layer in module}) != len(module):
        return False
    if any((module_hooks._global_forward_hooks, module_hooks._global_forward_pre_hooks,
            module_hooks._global_backward_hooks, module_hooks._global_backward_pre_hooks)):
        return False
    convolutional = any(_plain_conv(m) for m in module)
    flat = False  # convolutions and pooling before the Flatten, Linear layers after it
    for layer in module:
        if not _plain(layer):
            return False
        if type(layer) is nn.Flatten:
            if flat or (layer.start_dim, layer.end_dim) != (1, -1):
                return False
            flat = True
        elif _plain_conv(layer) or type(layer) in _POOLS:
            if flat or getattr(layer, "return_indices", False):
                return False
        elif type(layer) is nn.Linear:
            if not flat and convolutional:
                return False
            flat = True  # no Flatten may follow a Linear
        elif type(layer) not in _ELEMENTWISE:
            return False
    return any(_plain_conv(m) or type(m) is nn.Linear for m in module)


def linear_only(module: nn.Module) -> bool:
    """A supported stack without convolutions (``mlp``, ``logreg``): Linear layers and elementwise functions."""
    return supports(module) and not any(_plain_conv(m) for m in module.children())


def chosen(module: nn.Module, x: Tensor, per_model: bool = False) -> str:
    """The strategy an ensemble of ``module`` on inputs like ``x`` ([b, ...], or [M, b, ...] with ``per_model``)
    runs with ('vmap' when not supported). A stack of Linear layers without a Flatten needs flat examples."""
    if not supports(module) or torch.compiler.is_compiling():  # inductor writes these small matmuls as slow loops
        return "vmap"
    if not any(type(m) in (nn.Flatten, nn.Conv1d, nn.Conv2d) for m in module.children()) and x.dim() != 2 + per_model:
        return "vmap"  # nn.Linear on [b, ..., features]: its leading dimensions are not this module's layout
    if _forced is not None:
        return _forced
    return STRATEGY.get((x.device.type, x.dtype), "vmap")


def forward(module: nn.Sequential, params: dict[str, Tensor], x: Tensor, per_model: bool, how: str) -> Tensor:
    """Logits [M, b, C] of the stacked parameters ``params`` ([M, ...] each, named as the module's) on shared
    inputs x [b, ...] or, with ``per_model``, on x [M, b, ...]; ``how`` is a convolution strategy.

    Activations travel as [b, ...] while shared by every model, then as [M, b, ...]. Under ``im2col`` they
    travel batch-last, [(M,) C, *spatial, b], from the first convolution on: there a kernel offset's patch is
    a strided slice whose rows are b contiguous numbers, and every layer is a matmul that reads and writes
    that layout without a transpose."""
    count = next(iter(params.values())).shape[0]
    h, layout = x, ("model" if per_model else "shared")  # shared [b, ...] | model [M, b, ...] | last [(M,) ..., b]
    shared = not per_model
    for name, layer in module.named_children():
        weight, bias = params.get(f"{name}.weight"), params.get(f"{name}.bias")
        if how in ("im2col", "matmul") and layout != "last" and isinstance(layer, nn.Conv1d | nn.Conv2d):
            h, layout = h.movedim(0 if shared else 1, -1), "last"
        if isinstance(layer, nn.Conv1d | nn.Conv2d):
            assert weight is not None
            if layout == "last" and how == "matmul" and math.prod(h.shape[-1 - len(layer.kernel_size):-1]) <= (
                    DENSE_RATIO * math.prod(layer.kernel_size)):
                h = _dense(layer, h, weight, bias, shared)
            elif layout == "last":
                h = _im2col(layer, h, weight, bias, shared)
            else:
                h, layout = _conv(layer, h, weight, bias, shared, how), "model"
            shared = False
        elif isinstance(layer, nn.Linear):
            assert weight is not None
            if layout == "last":  # [M, in, b] -> [M, out, b]
                h = _linear_last(h, weight, bias, shared)
            else:
                h, layout = linear(h, weight, bias, shared), "model"
            shared = False
        elif isinstance(layer, nn.Flatten):  # [(M,) C, *spatial, b] or [(M,) b, C, *spatial]: C * spatial
            lead = 0 if shared else 1
            h = h.flatten(lead, -2) if layout == "last" else h.flatten(lead + 1)
        elif isinstance(layer, _POOLS):  # every channel of every example and model on its own
            if layout == "last":
                lead = 1 if shared else 2  # (M,) C
                moved = h.movedim(-1, 0)  # [b, (M,) C, *spatial]
                pooled = layer(moved.flatten(0, lead).unsqueeze(1)).squeeze(1)
                h = pooled.unflatten(0, moved.shape[:lead + 1]).movedim(0, -1)
            else:
                h = layer(h) if shared else layer(h.flatten(0, 1)).unflatten(0, (count, -1))
        elif isinstance(layer, nn.Tanh) and h.device.type == "cpu":  # torch's CPU tanh is scalar code
            h = _tanh(h, not shared)
        elif shared or type(layer) in _EXACT or h.dtype != torch.float64 or (h.is_contiguous() and _aligned(h)):
            h = layer(h)
        else:  # a rounding elementwise function in float64, model by model (module docstring)
            h = torch.stack([layer(slab) for slab in h.unbind(0)])
    if layout == "last":
        h = h.movedim(-1, 0 if shared else 1)
    if shared:  # a stack without parameters: every model's logits are the same
        h = h.unsqueeze(0).expand(count, *h.shape)
    return h


def linear(h: Tensor, weight: Tensor, bias: Tensor | None, shared: bool) -> Tensor:
    """[M, b, out] = h W_m^T + b_m for h [b, in] (shared) or [M, b, in]."""
    if shared:  # a stride-0 batch: each model's product computed as in an ensemble of one
        h = h.expand(weight.shape[0], *h.shape)
    out = torch.matmul(h, weight.transpose(1, 2))
    return out if bias is None else out + bias.unsqueeze(1)


def _conv(layer: nn.Conv1d | nn.Conv2d, h: Tensor, weight: Tensor, bias: Tensor | None, shared: bool,
          how: str) -> Tensor:
    """[M, b, O, *spatial] from h [b, C, *spatial] (shared) or [M, b, C, *spatial], by library convolutions."""
    conv = F.conv1d if isinstance(layer, nn.Conv1d) else F.conv2d
    count, out_channels = weight.shape[0], weight.shape[1]
    options: dict[str, Any] = {"stride": layer.stride, "padding": layer.padding, "dilation": layer.dilation}
    if shared:  # one convolution with every model's filters: [b, M O, *spatial]
        flat_bias = None if bias is None else bias.reshape(-1)
        out = conv(h, weight.reshape(count * out_channels, *weight.shape[2:]), flat_bias, **options)
        return out.unflatten(1, (count, out_channels)).transpose(0, 1)
    if how == "loop":
        return torch.stack([conv(h[m], weight[m], None if bias is None else bias[m], **options)
                            for m in range(count)])
    # grouped (vmap's own rule): the models folded into the channels
    b, channels = h.shape[1], h.shape[2]
    folded = h.transpose(0, 1).reshape(b, count * channels, *h.shape[3:])
    if how == "channels_last" and folded.dim() == 4:
        folded = folded.contiguous(memory_format=torch.channels_last)
    flat_bias = None if bias is None else bias.reshape(-1)
    out = conv(folded, weight.reshape(count * out_channels, *weight.shape[2:]), flat_bias, groups=count, **options)
    return out.unflatten(1, (count, out_channels)).transpose(0, 1)


def _linear_last(h: Tensor, weight: Tensor, bias: Tensor | None, shared: bool) -> Tensor:
    """[M, out, b] = W_m h + b_m for batch-last h [in, b] (shared) or [M, in, b]."""
    out = torch.matmul(weight, h)
    return out if bias is None else out + bias.unsqueeze(2)


def _im2col(layer: nn.Conv1d | nn.Conv2d, h: Tensor, weight: Tensor, bias: Tensor | None, shared: bool) -> Tensor:
    """[M, O, *out_spatial, b] from batch-last h [C, *spatial, b] (shared) or [M, C, *spatial, b]: the patches
    [.., C k, L b] stacked from the k strided slices of the zero-padded input (one per kernel offset), then
    one matmul, out[m, o, (l, i)] = sum_j W[m, o, j] patch[m, j, (l, i)] + b[m, o]; with a shared input a
    single [M O, C k] @ [C k, L b] product serves every model."""
    dims = len(layer.kernel_size)
    lead = h.dim() - dims - 1  # dimensions before the spatial ones: (M,) C
    padding = [int(p) for p in layer.padding]
    if any(padding):
        h = F.pad(h, [0, 0] + [q for p in reversed(padding) for q in (p, p)])
    spatial = [(h.shape[lead + d] - layer.dilation[d] * (layer.kernel_size[d] - 1) - 1) // layer.stride[d] + 1
               for d in range(dims)]
    offsets = [[o * layer.dilation[d] for o in range(layer.kernel_size[d])] for d in range(dims)]
    patches = _Patches.apply(h, lead, tuple(itertools.product(*offsets)), tuple(layer.stride), tuple(spatial))
    b = h.shape[-1]
    positions = math.prod(spatial) * b
    count, out_channels = weight.shape[0], weight.shape[1]
    # shared: the same patches for every model, read through a stride-0 batch (the products stay per model)
    columns = patches.reshape(-1, positions).expand(count, -1, -1) if shared else patches.reshape(count, -1, positions)
    out = torch.bmm(weight.reshape(count, out_channels, -1), columns)
    if bias is not None:
        out = out + bias.unsqueeze(2)
    return out.view(count, out_channels, *spatial, b)


def _dense(layer: nn.Conv1d | nn.Conv2d, h: Tensor, weight: Tensor, bias: Tensor | None, shared: bool) -> Tensor:
    """[M, O, *out_spatial, b] as one matmul by each model's convolution written out as a dense matrix,
    T_m [O L_out, C L_in] with T[m, (o, l), (c, l')] = W[m, o, c, k] where input position l' is output
    position l's kernel offset k (else 0): T = W [M O C, K] @ P [K, L_out L_in] for the fixed 0/1 placement P,
    so every entry is exactly a weight or zero. For small feature maps (at most DENSE_RATIO times the kernel's
    positions) the extra multiply-adds by zero cost less than gathering patches."""
    dims = len(layer.kernel_size)
    lead = h.dim() - dims - 1
    spatial_in = tuple(h.shape[lead:lead + dims])
    place = _placement(tuple(layer.kernel_size), tuple(layer.stride), tuple(int(p) for p in layer.padding),
                       tuple(layer.dilation), spatial_in, h.dtype, h.device)
    count, out_channels, channels = weight.shape[0], weight.shape[1], weight.shape[2]
    spatial_out = place.shape[1:1 + dims]
    positions_out, positions_in = math.prod(spatial_out), math.prod(spatial_in)
    dense = (weight.reshape(-1, place.shape[0]) @ place.reshape(place.shape[0], -1))  # [M O C, L_out L_in]
    dense = dense.view(count, out_channels, channels, positions_out, positions_in).transpose(2, 3)
    dense = dense.reshape(count, out_channels * positions_out, channels * positions_in)
    b = h.shape[-1]
    columns = h.reshape(channels * positions_in, b).expand(count, -1, -1) if shared else (
        h.reshape(count, channels * positions_in, b))
    out = torch.bmm(dense, columns).view(count, out_channels, positions_out, b)
    if bias is not None:
        out = out + bias[:, :, None, None]
    return out.view(count, out_channels, *spatial_out, b)


def _placement(kernel: tuple[int, ...], stride: tuple[int, ...], padding: tuple[int, ...],
               dilation: tuple[int, ...], spatial: tuple[int, ...], dtype: torch.dtype,
               device: torch.device) -> Tensor:
    """P [K, *out_spatial, L_in]: P[k, l, l'] = 1 where kernel offset k of output position l reads input
    position l' (a read of the zero padding reads nothing). Tensor operations only, so torch.compile folds it."""
    out = [(n + 2 * p - d * (k - 1) - 1) // s + 1
           for n, p, d, k, s in zip(spatial, padding, dilation, kernel, stride, strict=True)]
    dims = len(kernel)
    offsets = torch.cartesian_prod(*[torch.arange(k, device=device) for k in kernel]).reshape(-1, dims)
    positions = torch.cartesian_prod(*[torch.arange(n, device=device) for n in out]).reshape(-1, dims)
    source = (positions[None] * torch.tensor(stride, device=device) + offsets[:, None] * torch.tensor(
        dilation, device=device) - torch.tensor(padding, device=device))  # [K, L_out, dims]
    inside = ((source >= 0) & (source < torch.tensor(spatial, device=device))).all(-1)
    strides = torch.tensor([math.prod(spatial[d + 1:]) for d in range(dims)], device=device)
    flat = (source * strides).sum(-1)
    place = (flat[..., None] == torch.arange(math.prod(spatial), device=device)) & inside[..., None]
    return place.to(dtype).reshape(offsets.shape[0], *out, math.prod(spatial))


def _window(lead: int, offset: tuple[int, ...], stride: tuple[int, ...], spatial: tuple[int, ...]) -> tuple[slice, ...]:
    return (*[slice(None)] * lead,
            *[slice(o, o + s * (n - 1) + 1, s) for o, s, n in zip(offset, stride, spatial, strict=True)])


class _Patches(torch.autograd.Function):
    """The k strided slices of h stacked after its channel axis, [..., C, k, *out_spatial, b]; the backward
    adds each slice's gradient into one buffer (autograd's own would allocate a zero input per slice)."""

    @staticmethod
    def forward(h: Tensor, lead: int, offsets: tuple[tuple[int, ...], ...], stride: tuple[int, ...],
                spatial: tuple[int, ...]) -> Tensor:
        return torch.stack([h[_window(lead, o, stride, spatial)] for o in offsets], dim=lead)

    @staticmethod
    def setup_context(ctx: object, inputs: tuple[object, ...], output: Tensor) -> None:
        h, lead, offsets, stride, spatial = inputs
        ctx.shape, ctx.lead, ctx.offsets, ctx.stride, ctx.spatial = (  # type: ignore[attr-defined]
            h.shape, lead, offsets, stride, spatial)  # type: ignore[attr-defined]

    @staticmethod
    def backward(ctx: object, grad: Tensor) -> tuple[Tensor | None, ...]:
        c: object = ctx
        out = grad.new_zeros(c.shape)  # type: ignore[attr-defined]
        for k, o in enumerate(c.offsets):  # type: ignore[attr-defined]
            out[_window(c.lead, o, c.stride, c.spatial)] += grad.select(c.lead, k)  # type: ignore[attr-defined]
        return out, None, None, None, None


ALIGNMENT = 64  # elements: a multiple of every CPU vector loop's stride (2 x 16 float32 or 2 x 8 float64 lanes)


def _aligned(h: Tensor) -> bool:
    """Whether a rounding elementwise function may run on the whole ensemble [M, ...] at once and still give each
    model the bits it gets alone: each model's slab is a multiple of ALIGNMENT elements, so torch's vector
    loop, run in one thread, meets every model's elements in the same lanes as on the slab alone, with no
    scalar tail inside the ensemble."""
    return h.shape[0] > 0 and h[0].numel() % ALIGNMENT == 0 and torch.get_num_threads() == 1


class _Tanh(torch.autograd.Function):
    """tanh(x) = 2 sigmoid(2x) - 1, the same function as torch.tanh, whose CPU kernel is scalar code where the
    sigmoid's is vectorised (README, "Speed of the ground truth"). The sigmoid runs
    once per model on its own slab (``per_model``), so that which of a model's elements fall in the vector
    kernel's scalar tail (which rounds differently) does not depend on the ensemble's size; 2x and -1 are exact
    or correctly rounded either way. The backward is torch's own, grad (1 - tanh^2)."""

    @staticmethod
    def forward(x: Tensor, per_model: bool) -> Tensor:
        out = (x * 2).contiguous()  # a model's slab contiguous whatever the layout (grouped outputs are not)
        for slab in (out.unbind(0) if per_model and not _aligned(out) else (out,)):
            slab.sigmoid_()
        return out.mul_(2).sub_(1)

    @staticmethod
    def setup_context(ctx: object, inputs: tuple[object, ...], output: Tensor) -> None:
        ctx.save_for_backward(output)  # type: ignore[attr-defined]

    @staticmethod
    def backward(ctx: object, grad: Tensor) -> tuple[Tensor, None]:
        (out,) = ctx.saved_tensors  # type: ignore[attr-defined]
        return torch.ops.aten.tanh_backward(grad, out), None


class _TanhOutsideTransforms(torch.autograd.Function):
    """``_Tanh`` for calls outside torch.func transforms: the same arithmetic, without ``setup_context``, whose
    presence makes every ``apply`` bind its arguments through ``inspect.signature`` (a sizeable share of a
    one-model step of a small MLP)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, per_model: bool) -> Tensor:
        out = _Tanh.forward(x, per_model)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return _Tanh.backward(ctx, grad)


_transforms_active = getattr(torch._C, "_are_functorch_transforms_active", lambda: True)


def tanh_value(x: Tensor, per_model: bool) -> Tensor:
    """tanh as the stack engine computes it (2 sigmoid(2x) - 1, per model's slab), outside autograd: the value
    that ``runners.backprop`` saves for torch's tanh backward."""
    return _Tanh.forward(x, per_model)


def _tanh(x: Tensor, per_model: bool) -> Tensor:
    function = _Tanh if _transforms_active() else _TanhOutsideTransforms
    return function.apply(x, per_model)
