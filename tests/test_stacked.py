"""The stack engine (runners.stacked) against torch's own layers batched by vmap."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call, vmap

from inflang.spec import CnnModel, LenetModel, LogregModel, MlpModel, ResnetModel
from runners import stacked
from runners.ensemble import UpdateRule, stack, train_ensemble, weighted_cross_entropy
from runners.models import build

CASES = {
    "cnn 8x8 (a dense layer)": (CnnModel(arch="cnn", depth=2, channels=4), (1, 8, 8)),
    "cnn on signals (Conv1d, kernel 5)": (CnnModel(arch="cnn", depth=2, channels=3, kernel=5, padding=2), (2, 20)),
    "lenet (pooling)": (LenetModel(arch="lenet"), (1, 8, 8)),
    "mlp (no convolution, inputs shared by the models)": (MlpModel(arch="mlp", depth=2, width=6), (4,)),
    "mlp on images (a leading Flatten), relu": (MlpModel(arch="mlp", depth=1, width=5, activation="relu"), (1, 3, 3)),
    "logistic regression": (LogregModel(arch="logreg"), (7,)),
}
STRIDED = nn.Sequential(nn.Conv2d(2, 3, 3, stride=1, padding=2, dilation=2), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(3, 2, (2, 3), stride=(1, 2), bias=False), nn.Tanh(), nn.Flatten(),
                        nn.Linear(2 * 3 * 1, 3))


def _stacked_params(module: nn.Module, count: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: v.detach().unsqueeze(0) + 0.2 * torch.randn(count, *v.shape, dtype=v.dtype, generator=g)
            for k, v in module.named_parameters()}


def _logits_and_grads(fn, params: dict[str, torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Logits and the gradient of sum(logits^3): products only, which torch's vector and scalar code round
    alike (sin or exp would not, and would make the bitwise comparison below test torch, not this module)."""
    leaves = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    out = fn(leaves)
    return out.detach(), list(torch.autograd.grad((out * out * out).sum(), list(leaves.values())))


def _modules() -> list[tuple[str, nn.Module, tuple[int, ...]]]:
    built = [(name, build(spec, shape, 5, 0, torch.float64), shape) for name, (spec, shape) in CASES.items()]
    return [*built, ("dilated, strided, rectangular kernel", STRIDED.double(), (2, 9, 9))]


def _ours(module: nn.Module, x: torch.Tensor, per_model: bool, how: str):
    return lambda p: stacked.forward(module, p, x, per_model, how)


def _vmap(module: nn.Module, x: torch.Tensor, per_model: bool):
    call = vmap(lambda q, xb: functional_call(module, q, (xb,)), in_dims=(0, 0 if per_model else None))
    return lambda p: call(p, x)


@pytest.mark.parametrize("how", [s for s in stacked.STRATEGIES if s != "vmap"])
def test_every_strategy_is_the_same_function_as_vmap(how: str):
    """Logits and parameter gradients of every model agree with torch's convolutions under vmap (float64),
    on inputs shared by the models and on per-model inputs."""
    for name, module, shape in _modules():
        assert stacked.supports(module), name
        params = _stacked_params(module, 3, 1)
        for per_model in (False, True):
            x = torch.randn(*((3,) if per_model else ()), 5, *shape, dtype=torch.float64,
                            generator=torch.Generator().manual_seed(5))
            ours = _logits_and_grads(_ours(module, x, per_model, how), params)
            reference = _logits_and_grads(_vmap(module, x, per_model), params)
            torch.testing.assert_close(ours[0], reference[0], rtol=1e-12, atol=1e-12, msg=f"{name}, {per_model}")
            for a, b in zip(ours[1], reference[1], strict=True):
                torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-11, msg=f"{name}, {per_model}")


def test_a_model_computes_the_same_bits_in_any_ensemble():
    """Chunking must not change a model's numbers in float64: models 2-4 of an ensemble of 7 give bit for bit
    what an ensemble of those 3 gives (logits and gradients), under the default strategy. (In float32 torch's
    elementwise kernels round a tensor's last few elements in scalar code, under vmap as here.)"""
    for name, (spec, shape) in CASES.items():
        module = build(spec, shape, 5, 0, torch.float64)
        params = _stacked_params(module, 7, 2)
        g = torch.Generator().manual_seed(4)
        for per_model in (False, True):
            x = torch.randn(*((7,) if per_model else ()), 6, *shape, dtype=torch.float64, generator=g)
            how = stacked.chosen(module, x, per_model)
            assert how != "vmap"
            whole = _logits_and_grads(_ours(module, x, per_model, how), params)
            part = _logits_and_grads(_ours(module, x[2:5] if per_model else x, per_model, how),
                                     {k: v[2:5] for k, v in params.items()})
            assert torch.equal(whole[0][2:5], part[0]), name
            assert all(torch.equal(a[2:5], b) for a, b in zip(whole[1], part[1], strict=True)), name


def test_only_plain_stacks_are_taken():
    mlp = build(MlpModel(arch="mlp", depth=1, width=4), (4,), 3, 0, torch.float32)
    assert stacked.supports(mlp)
    assert stacked.chosen(mlp, torch.zeros(5, 4)) != "vmap"
    assert stacked.chosen(mlp, torch.zeros(2, 5, 4), per_model=True) != "vmap"
    assert stacked.chosen(mlp, torch.zeros(5, 2, 4)) == "vmap"  # nn.Linear on [b, 2, features]: torch's layout
    assert not stacked.supports(build(MlpModel(arch="mlp", depth=1, width=4, dropout=0.1), (4,), 3, 0, torch.float32))
    assert not stacked.supports(nn.Sequential(nn.Linear(4, 4), nn.Flatten(), nn.Linear(4, 2)))
    assert not stacked.supports(nn.Sequential(nn.Tanh()))  # nothing with parameters
    resnet = ResnetModel(arch="resnet", depth=20, width_multiplier=0.25, norm="none")
    assert not stacked.supports(build(resnet, (3, 8, 8), 3, 0, torch.float32))
    assert not stacked.supports(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Dropout(0.1), nn.Flatten(), nn.Linear(8, 2)))
    assert not stacked.supports(nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(8, 2)))
    assert not stacked.supports(nn.Sequential(nn.Conv2d(2, 2, 3, groups=2), nn.Flatten(), nn.Linear(8, 2)))
    assert not stacked.supports(nn.Sequential(nn.Conv2d(1, 2, 3, padding="same"), nn.Flatten(), nn.Linear(8, 2)))
    assert not stacked.supports(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(0), nn.Linear(8, 2)))
    assert stacked.supports(build(CnnModel(arch="cnn", depth=2, channels=4), (1, 8, 8), 3, 0, torch.float32))
    # a Linear before the Flatten (it would act on the last axis), pooling after it, a pool returning indices
    assert not stacked.supports(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Linear(6, 2), nn.Flatten()))
    assert not stacked.supports(nn.Sequential(nn.Conv1d(1, 2, 3), nn.Flatten(), nn.MaxPool1d(2)))
    assert not stacked.supports(nn.Sequential(nn.Conv2d(1, 2, 3), nn.MaxPool2d(2, return_indices=True)))

    class Scaled(nn.Conv2d):  # a subclass's forward may differ from the convolution this module computes
        def forward(self, x):
            return 2 * super().forward(x)

    assert not stacked.supports(nn.Sequential(Scaled(1, 2, 3), nn.Flatten(), nn.Linear(8, 2)))
    with_hook = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(8, 2))
    handle = with_hook[0].register_forward_hook(lambda module, args, out: out * 2)
    assert not stacked.supports(with_hook)
    handle.remove()
    assert stacked.supports(with_hook)
    handle = nn.modules.module.register_module_forward_hook(lambda module, args, out: None)
    assert not stacked.supports(with_hook)
    handle.remove()
    nn.utils.parametrizations.weight_norm(with_hook[2])
    assert not stacked.supports(with_hook)
    with pytest.raises(ValueError, match="not one of"), stacked.strategy("fast"):
        pass


def test_tanh_through_sigmoid_is_tanh():
    x = torch.linspace(-30, 30, 20001, dtype=torch.float64)
    for per_model in (False, True):
        torch.testing.assert_close(stacked._Tanh.apply(x.view(3, -1), per_model).flatten(), torch.tanh(x),
                                   rtol=0, atol=4e-16)
    x32 = x.float()
    torch.testing.assert_close(stacked._Tanh.apply(x32, False), torch.tanh(x32), rtol=0, atol=3e-7)
    leaf = torch.randn(4, 5, dtype=torch.float64, requires_grad=True, generator=torch.Generator().manual_seed(0))
    assert torch.autograd.gradcheck(lambda v: stacked._Tanh.apply(v, True), (leaf,))
    torch.testing.assert_close(torch.func.grad(lambda v: stacked._Tanh.apply(v, True).sum())(leaf.detach()),
                               1 - torch.tanh(leaf.detach()) ** 2)


def test_retraining_follows_the_vmap_engine():
    """An ensemble trained with the default strategy ends where the vmap engine ends (float64, Adam, minibatches
    in two orders)."""
    module = build(CnnModel(arch="cnn", depth=2, channels=4), (1, 8, 8), 3, 0, torch.float64)
    start = {k: v.detach().clone() for k, v in module.named_parameters()}
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(40, 1, 8, 8, dtype=torch.float64, generator=g), torch.randint(0, 3, (40,), generator=g)
    weights = torch.ones(4, 40, dtype=torch.float64)
    weights[torch.arange(1, 4), torch.arange(3)] = 0.0
    rule = UpdateRule(optimizer="adam", lr=0.01, weight_decay=0.01)

    def train() -> dict[str, torch.Tensor]:
        return train_ensemble(module, stack(start, 4), x, rule, 30, 16, [0, 0, 1, 1],
                              weighted_cross_entropy(y, weights), engine="eager")

    ours = train()
    with stacked.strategy("vmap"):
        reference = train()
    for k in reference:
        torch.testing.assert_close(ours[k], reference[k], rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("activation", ["tanh", "gelu", "sigmoid", "selu", "relu"])
def test_an_mlp_trains_to_the_same_bits_in_any_ensemble(activation: str):
    """float64: a model retrained with nothing removed in an ensemble of 3 or 7 is bit for bit the one trained
    alone (which scratch replay and chunking promise); elementwise functions that round run model by model."""
    module = build(MlpModel(arch="mlp", depth=2, width=5, activation=activation), (4,), 3, 0, torch.float64)
    x = torch.randn(10, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 3, (10,), generator=torch.Generator().manual_seed(1))
    start = {k: v.detach() for k, v in module.named_parameters()}
    rule = UpdateRule("adam", 0.01, 0.01)
    runs = {m: train_ensemble(module, stack(start, m), x, rule, 50, None, [0] * m,
                              weighted_cross_entropy(y, torch.ones(m, 10, dtype=torch.float64)), engine="eager")
            for m in (1, 3, 7)}
    assert all(torch.equal(runs[1][k][0], runs[m][k][m - 1]) for m in (3, 7) for k in start)
