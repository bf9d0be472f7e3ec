"""LiSSA: stochastic estimation of inverse-Hessian-vector products (Agarwal et al. 2017; Koh & Liang 2017).

With v = g_test and H_B the objective's Hessian on a minibatch B drawn afresh each iteration:
    h_0 = v,   h_j = v + (1 - damping/scale) h_{j-1} - H_B h_{j-1} / scale,
whose fixed point is h = scale (H + damping I)^-1 v; the estimate of (H + damping I)^-1 v is h_J / scale,
averaged over ``repeats`` independent recursions. It converges when the eigenvalues of (H + damping I)/scale
lie in (0, 2); otherwise ||h|| grows without bound, which is detected and reported.
(Koh & Liang's code writes the damping as d with (H/scale + d I); their d is damping/scale here.)
"""

from __future__ import annotations

import torch
from torch import Tensor

from inflang.spec import LissaEstimator
from runners.device import generator as seeded_generator
from runners.device import here
from runners.errors import TaskFailure
from runners.estimators.common import EstimatorInputs, inverse_scores


def lissa_inverse(inputs: EstimatorInputs, spec: LissaEstimator, v: Tensor) -> Tensor:
    """Rows of (H + damping I)^-1 v by the LiSSA recursion."""
    generator = seeded_generator(inputs.seed)
    n = inputs.n
    total = torch.zeros_like(v)
    bound = 1e6 * float(v.norm()) * spec.scale + 1.0
    for _ in range(spec.repeats):
        h = v.clone()
        for j in range(spec.recursion_depth):
            batch = None
            if spec.batch_size is not None and spec.batch_size < n:
                batch = here(torch.randperm(n, generator=generator, device="cpu")[: spec.batch_size])
            h = v + (1 - spec.damping / spec.scale) * h - inputs.hvp(h, batch) / spec.scale
            if j % 50 == 0 or j == spec.recursion_depth - 1:
                size = float(h.norm())
                if not size < bound:  # also catches nan
                    raise TaskFailure(
                        f"lissa diverged at iteration {j} (||h|| = {size:.3g}); raise scale above the largest "
                        f"eigenvalue of H + damping I (scale is {spec.scale:g}) or raise damping")
        total += h / spec.scale
    return total / spec.repeats


def lissa_scores(spec: LissaEstimator, inputs: EstimatorInputs) -> Tensor:
    return inverse_scores(inputs, lambda v: lissa_inverse(inputs, spec, v))
