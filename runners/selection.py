"""Which test points are explained and which training points are removed (pure, seeded)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from inflang.spec import RemovalSpec, TestPointSpec
from runners.errors import TaskFailure


def select_test_points(spec: TestPointSpec, losses: Tensor, correct: Tensor | None, test_ids: np.ndarray,
                       seed: int) -> np.ndarray:
    """Positions (into the test split) of the selected test points, from the trained model's test losses."""
    return np.ascontiguousarray(_select(spec, losses, correct, test_ids, seed), dtype=np.int64)


def _select(spec: TestPointSpec, losses: Tensor, correct: Tensor | None, test_ids: np.ndarray,
            seed: int) -> np.ndarray:
    loss = losses.detach().to(torch.float64).cpu().numpy()
    order = np.argsort(-loss, kind="stable")  # highest loss first
    count = min(spec.count, len(loss))
    if spec.select == "highest_loss":
        return order[:count]
    if spec.select == "median_loss":
        ascending = order[::-1]
        start = max(0, min(len(loss) - count, len(loss) // 2 - count // 2))
        return ascending[start:start + count]
    if spec.select == "random":
        return np.sort(np.random.default_rng(seed).choice(len(loss), size=count, replace=False))
    if spec.select == "misclassified":
        assert correct is not None, "misclassified is refused for regression at compile time"
        wrong = [int(i) for i in order if not bool(correct[i])]
        if not wrong:
            raise TaskFailure("test_points: select: misclassified, but the trained model classifies every "
                              "test point correctly; use highest_loss")
        return np.array(wrong[:count])
    position = {int(r): i for i, r in enumerate(test_ids)}
    assert spec.indices is not None
    missing = [r for r in spec.indices if r not in position]
    if missing:
        raise TaskFailure(f"test_points.indices: row ids {missing} are not in this cell's test split; "
                          "pick ids from the splits table (role = 'test')")
    return np.array([position[r] for r in spec.indices])


def select_removals(spec: RemovalSpec, n_train: int, n_test_points: int, scores: Tensor | None,
                    seed: int) -> list[np.ndarray]:
    """For each selected test point, the training positions whose removal is retrained."""
    if spec.select == "all":
        return [np.arange(n_train)] * n_test_points
    if spec.select == "random":
        chosen = np.sort(np.random.default_rng(seed).choice(n_train, size=min(spec.k, n_train), replace=False))
        return [chosen] * n_test_points
    assert scores is not None
    ranked = scores.abs() if spec.rank_by == "abs" else scores
    k = min(spec.k, n_train)
    if spec.select == "top_k":
        return [np.sort(torch.topk(ranked[t], k).indices.cpu().numpy()) for t in range(n_test_points)]
    # percentile: the k points whose rank (ascending) is closest to the percentile-th percentile
    out = []
    for t in range(n_test_points):
        order = torch.argsort(ranked[t], stable=True).cpu().numpy()
        centre = int(round(spec.percentile / 100 * (n_train - 1)))
        start = max(0, min(n_train - k, centre - k // 2))
        out.append(np.sort(order[start:start + k]))
    return out
