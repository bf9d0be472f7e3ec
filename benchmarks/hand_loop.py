"""The 120-removal study of ``benchmarks/studies/iris120.yaml`` written as a researcher writes it without inflang:
one model, nn.Module and torch.optim, every leave-one-out retraining in a sequential loop.

Iris (stratified split of 30 test points, standardised on the training rows), an MLP of 2 tanh layers of 16,
float32, full-batch Adam (lr 0.01) for 2000 steps on mean cross-entropy + 0.01/2 ||theta||^2; exact influence
-grad L(test)^T (H + 0.001 I)^-1 grad L(train) at the 10 test points of highest loss; then, for each training
point, 1000 full-batch steps of SGD with momentum 0.9 (lr 0.01) from the trained model on the other 119
points, and the change in each test point's loss; Pearson and Spearman correlation per test point.

    python benchmarks/hand_loop.py [--removals N]   # N < 120 times N removals and scales to 120

Prints one JSON line: seconds in all (from the interpreter's start), of the retrainings, and the mean
correlations (a check that it computed what the study computes, not a comparison of bits).
"""

from __future__ import annotations

import argparse
import json
import time

START = time.perf_counter()

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from scipy.stats import pearsonr, spearmanr  # noqa: E402
from sklearn.datasets import load_iris  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402
from torch import nn  # noqa: E402
from torch.func import functional_call, hessian  # noqa: E402

WEIGHT_DECAY, DAMPING = 0.01, 0.001


def objective(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(x), y) + WEIGHT_DECAY / 2 * sum((p * p).sum() for p in model.parameters())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--removals", type=int, default=120)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    data = load_iris()
    ids = np.arange(len(data.target))
    train, test = train_test_split(ids, test_size=30, stratify=data.target, random_state=0)
    mean, sd = data.data[train].mean(0), data.data[train].std(0)
    x = torch.tensor((data.data - mean) / sd, dtype=torch.float32)
    y = torch.tensor(data.target)
    x_train, y_train, x_test, y_test = x[train], y[train], x[test], y[test]
    model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 3))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(2000):
        opt.zero_grad()
        objective(model, x_train, y_train).backward()
        opt.step()
    trained = {k: v.detach().clone() for k, v in model.named_parameters()}

    with torch.no_grad():
        test_loss = F.cross_entropy(model(x_test), y_test, reduction="none")
    chosen = torch.argsort(test_loss, descending=True)[:10]
    names = list(trained)
    shapes = [trained[k].shape for k in names]
    flat = torch.cat([trained[k].reshape(-1) for k in names])

    def as_params(theta: torch.Tensor) -> dict[str, torch.Tensor]:
        out, at = {}, 0
        for k, s in zip(names, shapes, strict=True):
            out[k] = theta[at:at + s.numel()].reshape(s)
            at += s.numel()
        return out

    def loss_at(theta: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
        logits = functional_call(model, as_params(theta), (xs,))
        return F.cross_entropy(logits, ys) + WEIGHT_DECAY / 2 * (theta * theta).sum()

    h = hessian(loss_at)(flat, x_train, y_train) + DAMPING * torch.eye(len(flat))
    h = (h + h.T) / 2
    eig, vec = torch.linalg.eigh(h)
    inverse = vec @ torch.diag(1 / eig.abs()) @ vec.T  # negative: abs, as the study's exact estimator

    def grad_of(xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
        theta = flat.clone().requires_grad_(True)
        logits = functional_call(model, as_params(theta), (xs[None],))
        (g,) = torch.autograd.grad(F.cross_entropy(logits, ys[None]), theta)
        return g

    train_grads = torch.stack([grad_of(x_train[j], y_train[j]) for j in range(len(train))])
    test_grads = torch.stack([grad_of(x_test[t], y_test[t]) for t in chosen])
    # removing point j changes the test loss by about +grad_test^T H^-1 grad_j / n
    estimate = test_grads @ inverse @ train_grads.T / len(train)

    began = time.perf_counter()
    removals = min(args.removals, len(train))
    actual = torch.zeros(len(chosen), removals)
    for j in range(removals):
        with torch.no_grad():
            for k, p in model.named_parameters():
                p.copy_(trained[k])
        keep = torch.ones(len(train), dtype=torch.bool)
        keep[j] = False
        sgd = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        for _ in range(1000):
            sgd.zero_grad()
            objective(model, x_train[keep], y_train[keep]).backward()
            sgd.step()
        with torch.no_grad():
            actual[:, j] = F.cross_entropy(model(x_test[chosen]), y_test[chosen], reduction="none") - test_loss[chosen]
    retrain = (time.perf_counter() - began) * len(train) / removals
    e, a = estimate[:, :removals].numpy(), actual.numpy()
    print(json.dumps({"seconds": time.perf_counter() - START + retrain * (1 - removals / len(train)),
                      "retrain_seconds": retrain, "removals_timed": removals,
                      "pearson": float(np.mean([pearsonr(e[t], a[t])[0] for t in range(len(a))])),
                      "spearman": float(np.mean([spearmanr(e[t], a[t])[0] for t in range(len(a))]))}))


if __name__ == "__main__":
    main()
