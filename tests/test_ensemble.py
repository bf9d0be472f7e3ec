"""The batched retraining engine follows a sequential torch.optim loop step for step."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from runners.batches import batch_order
from runners.ensemble import UpdateRule, chunk_size, stack, train_ensemble, weighted_cross_entropy
from runners.objective import objective


def sequential(module: nn.Module, start: dict, x, y, weights, rule: UpdateRule, steps, batch_size, seed):
    """One nn.Module and one torch.optim optimizer per model, as peers retrain."""
    results = []
    for m in range(weights.shape[0]):
        model = _copy(module, start)
        params = dict(model.named_parameters())
        if rule.optimizer == "sgd":
            opt = torch.optim.SGD(model.parameters(), lr=rule.lr, momentum=rule.momentum)
        else:
            opt = torch.optim.Adam(model.parameters(), lr=rule.lr)
        for idx in batch_order(x.shape[0], batch_size, steps, seed):
            xb, yb, wb = (x, y, weights[m]) if idx is None else (x[idx], y[idx], weights[m][idx])
            opt.zero_grad()
            objective(model, params, xb, yb, rule.weight_decay, wb).backward()
            opt.step()
        results.append({k: v.detach().clone() for k, v in params.items()})
    return results


def _copy(module: nn.Module, start: dict) -> nn.Module:
    import copy

    model = copy.deepcopy(module)
    with torch.no_grad():
        for k, p in model.named_parameters():
            p.copy_(start[k])
    return model


@pytest.mark.parametrize("optimizer,momentum", [("sgd", 0.0), ("sgd", 0.9), ("adam", 0.0)])
@pytest.mark.parametrize("batch_size", [None, 16])
def test_batched_equals_sequential(optimizer, momentum, batch_size):
    torch.manual_seed(0)
    x = torch.randn(40, 3, dtype=torch.float64)
    y = torch.randint(0, 3, (40,))
    module = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    start = {k: v.detach().clone() for k, v in module.named_parameters()}
    weights = torch.ones(4, 40, dtype=torch.float64)
    weights[1, 0] = weights[2, 7] = weights[3, 39] = 0.0
    rule = UpdateRule(optimizer=optimizer, lr=0.05, weight_decay=0.01, momentum=momentum)
    batched = train_ensemble(module, stack(start, 4), x, rule, 30, batch_size, [11] * 4,
                             weighted_cross_entropy(y, weights))
    reference = sequential(module, start, x, y, weights, rule, 30, batch_size, 11)
    for m, ref in enumerate(reference):
        for k, v in ref.items():
            assert (batched[k][m] - v).abs().max() < 1e-10


def test_models_with_their_own_batch_order():
    torch.manual_seed(1)
    x = torch.randn(30, 2, dtype=torch.float64)
    y = torch.randint(0, 2, (30,))
    module = nn.Sequential(nn.Linear(2, 2)).double()
    start = {k: v.detach().clone() for k, v in module.named_parameters()}
    rule = UpdateRule(optimizer="sgd", lr=0.1, weight_decay=0.0)
    weights = torch.ones(2, 30, dtype=torch.float64)
    batched = train_ensemble(module, stack(start, 2), x, rule, 10, 8, [1, 2], weighted_cross_entropy(y, weights))
    for m, seed in enumerate([1, 2]):
        (ref,) = sequential(module, start, x, y, weights[m:m + 1], rule, 10, 8, seed)
        assert (batched["0.weight"][m] - ref["0.weight"]).abs().max() < 1e-12


def test_chunk_size_respects_the_budget():
    module = nn.Sequential(nn.Linear(64, 100), nn.Tanh(), nn.Linear(100, 10))
    small = chunk_size(module, (64,), 128, torch.float32, budget=1 << 20)
    large = chunk_size(module, (64,), 128, torch.float32, budget=1 << 30)
    assert 1 <= small < large
    assert chunk_size(module, (64,), 128, torch.float32, budget=1) == 1
