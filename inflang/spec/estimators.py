"""``estimators:`` -- influence estimators, discriminated by ``name``.

Sign and scale (LANGUAGE.md): an estimate is the predicted change in the measured quantity when a
training point is removed, estimate(z_i, z_test) = (1/n) g_test^T (H + damping I)^-1 g_i.
A new estimator is one model here (added to ``EstimatorSpec``) plus one module in ``runners/estimators``.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from inflang.spec.base import Spec


class ExactEstimator(Spec):
    """Explicit Hessian H of the training objective at the trained parameters, inverted by eigendecomposition."""

    name: Literal["exact"]
    label: str | None = Field(None, description="name in result tables; defaults to the estimator name")
    damping: float = Field(0.001, ge=0, description="lambda in (H + lambda I)^-1")
    negative: Literal["error", "abs", "clip"] = Field(
        "error",
        description="eigenvalues of H + lambda I that are <= 0: error (fail the cell), "
        "abs (use |eigenvalue|), clip (drop those directions)",
    )
    max_params: int = Field(5000, ge=1, description="refuse models with more parameters (the Hessian is P x P)")


EstimatorSpec = Annotated[ExactEstimator, Field(discriminator="name")]
ESTIMATOR_NAMES: tuple[str, ...] = ("exact",)


def estimator_label(spec: ExactEstimator) -> str:
    return spec.label or spec.name
