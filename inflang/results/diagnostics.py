"""Health checks: the regimes in which a cell's numbers mean less than they seem (docs/language.md,
"Diagnostics"). Torch-free: each check reads what the tasks stored (the ``diagnose`` task's gradient norm and
curvature, estimators' notes, the ground truth's refit gradients and aggregates) and the cell's validated
study, and compares one value with a threshold of ``diagnostics:``.

| check | subject | value | warns when |
| --- | --- | --- | --- |
| ``damping_dominates`` | estimator with a damping | damping / lambda_max(H) | >= damping_ratio |
| ``not_stationary`` | estimator that inverts curvature | ||grad L(theta)|| | > gradient_norm |
| ``interpolation`` | model | training loss | < train_loss while lambda_max < curvature_floor |
| ``lissa_not_converged`` | lissa | max_lambda |1 - (lambda + damping)/scale| ^ depth | > lissa_residual |
| ``kfac_uncovered`` | kfac, ekfac | share of selected parameters outside Linear/Conv2d | > kfac_uncovered |
| ``arnoldi_few_directions`` | arnoldi | share of tr(H) in the kept eigenvalues | < arnoldi_mass |
| ``refits_not_solved`` | ground truth | share of removals whose solved refit started within its tolerance | > 0 |
| ``retraining_not_converged`` | ground truth | median over removals of final / initial ||grad|| | > retrain_gradient |
| ``below_resolution`` | ground truth | fraction of effects below the resolution | > below_resolution |
| ``low_noise_ceiling`` | ground truth | noise ceiling (Spearman) | < noise_ceiling |
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import duckdb

from inflang.compiling.sweep import label
from inflang.results import store
from inflang.spec import DiagnosticsSpec, estimator_label
from inflang.units import share_text

MODEL, GROUND_TRUTH = "model", "ground truth"


@dataclass(frozen=True)
class Diagnostic:
    cell_id: str
    subject: str  # an estimator's label, "model" or "ground truth"
    check: str
    value: float
    threshold: float
    severity: str  # warning
    message: str


@dataclass
class CellFacts:
    """What the checks of one cell read."""

    cell_id: str
    params: dict[str, Any]
    estimators: list[Any]  # the cell's estimator specs
    spec: DiagnosticsSpec
    model: dict[str, float] | None = None  # diagnose task: grad_norm, objective, top/min eigenvalue, trace
    train_loss: float | None = None
    notes: dict[str, dict[str, float]] = field(default_factory=dict)  # estimator label -> note -> value
    retrain_ratio: float | None = None
    unconverged: tuple[int, int, float] | None = None  # solved refits that missed their tolerance, of all; worst
    unsolved: tuple[int, int] | None = None  # removals whose solved refit took no iteration, of all removals
    below_resolution: float | None = None
    noise_ceiling: float | None = None


def check_cell(f: CellFacts) -> list[Diagnostic]:
    """Every check of one cell that warns."""
    s, out = f.spec, []

    def warn(subject: str, check: str, value: float, threshold: float, message: str) -> None:
        out.append(Diagnostic(f.cell_id, subject, check, value, threshold, "warning", message))

    top = f.model["top_eigenvalue"] if f.model else None
    low = f.model["min_eigenvalue"] if f.model else None
    for est in f.estimators:
        name = estimator_label(est)
        damping = getattr(est, "damping", None)
        if top is not None and est.assumes_optimum and damping:
            ratio = damping / top if top > 0 else math.inf
            if ratio >= s.damping_ratio:
                warn(name, "damping_dominates", ratio, s.damping_ratio,
                     f"damping {damping:g} is {_times(ratio)} the Hessian's top eigenvalue {top:.3g}: "
                     f"(H + damping I)^-1 is mostly damping, so {name} is close to scaled gradient similarity")
        if f.model is not None and est.assumes_optimum and f.model["grad_norm"] > s.gradient_norm:
            warn(name, "not_stationary", f.model["grad_norm"], s.gradient_norm,
                 f"the trained model is not at a stationary point (||grad L|| = {f.model['grad_norm']:.2g}), "
                 f"which {name} assumes: train longer or use a ground truth that starts where the model is")
        for check, value, threshold, message in est.health(top, low, f.notes.get(name, {}), s):
            warn(name, check, value, threshold, message)
    if f.train_loss is not None and top is not None and f.train_loss < s.train_loss and top < s.curvature_floor:
        warn(MODEL, "interpolation", f.train_loss, s.train_loss,
             f"training loss {f.train_loss:.2g} and top eigenvalue {top:.2g}: the model interpolates its training "
             "data, removing a point changes almost nothing, and damping sets every curvature-based estimate")
    if f.retrain_ratio is not None and f.retrain_ratio > s.retrain_gradient:
        warn(GROUND_TRUTH, "retraining_not_converged", f.retrain_ratio, s.retrain_gradient,
             f"warm-start retraining ends with {share_text(f.retrain_ratio)} of the gradient each removal created "
             "(median): the effects are not those of converged refits; raise steps or use solver: newton")
    if f.unconverged is not None:
        bad, total, worst = f.unconverged
        warn(GROUND_TRUTH, "refits_not_converged", bad / total, 0.0,
             f"{bad} of {total} solved refits did not reach their tolerance (largest |grad| {worst:.2g}); they are "
             "kept, each listed in the refits view (converged = false): raise ground_truth.max_iter, or "
             "ground_truth.damping (a ReLU network's objective has kinks, where Newton steps may stall)")
    if f.unsolved is not None:
        still, total = f.unsolved
        warn(GROUND_TRUTH, "refits_not_solved", still / total, 0.0,
             f"{still} of {total} removals' refits started within their tolerance (the removed point's gradient "
             "over n is at most ground_truth.tol), so they took no step and their effects are recorded as 0: lower "
             "ground_truth.tol below the removed points' gradients")
    if f.below_resolution is not None and f.below_resolution > s.below_resolution:
        warn(GROUND_TRUTH, "below_resolution", f.below_resolution, s.below_resolution,
             f"{share_text(f.below_resolution)} of the effects are below the ground truth's resolution: they are "
             "rounding noise, not effects")
    if f.noise_ceiling is not None and f.noise_ceiling < s.noise_ceiling:
        warn(GROUND_TRUTH, "low_noise_ceiling", f.noise_ceiling, s.noise_ceiling,
             f"the ground truth's noise ceiling is {f.noise_ceiling:.2f}: its repeats disagree too much to judge an "
             "estimator against it")
    return out


def _times(ratio: float) -> str:
    return "many times" if not math.isfinite(ratio) else f"{ratio:.3g} times"


def collect(con: duckdb.DuckDBPyConnection, cells: Sequence[Any]) -> list[CellFacts]:
    """The facts of the given cells (``inflang.compiling.plan.CellTasks``) from what their tasks stored."""
    hashes = sorted({h for c in cells for _, _, h in c.all()})
    found = store.diagnostic_inputs(con, hashes)
    out = []
    for c in cells:
        study = c.cell.study
        facts = CellFacts(c.cell.cell_id, c.cell.params, list(study.estimators), study.diagnostics)
        facts.model = found["diagnosis"].get(c.diagnose) if c.diagnose else None
        facts.train_loss = found["train_loss"].get(c.train)
        facts.notes = {label: found["notes"][h] for label, h in c.estimates.items() if h in found["notes"]}
        if c.ground_truth:
            facts.retrain_ratio = found["retrain_ratio"].get(c.ground_truth)
            facts.unconverged = found["unconverged"].get(c.ground_truth)
            facts.unsolved = found["unsolved"].get(c.ground_truth)
            aggregates = found["aggregates"].get(c.ground_truth, {})
            facts.below_resolution = aggregates.get("below_resolution")
            facts.noise_ceiling = aggregates.get("noise_ceiling_spearman")
        out.append(facts)
    return out


def diagnose(con: duckdb.DuckDBPyConnection, cells: Sequence[Any]) -> list[Diagnostic]:
    return [d for facts in collect(con, cells) for d in check_cell(facts)]


def summary_lines(rows: Sequence[dict[str, Any]], cells: dict[str, dict[str, Any]]) -> list[str]:
    """One line per (check, subject): how many cells, the range of values, which cells, and what it means (the
    message of the first). ``rows``: diagnostics table rows; ``cells``: cell id -> swept values."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[(r["check"], r["subject"])].append(r)
    lines = []
    for (check, subject), found in sorted(groups.items()):
        values = [math.inf if r["value"] is None else r["value"] for r in found]  # NULL: an infinite ratio
        span = f"{min(values):.3g}" if min(values) == max(values) else f"{min(values):.3g} to {max(values):.3g}"
        points = sorted({label(cells.get(r["cell_id"], {}), "every cell") for r in found})
        shown = "; ".join(points[:4]) + (f"; and {len(points) - 4} more" if len(points) > 4 else "")
        lines.append(f"warning {check} ({subject}) in {len(found)} cell{'s' if len(found) != 1 else ''} "
                     f"[{shown}]: value {span}, threshold {found[0]['threshold']:g}. {found[0]['message']}")
    return lines


def claim_health(rows: Sequence[dict[str, Any]], cell_ids: set[str], subjects: set[str]) -> str:
    """The health note of a claim: the checks that warn in the cells it rests on, for the subjects it reads
    (its estimators, "model", "ground truth"; '' when none)."""
    counts: dict[str, set[str]] = defaultdict(set)
    for r in rows:
        if r["cell_id"] in cell_ids and r["subject"] in subjects:
            counts[r["check"] if r["subject"] in (MODEL, GROUND_TRUTH) else f"{r['check']} ({r['subject']})"].add(
                r["cell_id"])
    return "; ".join(f"{k} {len(v)}/{len(cell_ids)} cells" for k, v in sorted(counts.items()))
