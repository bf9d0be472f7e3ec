"""The metric catalogue: every quantity a study can store or a claim can name, with what inflang knows of it.

An entry states its ``kind``, which fixes the range its values lie in (a level is clipped to it; a difference is
not) and how a level's interval is formed: a ``correlation`` in [-1, 1] also gets Fisher's z interval, a
``proportion`` is 0 or 1 per test point (its level gets an exact binomial interval), a ``fraction`` lies in
[0, 1]; a ``count``, ``loss``, ``gap`` or ``scale`` is unbounded. ``better`` is the direction a contrast or
comparison claims (a lower-is-better metric claims a negative difference); ``of`` says whose quantity it is (an
estimator's, the ground truth's, or the trained model's); ``label`` is how the CLI names it.

Families are derived, not listed: ``noise_ceiling_<c>`` and ``reliability_<c>`` of a correlation ``c`` (the
ground truth's own, LANGUAGE.md "Statistics"), ``random_<m>`` (brittleness's random-order baseline of ``m``) and
``<pair>_<m>`` (the decomposition's gaps between two responses; docs/language.md, "decompose"). A protocol
declares its metrics by these names (``inflang/spec/protocols.py``); a new metric is one entry in ``CATALOGUE``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

Kind = Literal["correlation", "fraction", "proportion", "count", "loss", "gap", "scale"]
Of = Literal["estimator", "ground_truth", "model"]

RANGES: dict[str, tuple[float, float]] = {"correlation": (-1.0, 1.0), "fraction": (0.0, 1.0),
                                          "proportion": (0.0, 1.0)}


@dataclass(frozen=True)
class Metric:
    """One stored quantity: its name, kind (fixes its range), which way is better, whose it is, its label."""

    name: str
    kind: Kind
    better: Literal["higher", "lower"]
    of: Of
    label: str

    @property
    def range(self) -> tuple[float, float] | None:
        return RANGES.get(self.kind)


def _entries(*metrics: Metric) -> dict[str, Metric]:
    return {m.name: m for m in metrics}


CATALOGUE: dict[str, Metric] = _entries(
    # agreement between estimated and measured effects, per test point over the items (metrics: names)
    Metric("pearson", "correlation", "higher", "estimator", "pearson"),
    Metric("spearman", "correlation", "higher", "estimator", "spearman"),
    Metric("kendall", "correlation", "higher", "estimator", "kendall"),
    Metric("sign_agreement", "fraction", "higher", "estimator", "sign agreement"),
    Metric("top_k_overlap", "fraction", "higher", "estimator", "top-k overlap"),
    # brittleness: removals that flip a test point's prediction in an estimator's order
    Metric("flip_k", "count", "lower", "estimator", "mean k of flips"),
    Metric("flip_k_capped", "count", "lower", "estimator", "mean k of flips (capped)"),
    Metric("flipped", "proportion", "higher", "estimator", "flip rate"),
    Metric("flip_rate", "proportion", "higher", "estimator", "flip rate"),
    Metric("median_flip_k", "count", "lower", "estimator", "median k of flips"),
    # the ground truth's resolution (resolution_probes)
    Metric("resolution", "scale", "lower", "ground_truth", "resolution"),
    Metric("below_resolution", "fraction", "lower", "ground_truth", "below resolution"),
    # the decomposition's gaps between two responses (a - b, per test point)
    Metric("mean_gap", "gap", "higher", "estimator", "mean gap"),
    Metric("mean_abs_gap", "gap", "lower", "estimator", "mean |gap|"),
    # the trained model, one value per cell (the models view)
    Metric("hessian_top_eigenvalue", "scale", "higher", "model", "top Hessian eigenvalue"),
    Metric("test_accuracy", "scale", "higher", "model", "test accuracy"),
    Metric("test_loss", "loss", "lower", "model", "test loss"),
    Metric("train_loss", "loss", "lower", "model", "train loss"),
)

CEILING_PREFIXES = ("noise_ceiling_", "reliability_")
RANDOM_PREFIX = "random_"
# the decomposition's response pairs: an estimator's (influence against a response) and the ground truth's
ESTIMATOR_PAIRS = ("influence_vs_pbrf", "influence_vs_retrained")
GROUND_TRUTH_PAIRS = ("pbrf_vs_converged_loo", "converged_loo_vs_retrained")
GAP_MEASURES = ("spearman", "pearson", "mean_gap", "mean_abs_gap")
CEILING_OF = ("spearman", "pearson")  # the correlations a repeated ground truth states a ceiling for


def metric(name: str) -> Metric | None:
    """The catalogue's entry for ``name``, a family's derived from its base; None for a name it does not know."""
    if name in CATALOGUE:
        return CATALOGUE[name]
    if name.startswith("noise_ceiling_") and _is_correlation_name(base := name.removeprefix("noise_ceiling_")):
        return Metric(name, "fraction", "higher", "ground_truth",
                      "noise ceiling" if base == "spearman" else f"noise ceiling ({base})")
    if name.startswith("reliability_") and _is_correlation_name(base := name.removeprefix("reliability_")):
        return Metric(name, "correlation", "higher", "ground_truth", f"reliability ({base})")
    baseline_of = CATALOGUE.get(name.removeprefix(RANDOM_PREFIX)) if name.startswith(RANDOM_PREFIX) else None
    if baseline_of is not None and baseline_of.of == "estimator":  # a random order's baseline of an estimator's
        return replace(baseline_of, name=name, of="ground_truth", label=f"random order {baseline_of.label}")
    for pair in ESTIMATOR_PAIRS + GROUND_TRUTH_PAIRS:
        if name.startswith(pair + "_") and (base := name.removeprefix(pair + "_")) in GAP_MEASURES:
            found = CATALOGUE[base]
            return replace(found, name=name, of="estimator" if pair in ESTIMATOR_PAIRS else "ground_truth",
                           label=f"{pair.replace('_', ' ')}: {found.label}")
    return None


def _is_correlation_name(name: str) -> bool:
    return name in CATALOGUE and CATALOGUE[name].kind == "correlation"


def ceiling_metrics() -> tuple[str, ...]:
    """What a repeated ground truth (repeats >= 2) stores of itself: noise ceilings and reliabilities."""
    return tuple(f"{prefix}{c}" for prefix in CEILING_PREFIXES for c in CEILING_OF)


def gap_metrics(of: Of) -> tuple[str, ...]:
    """The decomposition's gap metrics of an estimator or of the ground truth (``decompose: true``)."""
    pairs = ESTIMATOR_PAIRS if of == "estimator" else GROUND_TRUTH_PAIRS
    return tuple(f"{pair}_{m}" for pair in pairs for m in GAP_MEASURES)


def random_baseline(name: str) -> str:
    """The name of a metric's random-order baseline (brittleness)."""
    return RANDOM_PREFIX + name


def ceiling_root(name: str) -> str | None:
    """The correlation a noise ceiling or reliability is of (``noise_ceiling_spearman`` -> ``spearman``)."""
    for prefix in CEILING_PREFIXES:
        if name.startswith(prefix):
            return name.removeprefix(prefix)
    return None


def reliability_of(name: str) -> str:
    """The reliability a noise ceiling is the root of (``noise_ceiling_spearman`` -> ``reliability_spearman``),
    or the reliability of a correlation."""
    return "reliability_" + (ceiling_root(name) or name)


def is_noise_ceiling(name: str) -> bool:
    return name.startswith("noise_ceiling_")


def names(of: Of) -> tuple[str, ...]:
    """The catalogue's own entries of an estimator, the ground truth or the model (families not included)."""
    return tuple(m.name for m in CATALOGUE.values() if m.of == of)


def is_model_quantity(name: str) -> bool:
    """A quantity of the trained model, one value per cell (from the models view, not the metrics table)."""
    found = metric(name)
    return found is not None and found.of == "model"


def belongs_to_estimator(name: str) -> bool:
    """A metric each estimator has (estimator set in the metrics table); an unknown name counts as one."""
    found = metric(name)
    return found is None or found.of == "estimator"


def is_proportion(name: str) -> bool:
    """A metric that is 0 or 1 per test point by definition (whether a prediction flipped)."""
    found = metric(name)
    return found is not None and found.kind == "proportion"


def metric_range(name: str) -> tuple[float, float] | None:
    """(low, high) of a metric's possible values, or None when it is unbounded (or unknown)."""
    found = metric(name)
    return None if found is None else found.range


def is_correlation(name: str) -> bool:
    """A metric in [-1, 1] (a correlation or a reliability), whose level also gets Fisher's z interval."""
    return metric_range(name) == (-1.0, 1.0)


def lower_is_better_metric(name: str) -> bool:
    """Whether a lower value of ``name`` is the better one."""
    found = metric(name)
    return found is not None and found.better == "lower"


def label(name: str) -> str:
    """How the CLI names a metric (its own name where the catalogue does not know it)."""
    found = metric(name)
    return name if found is None else found.label
