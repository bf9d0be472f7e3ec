"""``ground_truth:`` -- how the actual effect of a removal is measured, discriminated by ``protocol``.

actual = measure(retrained without the point) - measure(the same retraining with nothing removed):
the control run rides in the same batch, so drift from non-convergence cancels (LANGUAGE.md).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from inflang.spec.base import Spec


class RemovalSpec(Spec):
    """Which training points are removed (each one retrained without)."""

    select: Literal["all", "top_k", "random"] = Field("all", description="all | top_k | random")
    k: int = Field(40, ge=1, description="how many points for top_k (per test point) and random")
    by: str | None = Field(None, description="top_k: the label of the estimator whose ranking picks the points")
    rank_by: Literal["abs", "signed"] = Field("abs", description="top_k ranks by |estimate| or by estimate")


class LooProtocol(Spec):
    """Leave-one-out: retrain with one training point's weight set to 0 (n unchanged)."""

    protocol: Literal["loo"]
    start: Literal["optimum", "scratch"] = Field(
        "optimum", description="optimum = warm start from the trained model; scratch = same init and batch order")
    steps: int | None = Field(None, ge=1, description="retraining steps; default the original number of steps")
    fraction: float | None = Field(None, gt=0, le=10, description="retraining steps as a fraction of the original")
    optimizer: Literal["sgd", "adam"] | None = Field(
        None, description="retraining update rule; null = the training optimizer")
    lr: float | None = Field(None, gt=0, description="retraining learning rate; null = the training lr")
    removals: RemovalSpec = Field(default_factory=RemovalSpec)
    repeats: int = Field(1, ge=1, le=1000, description="retraining seeds per removal (batch order); mean is stored")
    batch: Literal["auto"] | Annotated[int, Field(ge=2)] = Field(
        "auto", description="models retrained at once (control included); auto = as many as the memory budget allows")
    measure: Literal["test_loss", "margin"] = Field(
        "test_loss", description="test_loss | margin (true-class logit minus the largest other logit)")

    @model_validator(mode="after")
    def _steps_or_fraction(self) -> LooProtocol:
        if self.steps is not None and self.fraction is not None:
            raise ValueError("give either 'steps' or 'fraction', not both")
        return self

    def retrain_steps(self, original_steps: int) -> int:
        if self.steps is not None:
            return self.steps
        if self.fraction is not None:
            return max(1, int(round(self.fraction * original_steps)))
        return original_steps


GroundTruthSpec = Annotated[LooProtocol, Field(discriminator="protocol")]
