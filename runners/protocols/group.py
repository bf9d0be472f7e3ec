"""Group removal (Koh, Ang, Teo & Liang 2019, "On the accuracy of influence functions for measuring group
effects"): retrain without each group of training points; the estimate of a group is the sum of its
members' estimates (the first-order group influence)."""

from __future__ import annotations

import numpy as np
import torch

from inflang.spec import GroupProtocol, GroupSpec
from runners.protocols.common import GroundTruth, Problem, Protocol, Rankings, grouped_metrics, retrain_weighted


def choose_groups(spec: GroupSpec, y_train: torch.Tensor, scores: torch.Tensor | None, seed: int) -> torch.Tensor:
    """members [count, n]: random points (disjoint while they fit), the next `size` points of an estimator's
    ranking (mean over test points of |score| or score), or random points of one class per group."""
    n = y_train.shape[0]
    rng = np.random.default_rng(seed)
    members = torch.zeros(spec.count, n, dtype=torch.bool)
    if spec.select == "top_k":
        assert scores is not None
        strength = scores.abs().mean(0) if spec.rank_by == "abs" else scores.mean(0)
        order = torch.argsort(strength, descending=True, stable=True)
        for g in range(spec.count):
            members[g, order[g * spec.size:(g + 1) * spec.size]] = True
        return members
    if spec.select == "by_class":
        labels = y_train.cpu().numpy()
        classes = np.unique(labels)
        for g in range(spec.count):
            pool = np.flatnonzero(labels == classes[g % len(classes)])
            members[g, rng.choice(pool, size=min(spec.size, len(pool)), replace=False)] = True
        return members
    disjoint = spec.count * spec.size <= n
    perm = rng.permutation(n)
    for g in range(spec.count):
        chosen = perm[g * spec.size:(g + 1) * spec.size] if disjoint else rng.choice(n, spec.size, replace=False)
        members[g, chosen] = True
    return members


def run(spec: GroupProtocol, p: Problem, rankings: Rankings, seed: int) -> GroundTruth:
    scores = rankings.get(spec.groups.by) if spec.groups.by else None
    return group_removal(spec, p, choose_groups(spec.groups, p.y_train, scores, seed))


def group_removal(spec: GroupProtocol, p: Problem, members: torch.Tensor) -> GroundTruth:
    retrained = retrain_weighted(spec, p, (~members).to(torch.float64), spec.mean_over)
    return GroundTruth(per_repeat=retrained.effects.transpose(1, 2), members=members, probes=retrained.probes,
                       floor=retrained.floor)


PROTOCOL = Protocol(run=run, metrics=grouped_metrics)
