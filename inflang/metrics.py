"""What inflang knows about each metric a study can store, in one place: the range its values lie in (a level
is clipped to it; a difference is not), whether it is 0 or 1 per test point (a proportion, whose level gets an
exact binomial interval), whether it is a correlation (whose level also gets Fisher's z interval), and which way
is better (a contrast or comparison on a lower-is-better metric claims a negative difference). Names follow the
stored metrics (docs/language.md, "Metrics"): the agreement metrics, the ground truth's own quantities
(``noise_ceiling_*``, ``reliability_*``, ``resolution``), brittleness's counts and rates (and their
``random_*`` baselines), decompose's gap metrics (``<pair>_<metric>``) and the model quantities."""

from __future__ import annotations

# The range a metric's value lies in (levels are clipped to it; differences are not).
CORRELATIONS = ("pearson", "spearman", "kendall")
FRACTIONS = ("sign_agreement", "top_k_overlap", "flipped", "flip_rate", "below_resolution")


def is_proportion(metric: str) -> bool:
    """A metric that is 0 or 1 per test point by definition (whether a prediction flipped)."""
    return metric == "flipped" or metric.endswith("_flipped") or metric == "flip_rate"


def metric_range(metric: str) -> tuple[float, float] | None:
    """(low, high) of a metric's possible values, or None when it is unbounded."""
    if metric in FRACTIONS or metric.startswith("noise_ceiling_") or metric.endswith(("_flipped", "_flip_rate")):
        return (0.0, 1.0)
    if metric in CORRELATIONS or metric.startswith("reliability_") or metric.endswith(
            tuple(f"_{c}" for c in CORRELATIONS)):
        return (-1.0, 1.0)
    return None


def is_correlation(metric: str) -> bool:
    """A metric in [-1, 1] (a correlation or a reliability), whose level also gets Fisher's z interval."""
    return metric_range(metric) == (-1.0, 1.0)


# metrics where a lower value is the better one (a contrast or comparison on them claims a negative difference)
LOWER_IS_BETTER = ("flip_k", "flip_k_capped", "median_flip_k", "resolution", "below_resolution", "test_loss",
                   "train_loss")


def lower_is_better_metric(metric: str) -> bool:
    """Whether a lower value of ``metric`` is the better one (a ``random_`` baseline as its metric)."""
    name = metric.removeprefix("random_")
    return name in LOWER_IS_BETTER or name.endswith("_mean_abs_gap")
