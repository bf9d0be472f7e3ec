"""`inflang report STUDY --out DIR`: a self-contained HTML report with the paper's figures.

Figures (PNG files under DIR/figures, also embedded in DIR/report.html):
1. estimated vs actual change per estimator, for the highest-loss and the median-loss of the cell's
   *selected* test points (``test_points:``; e.g. the median of the 10 highest-loss points, not of the test
   set), with the identity line (Basu et al. 2021, Fig. 1); for the first ``MAX_SCATTERS`` cells, the
   report says which ones it shows, and ``--select`` picks others;
2. Spearman and Pearson (mean over seeds and test points, with the 95% interval (inflang.results.intervals) as
   error bars) against each swept numeric axis, with the ground truth's noise ceiling as a band when it was
   measured;
3. the Hessian's top eigenvalue against each swept numeric axis (when `hessian:` was asked for);
and a table of failed cells; before them, one figure per claim (its statistic and 95% interval against the
line it has to clear). matplotlib is an optional extra (`pip install 'inflang[plot]'`).
"""

from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inflang.compiling.sweep import label, seeds_by_points
from inflang.errors import UsageError
from inflang.results import store as queries
from inflang.results.claims import family_notes, marked_verdict
from inflang.results.diagnostics import summary_lines
from inflang.results.intervals import interval_text
from inflang.spec.estimators import RANK_ONLY_NAMES


@dataclass
class Report:
    html_path: Path
    figures: list[Path] = field(default_factory=list)


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise UsageError("the HTML report needs matplotlib: pip install 'inflang[plot]' (or pip install "
                         "matplotlib); the terminal summary above needs nothing more") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _claim_row(r: dict[str, Any]) -> str:
    notes = "; ".join(n for n in (r["detail"], f"health: {r['health']}" if r["health"] else "",
                                  f"to settle: {r['settle']}" if r.get("settle") else "") if n)
    cells = [r["claim"], marked_verdict(r), r["statistic"],
             interval_text(r["estimate"], r["ci_low"], r["ci_high"], r["level"]), str(r["seeds"]),
             str(r["test_points"]), notes]
    return "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>"


def _ranks(values: tuple[float, ...]) -> tuple[float, ...]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    for r, i in enumerate(order):
        ranks[i] = float(r)
    return tuple(ranks)


def _rank_only(names: dict[str, tuple[str, bool]]) -> set[str]:
    """The labels whose estimators give raw scores, not predicted changes (``ranks_only``, by name or a custom
    estimator's own field)."""
    return {label for label, (name, flag) in names.items() if name in RANK_ONLY_NAMES or flag}


def _without(params: dict[str, Any], axis: str) -> dict[str, Any]:
    return {k: v for k, v in params.items() if k != axis}


def _facets(axis: str, params: list[dict[str, Any]]) -> dict[str, set[str]]:
    """Other swept values (JSON) -> the sweep points (params JSON) with them, for the points that sweep axis."""
    out: dict[str, set[str]] = {}
    for p in params:
        if axis in p:
            out.setdefault(json.dumps(_without(p, axis), sort_keys=True), set()).add(json.dumps(p, sort_keys=True))
    return dict(sorted(out.items())) or {"{}": set()}


def _correlation_panel(ax: Any, pooled: list[dict[str, Any]], axis: str) -> None:
    """Spearman and Pearson of each estimator against ``axis`` (mean, 95% interval), and the noise ceiling."""
    for metric, style in (("spearman", "-o"), ("pearson", "--s")):
        for est in sorted({r["estimator"] for r in pooled if r["estimator"]}):
            rows = sorted(((json.loads(r["params"])[axis], r) for r in pooled
                           if r["estimator"] == est and r["metric"] == metric), key=lambda t: t[0])
            if not rows:
                continue
            xs = [x for x, _ in rows]
            values = [r["value"] for _, r in rows]
            if all(r["ci_low"] is not None for _, r in rows):
                below = [v - r["ci_low"] for v, (_, r) in zip(values, rows, strict=True)]
                above = [r["ci_high"] - v for v, (_, r) in zip(values, rows, strict=True)]
                ax.errorbar(xs, values, yerr=[below, above], fmt=style, label=f"{est} {metric}", ms=4, capsize=3)
            else:
                ax.plot(xs, values, style, label=f"{est} {metric}", ms=4)
    ceiling = sorted((json.loads(r["params"])[axis], r["value"]) for r in pooled
                     if r["metric"] == "noise_ceiling_spearman")
    if ceiling:
        ax.fill_between([x for x, _ in ceiling], [v for _, v in ceiling], 1.0, color="grey", alpha=0.2,
                        label="above the noise ceiling")
    ax.set_xlabel(axis)
    _integer_ticks(ax, [json.loads(r["params"])[axis] for r in pooled])
    ax.set_ylabel("correlation (mean, 95% interval)")
    ax.legend(fontsize=7)


def _label(params: str | None) -> str:
    return label(json.loads(params or "{}"), empty="base")


def _numeric_axes(cells: list[dict[str, Any]]) -> list[str]:
    axes: dict[str, set[Any]] = {}
    for c in cells:
        for k, v in json.loads(c["params"] or "{}").items():
            if isinstance(v, int | float) and not isinstance(v, bool):
                axes.setdefault(k, set()).add(v)
    return [k for k, values in axes.items() if len(values) > 1]


MAX_SCATTERS = 24  # cells whose scatter plots the report draws


def _integer_ticks(ax: Any, values: list[Any]) -> None:
    """An axis of whole numbers (depth, width) gets ticks at its values, not at 1.25 and 1.75."""
    if values and all(float(v).is_integer() for v in values):
        ax.set_xticks(sorted({int(v) for v in values}))


@dataclass
class Canvas:
    """Where the report's parts go: figures saved under ``figures_dir`` (and embedded), HTML sections in order."""

    plt: Any
    figures_dir: Path
    report: Report
    sections: list[str] = field(default_factory=list)

    def save(self, fig: Any, stem: str, caption: str) -> None:
        path = self.figures_dir / f"{stem}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110, bbox_inches="tight")
        self.plt.close(fig)
        self.report.figures.append(path)
        data = base64.b64encode(path.read_bytes()).decode()
        self.sections.append(f"<figure><img src='data:image/png;base64,{data}' alt='{html.escape(caption)}'>"
                             f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def build(db: Path, study: str, out_dir: Path, selected: set[str] | None = None) -> Report:
    """The report of a study's cells (``selected`` cell ids only, when given)."""
    plt = _pyplot()
    name = study.replace("'", "")
    figures_dir = out_dir / "figures"
    figures_dir.mkdir(parents=True, exist_ok=True)
    cells = [c for c in queries.report_cells(db, name) if selected is None or c["cell_id"] in selected]
    swept = [json.loads(c["params"] or "{}") for c in cells]
    canvas = Canvas(plt, figures_dir, Report(out_dir / "report.html"))
    _claims(canvas, queries.claim_rows(db, [name]))
    _scatters(canvas, db, name, cells)
    results = [r for r in queries.cell_metric_results(db, name) if selected is None or r["cell_id"] in selected]
    pooled = [r for r in queries.pooled_results(db, name) if json.loads(r["params"] or "{}") in swept]
    _against_axes(canvas, cells, pooled, queries.top_eigenvalues(db, name))
    _numbers(canvas, pooled)
    _decomposition(canvas, cells, results)
    health = _health(db, name, cells, selected)
    if health:
        canvas.sections.insert(0, health)
    _write_page(canvas, study, cells, selected)
    return canvas.report


def _claims(canvas: Canvas, claims: list[dict[str, Any]]) -> None:
    """0. the claims: a table with the family's notes, then each as its statistic with its interval against the
    line it has to clear."""
    plt = canvas.plt
    if claims:
        canvas.sections.append("<h2>Claims</h2><table><tr><th>claim</th><th>verdict</th><th>statistic</th>"
                               "<th>estimate [interval]</th><th>seeds</th><th>test points</th><th>detail</th></tr>"
                               + "".join(_claim_row(r) for r in claims) + "</table>"
                               + "".join(f"<p>{html.escape(n)}</p>" for n in family_notes(claims)))
    for i, c in enumerate(claims):
        fig, ax = plt.subplots(figsize=(6.0, 1.6))
        colour = {"supported": "tab:green", "contradicted": "tab:red", "negligible": "tab:cyan",
                  "unresolved": "tab:orange"}.get(
            c["verdict"], "grey")
        if c["estimate"] is not None and c["ci_low"] is not None:
            ax.errorbar([c["estimate"]], [0], xerr=[[c["estimate"] - c["ci_low"]], [c["ci_high"] - c["estimate"]]],
                        fmt="o", color=colour, capsize=4)
        ax.axvline(c["threshold"] or 0.0, color="grey", ls="--", lw=1)
        ax.set_yticks([])
        ax.set_xlabel(c["statistic"], fontsize=8)
        ax.set_title(f"{c['claim']}: {c['verdict']} ({c['seeds']} seeds, {c['test_points']} test points)", fontsize=9)
        canvas.save(fig, f"claim-{i}", f"Claim '{c['claim']}': {c['verdict']}")


def _scatters(canvas: Canvas, db: Path, name: str, cells: list[dict[str, Any]]) -> None:
    """1. scatter per cell: hardest and median-loss test points (rank-only scores as ranks)."""
    plt = canvas.plt
    points = queries.scatter_test_points(db, name)
    pairs = queries.measured_pairs(db, name)
    rank_only = _rank_only(queries.estimator_names(db, name))
    for cell in cells[:MAX_SCATTERS]:
        chosen = [p for p in points if p["cell_id"] == cell["cell_id"]]
        estimators = sorted({p["estimator"] for p in pairs if p["cell_id"] == cell["cell_id"]})
        if not chosen or not estimators:
            continue
        fig, axes = plt.subplots(len(chosen), len(estimators), figsize=(3.2 * len(estimators), 3 * len(chosen)),
                                 squeeze=False)
        for row, point in enumerate(chosen):
            for col, est in enumerate(estimators):
                ax = axes[row][col]
                xy = [(p["estimate"], p["actual"]) for p in pairs if p["cell_id"] == cell["cell_id"]
                      and p["estimator"] == est and p["test_index"] == point["test_index"]]
                if not xy:
                    continue
                xs, ys = zip(*xy, strict=True)
                if est in rank_only:  # a raw score has no scale of its own: compare orders, not values
                    xs, ys = _ranks(xs), _ranks(ys)
                ax.scatter(xs, ys, s=10, alpha=0.7)
                lo, hi = min(min(xs), min(ys)), max(max(xs), max(ys))
                ax.plot([lo, hi], [lo, hi], color="grey", lw=1, ls="--")
                ax.set_title(f"{est}, {point['which']} selected test point {point['test_index']}", fontsize=9)
                ax.set_xlabel("rank of the score" if est in rank_only else "estimated change")
                ax.set_ylabel("rank of the actual change" if est in rank_only else "actual change")
        seed = f"seed {cell['repeat']} of the sweep point (cell seed {cell['seed']})"
        fig.suptitle(f"cell {cell['cell_id']}: {_label(cell['params'])}, {seed}", fontsize=10)
        canvas.save(fig, f"scatter-{cell['cell_id']}", "Estimated vs actual change for the highest-loss and the "
                    f"median-loss of the selected test points, {_label(cell['params'])}, {seed}"
                    + ("; rank-only scores (" + ", ".join(sorted(set(estimators) & rank_only)) + ") against ranks"
                       if set(estimators) & rank_only else ""))


def _against_axes(canvas: Canvas, cells: list[dict[str, Any]], pooled: list[dict[str, Any]],
                  eigenvalues: dict[str, float | None]) -> None:
    """2. and 3. correlations and the top eigenvalue against each swept numeric axis, one panel per combination
    of the other swept values."""
    plt = canvas.plt
    for axis in _numeric_axes(cells):
        facets = _facets(axis, [json.loads(r["params"] or "{}") for r in pooled])
        fig, axes = plt.subplots(1, len(facets), figsize=(5.5 * len(facets), 3.8), squeeze=False, sharey=True)
        for ax, (others, members) in zip(axes[0], facets.items(), strict=True):
            facet = [r for r in pooled if json.dumps(_without(json.loads(r["params"] or "{}"), axis),
                                                      sort_keys=True) == others and r["params"] in members]
            _correlation_panel(ax, facet, axis)
            ax.set_title(_label(others) if others != "{}" else "", fontsize=9)
        canvas.save(fig, f"correlation-{axis}", f"Correlation against {axis}" + (
            ", one panel per value of the other swept axes" if len(facets) > 1 else ""))
        tops: dict[str, list[tuple[Any, float]]] = {}
        for c in cells:
            params = json.loads(c["params"] or "{}")
            top = eigenvalues.get(c["cell_id"])
            if top is not None and axis in params:
                tops.setdefault(json.dumps(_without(params, axis), sort_keys=True), []).append((params[axis], top))
        if tops:
            fig, ax = plt.subplots(figsize=(5.5, 3.6))
            for key, values in sorted(tops.items()):
                values.sort(key=lambda t: t[0])
                ax.plot([x for x, _ in values], [v for _, v in values], "o", label=_label(key) if key != "{}" else None)
            ax.set_xlabel(axis)
            _integer_ticks(ax, [x for v in tops.values() for x, _ in v])
            ax.set_ylabel("top Hessian eigenvalue (each seed a point)")
            if len(tops) > 1:
                ax.legend(fontsize=7)
            canvas.save(fig, f"eigenvalue-{axis}", f"Top Hessian eigenvalue against {axis}" + (
                ", one colour per value of the other swept axes" if len(tops) > 1 else ""))


def _numbers(canvas: Canvas, pooled: list[dict[str, Any]]) -> None:
    """The numbers behind the figures: every pooled row, per sweep point."""
    if not pooled:
        return
    body = "".join(f"<tr><td>{html.escape(_label(r['params']))}</td><td>{html.escape(r['estimator'] or '-')}</td>"
                   f"<td>{html.escape(r['metric'])}</td>"
                   f"<td>{interval_text(r['value'], r['ci_low'], r['ci_high'])}</td>"
                   f"<td>{seeds_by_points(r['seeds'], r['test_points'])}</td></tr>" for r in pooled)
    canvas.sections.append("<h2>Numbers</h2><p>Per sweep point, the mean over seeds of the mean over test points "
                           "with its 95% interval (t over seeds; over test points with one seed), on seeds x test "
                           "points per seed; estimator '-' marks the ground truth's own rows.</p><table><tr><th>"
                           "swept values</th><th>estimator</th><th>metric</th><th>mean [95% interval]</th><th>seeds "
                           "x test points</th></tr>" + body + "</table>")


# the decomposition's terms (ground_truth.decompose; gap metrics of the catalogue, which the structure test
# checks), which add up to the total, influence - retrained
DECOMPOSITION_TERMS = [("influence_vs_pbrf_mean_gap", "influence - PBRF"),
                       ("pbrf_vs_converged_loo_mean_gap", "PBRF - converged LOO"),
                       ("converged_loo_vs_retrained_mean_gap", "converged LOO - retrained")]
DECOMPOSITION_TOTAL = "influence_vs_retrained_mean_gap"


def _decomposition(canvas: Canvas, cells: list[dict[str, Any]], results: list[dict[str, Any]]) -> None:
    """4. the error decomposition (ground_truth.decompose), stacked per cell."""
    terms = DECOMPOSITION_TERMS
    gaps = [r for r in results if r["metric"] in {t for t, _ in terms} | {DECOMPOSITION_TOTAL}]
    if not gaps:
        return
    estimator = sorted({r["estimator"] for r in gaps if r["estimator"]})[0]
    labels = [_label(c["params"]) for c in cells]
    value = {(r["cell_id"], r["metric"]): r["value"] for r in gaps if r["estimator"] in (None, estimator)}
    fig, ax = canvas.plt.subplots(figsize=(max(5.0, 1.2 * len(cells)), 3.8))
    positive = [0.0] * len(cells)
    negative = [0.0] * len(cells)
    for metric, name in terms:
        heights = [value.get((c["cell_id"], metric)) or 0.0 for c in cells]
        bottoms = [p if h >= 0 else q for h, p, q in zip(heights, positive, negative, strict=True)]
        ax.bar(labels, heights, bottom=bottoms, label=name)
        positive = [p + max(h, 0.0) for p, h in zip(positive, heights, strict=True)]
        negative = [q + min(h, 0.0) for q, h in zip(negative, heights, strict=True)]
    totals = [value.get((c["cell_id"], DECOMPOSITION_TOTAL)) for c in cells]
    ax.plot(labels, [t if t is not None else float("nan") for t in totals], "k_", ms=30, mew=2,
            label="influence - retrained (the sum)")
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_ylabel(f"mean gap in the measure ({estimator})")
    ax.legend(fontsize=7, bbox_to_anchor=(1.01, 1), loc="upper left")
    canvas.save(fig, "decomposition", f"Where the gap between {estimator} and retraining comes from (Bae et al. 2022)")


def _health(db: Path, name: str, cells: list[dict[str, Any]], selected: set[str] | None) -> str | None:
    """The health checks that warned: their summary lines and a table (the report's first section)."""
    health = queries.study_diagnostics(db, name)
    if selected is not None:
        health = [r for r in health if r["cell_id"] in selected]
    if not health:
        return None
    by_cell = {c["cell_id"]: json.loads(c["params"] or "{}") for c in cells}
    lines = "".join(f"<li>{html.escape(line)}</li>" for line in summary_lines(health, by_cell))
    body = "".join(f"<tr><td>{html.escape(r['check'])}</td><td>{html.escape(r['subject'])}</td>"
                   f"<td>{html.escape(_label(json.dumps(by_cell.get(r['cell_id'], {}))))}</td>"
                   f"<td>{r['value']:.3g}</td><td>{r['threshold']:g}</td></tr>" for r in health
                   if r["value"] is not None)
    return (f"<h2>Health checks</h2><ul>{lines}</ul><table><tr><th>check</th><th>subject</th>"
            f"<th>cell</th><th>value</th><th>threshold</th></tr>{body}</table>")


def _write_page(canvas: Canvas, study: str, cells: list[dict[str, Any]], selected: set[str] | None) -> None:
    """The page: a heading with the counts, every section, and the failed cells."""
    drawn = min(len(cells), MAX_SCATTERS)
    shown = (f"Scatter plots are drawn for the first {drawn} of {len(cells)} cells (in the order of their swept "
             "values); choose others with inflang report --select." if len(cells) > MAX_SCATTERS else
             "Scatter plots are drawn for every cell.")
    failed = [c for c in cells if c["status"] == "failed"]
    rows_html = "".join(f"<tr><td>{c['cell_id']}</td><td>{html.escape(_label(c['params']))}</td>"
                        f"<td>{html.escape(str(c['error']))}</td></tr>" for c in failed)
    failures = (f"<table><tr><th>cell</th><th>swept values</th><th>error</th></tr>{rows_html}</table>"
                if failed else "<p>No cell failed.</p>")
    canvas.report.html_path.write_text(
        f"<!doctype html><meta charset='utf-8'><title>inflang report: {html.escape(study)}</title>"
        "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}figure{margin:1em 0}"
        "img{max-width:100%}td,th{border:1px solid #ccc;padding:2px 6px}</style>"
        f"<h1>{html.escape(study)}</h1><p>{len(cells)} cells{' (selected)' if selected is not None else ''}, "
        f"{len(failed)} failed; {len(canvas.report.figures)} figures. {html.escape(shown)}</p>"
        f"{''.join(canvas.sections)}<h2>Failed cells</h2>{failures}")
