"""The by-hand gradient of Linear/tanh/ReLU stacks (runners.backprop) against autograd through the stack engine."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from runners import backprop, stacked
from runners.ensemble import Layout, Stacked, UpdateRule, stack, train_ensemble, weighted_cross_entropy
from runners.objective import per_example_loss


def _autograd(module: nn.Module, layout: Layout, flat: Tensor, x: Tensor, batch: Tensor | None, per_model: bool,
              term) -> tuple[Tensor, Tensor]:
    leaf = flat.detach().requires_grad_(True)
    params = layout.views(leaf)
    how = stacked.chosen(module, x, per_model)
    assert how != "vmap"
    data = term(stacked.forward(module, params, x, per_model, how), batch, params)  # type: ignore[arg-type]
    (grad,) = torch.autograd.grad(data.sum(), leaf)
    return data.detach(), grad


def _ensemble(module: nn.Module, count: int, dtype: torch.dtype) -> tuple[Layout, Tensor]:
    start = stack({k: v.detach() for k, v in module.named_parameters()}, count)
    layout = Layout(start)
    g = torch.Generator().manual_seed(5)
    flat = layout.flatten(start) + 0.1 * torch.randn(count, sum(v[0].numel() for v in start.values()),
                                                     dtype=dtype, generator=g)
    return layout, flat


STACKS = {
    "tanh": lambda: nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)),
    "relu, no bias": lambda: nn.Sequential(nn.Linear(4, 6, bias=False), nn.ReLU(), nn.Linear(6, 3)),
    "identity": lambda: nn.Sequential(nn.Linear(4, 6), nn.Identity(), nn.Linear(6, 3)),
    "logreg": lambda: nn.Sequential(nn.Linear(4, 3)),
    "flatten and tanh first": lambda: nn.Sequential(nn.Tanh(), nn.Flatten(), nn.Linear(4, 6), nn.ReLU(),
                                                    nn.Linear(6, 3)),
}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", list(STACKS))
def test_the_gradient_by_hand_is_autograds(name: str, dtype: torch.dtype):
    """Full batch, a shared minibatch and a minibatch per model, with weighted and removed points."""
    torch.manual_seed(0)
    module = STACKS[name]().to(dtype)
    assert backprop.handles(module)
    count, n = 3, 12
    layout, flat = _ensemble(module, count, dtype)
    g = torch.Generator().manual_seed(1)
    shape = (n, 2, 2) if name.startswith("flatten") else (n, 4)
    x, y = torch.randn(*shape, dtype=dtype, generator=g), torch.randint(0, 3, (n,), generator=g)
    weights = torch.ones(count, n, dtype=dtype)
    weights[1, 4] = 0.0
    weights[2, 7] = 0.5
    term = weighted_cross_entropy(y, weights)
    shared = torch.tensor([0, 3, 4, 9])
    own = torch.stack([torch.randperm(n, generator=g)[:5] for _ in range(count)])
    tolerance = {"rtol": 1e-12, "atol": 1e-14} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-6}
    for xb, batch, per_model in ((x, None, False), (x[shared], shared, False), (x[own], own, True)):
        data, grad = backprop.gradient(module, layout.views, flat, xb, batch, per_model, term)
        want_data, want_grad = _autograd(module, layout, flat, xb, batch, per_model, term)
        torch.testing.assert_close(data, want_data, **tolerance)
        torch.testing.assert_close(grad, want_grad, **tolerance)
        assert not grad.requires_grad and not data.requires_grad


def test_a_term_that_reads_the_parameters_adds_its_own_gradient():
    """The PBRF's data term runs the removed point through the model itself; its gradient joins the stack's."""
    module = STACKS["tanh"]().double()
    layout, flat = _ensemble(module, 2, torch.float64)
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(8, 4, dtype=torch.float64, generator=g), torch.randint(0, 3, (8,), generator=g)
    removed = torch.randn(2, 1, 4, dtype=torch.float64, generator=g)

    def term(logits: Tensor, batch: Tensor | None, params: Stacked) -> Tensor:
        extra = stacked.forward(module, params, removed, True, "matmul")  # type: ignore[arg-type]
        own = per_example_loss(extra, y[:1].expand(2, 1))[:, 0]
        return per_example_loss(logits, y.expand(2, 8)).mean(1) - 0.3 * own

    data, grad = backprop.gradient(module, layout.views, flat, x, None, False, term)
    want_data, want_grad = _autograd(module, layout, flat, x, None, False, term)
    torch.testing.assert_close(data, want_data, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(grad, want_grad, rtol=1e-12, atol=1e-14)


def test_only_stacks_with_written_out_backward_passes_are_taken():
    assert not backprop.handles(nn.Sequential(nn.Linear(4, 5), nn.GELU(), nn.Linear(5, 3)))
    assert not backprop.handles(nn.Sequential(nn.Linear(4, 5), nn.LeakyReLU(), nn.Linear(5, 3)))
    assert not backprop.handles(nn.Sequential(nn.Conv1d(1, 2, 3), nn.Flatten(), nn.Linear(4, 3)))
    assert not backprop.handles(nn.Sequential(nn.Linear(4, 5), nn.Dropout(0.1), nn.Linear(5, 3)))
    assert backprop.handles(nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3)))


def test_training_by_hand_ends_where_autograd_training_ends(monkeypatch: pytest.MonkeyPatch):
    """200 Adam steps of an ensemble with removals, float64: the engine with and without the by-hand gradient."""
    module = STACKS["tanh"]().double()
    start = {k: v.detach() for k, v in module.named_parameters()}
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(20, 4, dtype=torch.float64, generator=g), torch.randint(0, 3, (20,), generator=g)
    weights = torch.ones(4, 20, dtype=torch.float64)
    weights[torch.arange(1, 4), torch.arange(3)] = 0.0

    def train() -> Stacked:
        return train_ensemble(module, stack(start, 4), x, UpdateRule("adam", 0.01, 0.01), 200, 8, [0, 0, 1, 1],
                              weighted_cross_entropy(y, weights), engine="eager")

    ours = train()
    monkeypatch.setattr(backprop, "handles", lambda module: False)
    reference = train()
    for k in reference:
        torch.testing.assert_close(ours[k], reference[k], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("normalise", ["all", "kept"])
@pytest.mark.parametrize("regression", [False, True])
def test_the_cross_entropys_gradient_by_hand_is_autograds(smoothing: float, normalise: str, regression: bool):
    """WeightedCrossEntropy.value_and_gradient against autograd on its own value, for every kind of batch."""
    g = torch.Generator().manual_seed(4)
    count, n, classes = 3, 10, 4
    y = torch.randn(n, classes, dtype=torch.float64, generator=g) if regression else torch.randint(
        0, classes, (n,), generator=g)
    weights = torch.rand(count, n, dtype=torch.float64, generator=g)
    weights[0, :] = 0.0  # a model that keeps nothing: "kept" divides by 1
    term = weighted_cross_entropy(y, weights, smoothing, normalise)
    own = torch.stack([torch.randperm(n, generator=g)[:4] for _ in range(count)])
    for batch, rows in ((None, n), (torch.tensor([1, 5, 6]), 3), (own, 4)):
        logits = (3 * torch.randn(count, rows, classes, dtype=torch.float64, generator=g)).requires_grad_(True)
        value = term(logits, batch, {})
        (want,) = torch.autograd.grad(value.sum(), logits)
        data, grad = term.value_and_gradient(logits.detach().clone(), batch)
        assert torch.equal(data, value.detach())  # the same operations as the term itself
        torch.testing.assert_close(grad, want, rtol=1e-12, atol=1e-15)
