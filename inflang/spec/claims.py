"""``claims:`` -- a study's hypotheses, each answered with a verdict backed by an interval (docs/language.md).

A claim names a metric (an agreement metric the study computes, a ground-truth quantity such as
``noise_ceiling_spearman``, or a model quantity such as ``hessian_top_eigenvalue``), the estimator it is
about (for agreement metrics), optionally ``where`` (swept values the claim is restricted to), and exactly
one form: ``trend`` along a swept axis, ``contrast`` between two values of an axis, ``compare`` between
two estimators, ``at_least`` / ``at_most`` a threshold, or ``between_test_points`` (how much of the
metric's spread between test points is real rather than item noise).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from inflang.metrics import lower_is_better_metric
from inflang.spec.base import Spec


class TrendSpec(Spec):
    """The metric moves in one direction along a swept axis (with every other swept value held fixed)."""

    axis: str = Field(description="a swept path, e.g. model.depth")
    direction: Literal["up", "down"] = Field(description="up: grows with the axis value; down: falls")


class ContrastSpec(Spec):
    """The metric is higher at one value of a swept axis than at another, paired on every other axis."""

    axis: str = Field(description="a swept path, e.g. training.weight_decay")
    better: Any = Field(description="the axis value claimed to give the higher metric")
    than: Any = Field(description="the axis value it is compared with")


class CompareSpec(Spec):
    """One estimator's metric is higher than another's on the same cells (paired per seed, test point and
    training point)."""

    better: str = Field(description="the label of the estimator claimed to be better")
    than: str = Field(description="the label of the estimator it is compared with")


class BetweenTestPointsSpec(Spec):
    """How much of the variance of the metric between test points is real: 1 - (item-level bootstrap variance
    of the test points' metric) / (their variance around their cell's mean), summed over the cells and
    jackknifed over the distinct test points (``inflang.results.intervals.share``); at most 1, below 0 where the test
    points vary less than item noise alone would make them."""

    at_least: float = Field(ge=0, le=1, description="the share of the spread between test points that is "
                            "claimed to be real (e.g. 0.5)")


class Claim(Spec):
    """One hypothesis of the study, answered by ``inflang run`` with a verdict."""

    name: str = Field(min_length=1, max_length=200, description="what the claim says, in words")
    metric: str = Field(description="an agreement metric of the study (spearman, ...), a ground-truth quantity "
                        "(noise_ceiling_spearman, below_resolution, ...) or a model quantity "
                        "(hessian_top_eigenvalue, test_accuracy, test_loss, train_loss)")
    estimator: str | None = Field(None, description="the estimator label the claim is about (agreement "
                                  "metrics; not with compare)")
    where: dict[str, Any] = Field(default_factory=dict, description="swept path -> value: the cells the claim "
                                  "is about (default: every cell)")
    trend: TrendSpec | None = None
    contrast: ContrastSpec | None = None
    compare: CompareSpec | None = None
    at_least: float | None = Field(None, allow_inf_nan=False, description="the metric's mean is at least this")
    at_most: float | None = Field(None, allow_inf_nan=False, description="the metric's mean is at most this")
    between_test_points: BetweenTestPointsSpec | None = None
    better: Literal["higher", "lower"] | None = Field(
        None, description="for contrast and compare: whether the better side has the higher or the lower metric "
        "(default: lower for flip_k, flip_k_capped, median_flip_k, losses, resolution, below_resolution and "
        "*_mean_abs_gap; higher otherwise)")
    smallest_effect: float | None = Field(
        None, gt=0, allow_inf_nan=False, description="for trend, contrast and compare: the smallest effect that "
        "matters, in the statistic's units (metric units, per step for a trend); an interval inside "
        "+-smallest_effect gives the verdict negligible")

    @property
    def form(self) -> str:
        for name in ("trend", "contrast", "compare", "at_least", "at_most", "between_test_points"):
            if getattr(self, name) is not None:
                return name
        raise ValueError("no form")

    @property
    def threshold(self) -> float:
        """The line the claim's interval has to clear: its at_least / at_most / between_test_points share, else 0
        (a difference)."""
        if self.at_least is not None:
            return self.at_least
        if self.at_most is not None:
            return self.at_most
        if self.between_test_points is not None:
            return self.between_test_points.at_least
        return 0.0

    @model_validator(mode="after")
    def _one_form(self) -> Claim:
        forms = [n for n in ("trend", "contrast", "compare", "at_least", "at_most", "between_test_points")
                 if getattr(self, n) is not None]
        if len(forms) != 1:
            raise ValueError("give exactly one of trend, contrast, compare, at_least, at_most, "
                             f"between_test_points (found {', '.join(forms) or 'none'})")
        if self.compare is not None and self.estimator is not None:
            raise ValueError("compare names its two estimators itself; leave out 'estimator'")
        if self.smallest_effect is not None and self.form not in ("trend", "contrast", "compare"):
            raise ValueError("smallest_effect applies to trend, contrast and compare (an effect that can be "
                             f"negligible); a {self.form} claim keeps its threshold")
        if self.better is not None and self.contrast is None and self.compare is None:
            raise ValueError("'better' says which direction is better in a contrast or compare; the other forms "
                             "say it themselves (trend direction, at_least, at_most)")
        return self


def lower_is_better(claim: Claim) -> bool:
    """Whether a lower metric is the better one for this claim (``better``, else the metric's default)."""
    if claim.better is not None:
        return claim.better == "lower"
    return lower_is_better_metric(claim.metric)
