"""Random draws in training and retraining: seeded per step, shared by every model of an ensemble (common
random numbers), independent of the ensemble's size; and each training set of its own (mean_over: kept)."""

from __future__ import annotations

import torch
from torch import nn

from inflang.spec import TrainingSpec
from runners.ensemble import UpdateRule, stack, train_ensemble, weighted_cross_entropy
from runners.train import train


def _problem(dropout: float = 0.3):
    torch.manual_seed(0)
    x = torch.randn(40, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (40,))
    layers: list[nn.Module] = [nn.Linear(4, 8), nn.Tanh()]
    if dropout:
        layers.append(nn.Dropout(dropout))
    module = nn.Sequential(*layers, nn.Linear(8, 3)).double().eval()
    start = {k: v.detach().clone() for k, v in module.named_parameters()}
    return module, start, x, y


def _run(module, start, x, y, weights, noise_seed=5, batch_size=None, normalise="all", steps=60):
    rule = UpdateRule("adam", 0.05, 0.01)
    return train_ensemble(module, stack(start, weights.shape[0]), x, rule, steps, batch_size, [1] * weights.shape[0],
                          weighted_cross_entropy(y, weights, normalise=normalise), noise_seed=noise_seed)


def test_dropout_masks_depend_on_seed_and_step_only():
    module, start, x, y = _problem()
    w = torch.ones(5, 40, dtype=torch.float64)
    w[torch.arange(1, 5), torch.arange(1, 5)] = 0.0
    torch.manual_seed(123)  # the caller's random state neither matters nor changes
    state = torch.get_rng_state()
    big = _run(module, start, x, y, w, batch_size=10)
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(999)
    again = _run(module, start, x, y, w, batch_size=10)
    small = _run(module, start, x, y, w[[0, 3]], batch_size=10)  # another ensemble size, another chunking
    for k in big:
        assert torch.equal(big[k], again[k])
        assert torch.equal(big[k][[0, 3]], small[k])
    other = _run(module, start, x, y, w, noise_seed=6, batch_size=10)
    assert not torch.equal(big["0.weight"], other["0.weight"])
    module[2].p = 0.0  # the masks were drawn: without them the result differs
    plain = _run(module, start, x, y, w, batch_size=10)
    assert not torch.equal(big["0.weight"], plain["0.weight"])


def test_a_model_that_removes_nothing_equals_its_control_under_dropout():
    """With masks shared, a "removal" that removes nothing changes nothing: actual is exactly 0, where
    independent masks per model would make it mask noise."""
    module, start, x, y = _problem()
    out = _run(module, start, x, y, torch.ones(3, 40, dtype=torch.float64))
    for v in out.values():
        assert torch.equal(v[0], v[1]) and torch.equal(v[0], v[2])


def test_scratch_retraining_replays_training_with_its_masks():
    module, start, x, y = _problem()
    spec = TrainingSpec(optimizer="adam", lr=0.05, epochs=20, batch_size=10, weight_decay=0.01)
    trained = train(module, x, y, spec, order_seed=3, noise_seed=11)
    from runners.train import training_rule

    replay = train_ensemble(module, stack(trained.init, 4), x, training_rule(spec, 40), spec.total_steps(40), 10,
                            [3] * 4, weighted_cross_entropy(y, torch.ones(4, 40, dtype=torch.float64)),
                            noise_seed=11)
    for k, v in trained.params.items():
        assert all(torch.equal(replay[k][m], v) for m in range(4))


def test_kept_normalisation_is_training_on_the_kept_points_alone():
    """mean_over: kept, full batch: a model that keeps a subset S follows exactly the model trained on S
    by itself (loss averaged over |S|)."""
    module, start, x, y = _problem(dropout=0.0)
    keep = torch.zeros(40, dtype=torch.bool)
    keep[::3] = True
    w = torch.stack([torch.ones(40), keep.double()]).double()
    both = _run(module, start, x, y, w, normalise="kept")
    alone = _run(module, start, x[keep], y[keep], torch.ones(1, int(keep.sum()), dtype=torch.float64))
    for k in alone:
        assert torch.allclose(both[k][1], alone[k][0], atol=1e-12, rtol=0)
    n_fixed = _run(module, start, x, y, w, normalise="all")  # the loo convention differs: weight 0, n kept
    assert not torch.allclose(n_fixed["0.weight"][1], alone["0.weight"][0], atol=1e-6)


def test_tolerated_divergence_freezes_only_the_diverging_model():
    module, start, x, y = _problem(dropout=0.0)
    w = torch.ones(3, 40, dtype=torch.float64)
    w[2, 0] = float("inf")  # this model's loss is not finite from the first step
    rule = UpdateRule("sgd", 0.5, 0.01)
    out = train_ensemble(module, stack(start, 3), x, rule, 30, None, [0] * 3, weighted_cross_entropy(y, w),
                         tolerate_divergence=True)
    clean = train_ensemble(module, stack(start, 2), x, rule, 30, None, [0] * 2, weighted_cross_entropy(y, w[:2]))
    for k in clean:
        assert torch.equal(out[k][:2], clean[k])
        assert torch.isnan(out[k][2]).all()
