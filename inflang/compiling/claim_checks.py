"""A study's claims checked against its sweep when it is loaded: every metric, estimator, axis and value a
claim names must be one the study's cells have (``inflang.compiling.validate`` reports what is not, with its line)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from inflang import metrics as catalogue
from inflang.spec.claims import Claim

Params = dict[str, Any]
Problem = tuple[tuple[str | int, ...], str, str | None]


def same(a: Any, b: Any) -> bool:
    if isinstance(a, int | float) and isinstance(b, int | float) and not isinstance(a, bool) \
            and not isinstance(b, bool):
        return float(a) == float(b)
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def numeric(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def matches(params: Params, where: dict[str, Any]) -> bool:
    return all(k in params and same(params[k], v) for k, v in where.items())


def value_text(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, str) else value


def claim_problems(claims: Sequence[Claim], cells: Sequence[tuple[Params, Any]]) -> list[Problem]:
    """(path, message, hint) for every claim that names a metric, estimator, axis or value the study's cells
    (swept values, validated study) do not have."""
    problems: list[Problem] = []
    studies = [s for _, s in cells]
    labels = sorted({e.label or e.name for s in studies for e in s.estimators})
    metric_names = sorted({m for s in studies for m in s.ground_truth.estimator_metrics(tuple(s.metrics.names))})
    ground = {m for s in studies for m in s.ground_truth.ground_truth_metrics()}
    model = {q for q in catalogue.names("model") if q != "hessian_top_eigenvalue" or any(s.hessian for s in studies)}
    axes: dict[str, list[Any]] = {}
    for params, _ in cells:
        for k, v in params.items():
            if not any(same(v, x) for x in axes.setdefault(k, [])):
                axes[k].append(v)
    names = [c.name for c in claims]
    for i, claim in enumerate(claims):
        at: tuple[str | int, ...] = ("claims", i)
        if claim.name in names[:i]:
            problems.append((at + ("name",), f"a second claim is named '{claim.name}'", "give each claim its own name"))
        per_estimator = claim.metric in metric_names
        known = set(metric_names) | ground | model
        if claim.metric not in known:
            problems.append((at + ("metric",), f"'{claim.metric}' is not a quantity this study produces",
                             f"one of: {', '.join(sorted(known))}"))
            continue
        if claim.compare is not None:
            if not per_estimator:
                problems.append((at + ("metric",), f"compare needs an agreement metric of the estimators, not "
                                 f"'{claim.metric}'", f"one of: {', '.join(metric_names)}"))
            for side in ("better", "than"):
                label = getattr(claim.compare, side)
                if label not in labels:
                    problems.append((at + ("compare", side), f"no estimator labelled '{label}' in this study",
                                     f"one of: {', '.join(labels)}"))
        elif per_estimator and claim.estimator is None:
            problems.append((at + ("metric",), f"'{claim.metric}' is a metric of each estimator; say which",
                             f"add estimator: (one of {', '.join(labels)})"))
        elif not per_estimator and claim.estimator is not None:
            problems.append((at + ("estimator",), f"'{claim.metric}' belongs to the "
                             f"{'model' if claim.metric in model else 'ground truth'}, not to an estimator",
                             "leave out estimator"))
        elif claim.estimator is not None and claim.estimator not in labels:
            problems.append((at + ("estimator",), f"no estimator labelled '{claim.estimator}' in this study",
                             f"one of: {', '.join(labels)}"))
        for key, value in claim.where.items():
            if key not in axes:
                problems.append((at + ("where", key), f"'{key}' is not swept in this study",
                                 f"swept: {', '.join(axes) or 'nothing'}"))
            elif not any(same(value, x) for x in axes[key]):
                problems.append((at + ("where", key), f"the sweep gives {key} no value {value_text(value)}",
                                 f"values: {', '.join(value_text(x) for x in axes[key])}"))
        kept = [p for p, _ in cells if matches(p, claim.where)]
        axis_spec = claim.trend or claim.contrast
        if axis_spec is not None:
            form = "trend" if claim.trend is not None else "contrast"
            if axis_spec.axis not in axes:
                problems.append((at + (form, "axis"), f"'{axis_spec.axis}' is not swept in this study",
                                 f"swept: {', '.join(axes) or 'nothing'}"))
                continue
            values = [p[axis_spec.axis] for p in kept if axis_spec.axis in p]
            if claim.contrast is not None:
                for side in ("better", "than"):
                    v = getattr(claim.contrast, side)
                    if not any(same(v, x) for x in values):
                        problems.append((at + ("contrast", side), f"no cell has {axis_spec.axis} = {value_text(v)}"
                                         + (" where the claim looks" if claim.where else ""),
                                         f"values: {', '.join(value_text(x) for x in axes[axis_spec.axis])}"))
            elif not all(numeric(v) for v in values):
                problems.append((at + ("trend", "axis"), f"a trend needs a numeric axis, and {axis_spec.axis} has "
                                 f"values {', '.join(value_text(x) for x in axes[axis_spec.axis])}",
                                 "use contrast: for two non-numeric values"))
            elif len({float(v) for v in values}) < 2:
                problems.append((at + ("trend", "axis"), f"a trend needs at least two values of {axis_spec.axis} "
                                 "among the cells the claim looks at", None))
        if not kept and claim.where:
            problems.append((at + ("where",), "no cell has all these values", None))
    return problems
