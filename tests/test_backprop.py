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
    "flatten and tanh first": lambda: nn.Sequential(nn.Flatten(), nn.Tanh(), nn.Linear(4, 6), nn.ReLU(),
                                                    nn.Linear(6, 3)),
    "ending in tanh": lambda: nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3), nn.Tanh()),
}


TERMS = ("cross-entropy", "smoothed, kept", "regression", "a plain callable")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", list(STACKS))
@pytest.mark.parametrize("kind", TERMS)
def test_the_gradient_by_hand_is_autograds(name: str, dtype: torch.dtype, kind: str):
    """Full batch, a shared minibatch and a minibatch per model, with weighted and removed points; the weighted
    cross-entropy (its logit gradient by hand: plain, label-smoothed over the kept points, squared error for
    real targets) and a term that is a plain callable (its logit gradient by autograd)."""
    torch.manual_seed(0)
    module = STACKS[name]().to(dtype)
    assert backprop.handles(module)
    count, n = 3, 12
    layout, flat = _ensemble(module, count, dtype)
    g = torch.Generator().manual_seed(1)
    shape = (n, 2, 2) if name.startswith("flatten") else (n, 4)
    x = torch.randn(*shape, dtype=dtype, generator=g)
    y = torch.randn(n, 3, dtype=dtype, generator=g) if kind == "regression" else torch.randint(0, 3, (n,), generator=g)
    weights = torch.ones(count, n, dtype=dtype)
    weights[1, 4] = 0.0
    weights[2, 7] = 0.5
    loss = weighted_cross_entropy(y, weights, 0.1 if kind == "smoothed, kept" else 0.0,
                                  "kept" if kind == "smoothed, kept" else "all")
    term = (lambda logits, batch, params: loss(logits, batch, params)) if kind == "a plain callable" else loss
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
    assert not backprop.handles(nn.Sequential(nn.Sigmoid(), nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3)))
    assert backprop.handles(nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3)))
    act = nn.Tanh()  # one instance at two places: one child to named_children, so no stack engine at all
    reused = nn.Sequential(nn.Linear(4, 5), act, nn.Linear(5, 5), act, nn.Linear(5, 3))
    assert not stacked.supports(reused) and not backprop.handles(reused)


def test_a_model_gets_the_same_bits_from_a_shared_batch_and_its_own():
    """float64: a model trained alone (its minibatches shared, [b]) is bit for bit the same model trained beside
    one with another batch order (minibatches per model, [M, b]); 64 parameters, so every model's row of the
    flat buffer starts on a 512-byte boundary."""
    module = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 8)).double()
    start = {k: v.detach() for k, v in module.named_parameters()}
    g = torch.Generator().manual_seed(6)
    x, y = torch.randn(24, 5, dtype=torch.float64, generator=g), torch.randint(0, 8, (24,), generator=g)
    rule = UpdateRule("adam", 0.01, 0.01)

    def train(seeds: list[int]) -> Stacked:
        weights = torch.ones(len(seeds), 24, dtype=torch.float64)
        return train_ensemble(module, stack(start, len(seeds)), x, rule, 40, 8, seeds,
                              weighted_cross_entropy(y, weights), engine="eager")

    alone, beside = train([1]), train([0, 1])
    assert all(torch.equal(alone[k][0], beside[k][1]) for k in start)


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
