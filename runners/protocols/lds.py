"""The linear datamodeling score (Park, Georgiev, Ilyas, Leclerc & Madry 2023, TRAK).

Train on M random subsets S_j, each keeping a fraction alpha of the training set; the measured change is
measure(theta_{S_j}) - measure(theta_control). The prediction for S_j is the sum of the estimates of the points
it leaves out, sum_{i not in S_j} estimate_i (LANGUAGE.md's sign: each estimate is the change on removal);
Spearman over subsets per test point is the LDS (rank-equivalent to Park et al.'s sum over kept points).
Each subset's model averages its loss over the points it keeps (``mean_over: kept``): a training set of its
own, as Park et al. train them.
"""

from __future__ import annotations

import numpy as np
import torch

from inflang.spec import LdsProtocol
from runners.errors import DivergenceError, TaskFailure
from runners.protocols.common import GroundTruth, Problem, Protocol, Rankings, grouped_metrics, retrain_weighted


def choose_subsets(spec: LdsProtocol, n: int, seed: int) -> torch.Tensor:
    """removed [M, n]: True for the points subset j leaves out (each keeps round(alpha * n) points)."""
    rng = np.random.default_rng(seed)
    keep = int(round(spec.fraction * n))
    removed = torch.ones(spec.subsets, n, dtype=torch.bool)
    for j in range(spec.subsets):
        removed[j, rng.choice(n, size=keep, replace=False)] = False
    return removed


def run(spec: LdsProtocol, p: Problem, rankings: Rankings, seed: int) -> GroundTruth:
    return datamodel_score(spec, p, choose_subsets(spec, p.n, seed))


def datamodel_score(spec: LdsProtocol, p: Problem, removed: torch.Tensor) -> GroundTruth:
    """With ``nan: drop`` a subset whose retraining diverges (in any repeat) is left out and counted; the
    control diverging still fails the cell, since nothing can be measured against it."""
    try:
        retrained = retrain_weighted(spec, p, (~removed).to(torch.float64), spec.mean_over,
                                     tolerate_divergence=spec.nan == "drop")
    except DivergenceError as exc:
        if spec.nan == "drop":
            raise
        raise TaskFailure(f"lds: {exc}; lower the retraining lr, or set nan: drop to leave diverging subsets "
                          "out") from None
    per_item = retrained.effects.transpose(1, 2)  # [R, T, M]
    finite = torch.isfinite(per_item).all(dim=(0, 1))
    if not bool(finite.any()):
        raise TaskFailure(f"lds: all {spec.subsets} subsets diverged; lower the retraining lr")
    per_item[:, :, ~finite] = float("nan")
    return GroundTruth(per_repeat=per_item, members=removed, dropped=int((~finite).sum()), probes=retrained.probes,
                       floor=retrained.floor)


PROTOCOL = Protocol(run=run, metrics=grouped_metrics)
