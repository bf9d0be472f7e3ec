"""Leave-one-out ground truth (Koh & Liang 2017; Basu et al. 2021 Sec. 4) on the batched engine.

For removal i and test point t, per repeat r: measure_t(theta_{-i,r}) - measure_t(theta_{control,r}), where
theta_{-i,r} is retrained with w_i = 0 (n unchanged) and the control is the same retraining with every
w_j = 1. ``start: optimum`` warm-starts from the trained parameters with a fresh optimizer state;
``start: scratch`` repeats the original training from the same initialisation and batch order.
"""

from __future__ import annotations

import numpy as np
import torch

from inflang.spec import LooProtocol
from runners.protocols.common import GroundTruth, Problem, retrain_weighted
from runners.selection import select_removals


def pointwise(per_item: torch.Tensor, items: np.ndarray, removals: list[np.ndarray], n: int) -> torch.Tensor:
    """[R, T, n] from per-item results [R, K, T] (item k removes point items[k]); NaN where not selected."""
    R, _, T = per_item.shape
    out = torch.full((R, T, n), float("nan"), dtype=torch.float64)
    column = {int(i): k for k, i in enumerate(items)}
    for t, rows in enumerate(removals):
        ks = torch.as_tensor([column[int(i)] for i in rows], dtype=torch.long)
        out[:, t, torch.as_tensor(rows, dtype=torch.long)] = per_item[:, ks, t]
    return out


def run(spec: LooProtocol, p: Problem, scores: torch.Tensor | None, seed: int) -> GroundTruth:
    """Select the removals (per test point) and retrain without each."""
    return leave_one_out(spec, p, select_removals(spec.removals, p.n, p.x_test.shape[0], scores, seed))


def leave_one_out(spec: LooProtocol, p: Problem, removals: list[np.ndarray]) -> GroundTruth:
    items = np.unique(np.concatenate(removals)) if removals else np.array([], dtype=np.int64)
    weights = torch.ones(len(items), p.n)
    weights[torch.arange(len(items)), torch.as_tensor(items, dtype=torch.long)] = 0.0
    return GroundTruth(per_repeat=pointwise(retrain_weighted(spec, p, weights), items, removals, p.n))
