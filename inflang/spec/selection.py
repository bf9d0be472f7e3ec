"""``test_points:``, ``metrics:`` and ``hessian:`` -- what is evaluated and how it is scored."""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import Field, field_validator, model_validator

from inflang.spec.base import Spec

MetricName = Literal["pearson", "spearman", "kendall", "sign_agreement", "top_k_overlap"]


class TestPointSpec(Spec):
    """Which test points influence is computed for (ranked by the trained model's test loss)."""

    __test__ = False  # not a pytest class

    select: Literal["highest_loss", "median_loss", "random", "misclassified", "indices"] = Field(
        "highest_loss", description="highest_loss | median_loss | random | misclassified | indices")
    count: int = Field(5, ge=1, description="how many test points")
    indices: list[int] | None = Field(None, description="with select: indices -- dataset row ids of test points; "
                                      "they are held out of training")

    @model_validator(mode="after")
    def _indices_iff_select(self) -> TestPointSpec:
        if self.select == "indices" and not self.indices:
            raise ValueError("select: indices needs a non-empty 'indices' list")
        if self.select != "indices" and self.indices is not None:
            raise ValueError("'indices' is only used with select: indices")
        return self


class HessianSpec(Spec):
    """Diagnostics of the trained model's curvature: the training objective's Hessian's largest eigenvalues,
    its smallest, and its trace; exactly (eigendecomposition) or by Lanczos and Hutchinson for large models."""

    top_eigenvalues: int = Field(5, ge=1, le=1000, description="how many of the largest eigenvalues to store")
    method: Literal["exact", "lanczos"] = Field(
        "exact", description="exact: the full spectrum (P x P); lanczos: Ritz values from Hessian-vector products "
        "and a Hutchinson trace estimate")
    iterations: int = Field(60, ge=2, description="lanczos: Krylov steps")
    trace_samples: int = Field(64, ge=1, description="lanczos: Rademacher probes for the trace")
    max_params: int = Field(5000, ge=1, description="exact: refuse models with more parameters")


class MetricsSpec(Spec):
    """Which agreement metrics are computed; a plain list is shorthand for ``names``."""

    names: list[MetricName] = Field(default_factory=lambda: ["pearson", "spearman"],  # type: ignore[arg-type]
                                    min_length=1,
                                    description="pearson | spearman | kendall | sign_agreement | top_k_overlap")
    top_k: int = Field(10, ge=1, description="k of top_k_overlap (precision at k of the top-|estimate| items)")
    bootstrap: int = Field(1000, ge=0, le=100_000, description="item-level bootstrap replicates per test point "
                           "(the training-point noise that between_test_points claims need); 0 = none")
    resolved_only: bool = Field(False, description="score only the items whose |actual| reaches the ground "
                                "truth's resolution (ground_truth.resolution_probes); default: every item")

    @model_validator(mode="before")
    @classmethod
    def _list_shorthand(cls, value: object) -> object:
        if isinstance(value, list):
            return {"names": value}
        if not isinstance(value, dict):
            raise ValueError("must be a list of metric names, e.g. [pearson, spearman], "
                             "or a map {names: [...], top_k: k, bootstrap: B}")
        return value

    @field_validator("names")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("metrics are listed more than once")
        return value


# The editor schema accepts both spellings of ``metrics:`` (the list shorthand is converted on validation).
METRICS_JSON_SCHEMA: dict[str, object] = {
    "anyOf": [
        {"type": "array", "items": {"enum": list(get_args(MetricName))}, "minItems": 1, "uniqueItems": True},
        MetricsSpec.model_json_schema(),
    ],
    "description": "a list of metric names, or {names: [...], top_k: k, bootstrap: B}",
}
