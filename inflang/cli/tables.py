"""What the CLI prints of a study's results: the summary table per sweep point and estimator, the claims'
verdicts, the health checks' lines, failed cells, and query results as CSV or JSON."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any, get_args

from rich.table import Table

from inflang.cli.terminal import out
from inflang.compiling.plan import Plan
from inflang.compiling.sweep import label, seeds_by_points
from inflang.metrics import label as metric_label
from inflang.results import store as store_queries
from inflang.results.claims import family_notes, marked_verdict
from inflang.results.diagnostics import summary_lines
from inflang.results.intervals import interval_text
from inflang.spec.protocols import AnyProtocol, Retraining
from inflang.units import duration, flops_text


def summary_metrics(db: str | Path, study: str) -> tuple[str, str, str]:
    """(first metric, second metric, ground truth's metric) the summary shows: those of the first protocol (in
    ``AnyProtocol``'s order) that states its own among the protocols the study's ground truths ran, else the
    agreement metrics and the noise ceiling every retraining protocol shares."""
    shared = Retraining.summary_metrics
    ran = store_queries.study_protocols(db, study)
    for protocol in get_args(AnyProtocol):
        name = get_args(protocol.model_fields["protocol"].annotation)[0]
        if name in ran and protocol.summary_metrics != shared:
            return protocol.summary_metrics
    return shared


def summary(db: str | Path, study: str, points: list[dict[str, Any]] | None = None
             ) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Per sweep point and estimator, pooled over seeds: spearman and pearson with their intervals, the
    noise ceiling where measured (or brittleness's flip rates), what they rest on, and how many of the
    point's cells failed. ``points`` (swept values) keeps those sweep points only."""
    first, second, ground = summary_metrics(db, study)
    columns, rows = store_queries.summary(db, study, first, second, ground)
    names = {"first": first, "second": second, "ground": ground}  # the columns take the metrics' names

    def renamed(column: str) -> str:
        head, sep, tail = column.partition("_")
        return names[head] + sep + tail if head in names else column

    columns = [renamed(c) for c in columns]
    if points is not None:
        rows = [r for r in rows if json.loads(r[0] or "{}") in points]
    return columns, rows


def failures(db: str | Path, study: str, points: list[dict[str, Any]] | None = None) -> list[tuple[str, str, str]]:
    """(cell id, swept values, message) of every failed cell (of the given sweep points)."""
    return [(c, label(p) if p else "-", e) for c, p, e in store_queries.failed_cells(db, study)
            if points is None or p in points]


def summary_table(db: str | Path, study: str, points: list[dict[str, Any]] | None = None) -> Table:
    _, rows = summary(db, study, points)
    first, second, ground = map(metric_label, summary_metrics(db, study))
    table = Table(title=f"'{study}': mean over test points and seeds, 95% interval (t over seeds; over test "
                        "points with one seed)")
    with_ceiling = any(r[8] is not None for r in rows)
    columns = ["swept values", "estimator", first, second] + ([ground] if with_ceiling else [])
    with_resolution = any(r[16] is not None for r in rows)
    columns += (["below resolution"] if with_resolution else []) + ["seeds x test points", "status"]
    for col in columns:
        numeric = col in (first, second, ground, "below resolution")
        table.add_column(col, justify="right" if numeric else "left", no_wrap=numeric)
    for (params, estimator, sp, sp_lo, sp_hi, pe, pe_lo, pe_hi, ce, ce_lo, ce_hi, seeds, test_points, cells,
         failed, pending, below) in rows:
        swept = label(json.loads(params)) if params else "-"
        status = "done" if not failed and not pending else ", ".join(
            part for part in (f"{failed} of {cells} cells failed" if failed else "",
                              f"{pending} pending" if pending else "") if part)
        values = [swept, estimator or "-", interval_text(sp, sp_lo, sp_hi), interval_text(pe, pe_lo, pe_hi)]
        values += [interval_text(ce, ce_lo, ce_hi)] if with_ceiling else []
        if with_resolution:
            values.append("-" if below is None or math.isnan(below) else f"{100 * below:.1f}%")
        values += [seeds_by_points(seeds, test_points), status]
        table.add_row(*values)
    return table


def claims_rows(db: str | Path, studies: list[str]) -> list[dict[str, Any]]:
    return store_queries.claim_rows(db, studies)


def claims_table(rows: list[dict[str, Any]], with_study: bool) -> Table:
    """The verdicts, marked † where the claim was declared or edited after the study had results."""
    adjusted = sorted({r["adjust"] for r in rows if r["adjust"] and r["adjust"] != "none"})
    how = f"{'/'.join(adjusted)}-adjusted intervals" if adjusted else "95% intervals"
    if any(r.get("sequential") for r in rows):
        how += ", at each sequential look's level"
    table = Table(title=f"claims: verdicts from {how} (over seeds; over test points with one seed)")
    for col in (["study"] if with_study else []) + ["claim", "verdict", "statistic", "estimate [interval]",
                                                     "of ceiling", "seeds", "test points"]:
        table.add_column(col, no_wrap=col in ("verdict", "estimate [interval]"))
    colours = {"supported": "green", "contradicted": "red", "negligible": "cyan", "unresolved": "yellow"}
    for r in rows:
        shown = f"[{colours.get(r['verdict'], 'magenta')}]{marked_verdict(r)}[/]"
        interval = interval_text(r["estimate"], r["ci_low"], r["ci_high"], r["level"])
        ceiling = r["relative_to_ceiling"]
        notes = "; ".join(n for n in (r["detail"], f"⚠ health: {r['health']}" if r["health"] else "") if n)
        cells = [r["claim"], shown, r["statistic"] + (f" ({notes})" if notes else ""), interval,
                 "-" if ceiling is None else f"{ceiling:.2f}", str(r["seeds"]), str(r["test_points"])]
        table.add_row(*([r["study"]] if with_study else []), *cells)
    return table


def print_claims(rows: list[dict[str, Any]], with_study: bool) -> None:
    out.print(claims_table(rows, with_study))
    for r in rows:
        if r.get("settle"):
            where = f"{r['study']}: " if with_study else ""
            out.print(f"to settle {where}'{r['claim']}': {r['settle']}", highlight=False, soft_wrap=True)
    for line in family_notes(rows):
        out.print(line, highlight=False, soft_wrap=True)
    if any(r["health"] for r in rows):
        out.print("⚠ the claim rests on cells where a health check warns (inflang report shows them; "
                  "docs/language.md, Diagnostics)", highlight=False, soft_wrap=True)


def print_diagnostics(db: str | Path, study: str, points: list[dict[str, Any]] | None = None) -> None:
    """One line per kind of problem the health checks found, with its cells (of the given sweep points)."""
    cells = dict(store_queries.cell_params(db, study))
    found = [r for r in store_queries.study_diagnostics(db, study)
             if points is None or cells.get(r["cell_id"]) in points]
    if not found:
        return
    for line in summary_lines(found, cells):
        out.print(line, highlight=False, markup=False, soft_wrap=True)


def print_summary(db: str | Path, study: str, points: list[dict[str, Any]] | None = None) -> None:
    """The summary table, then each failed cell's message in full (a table column would wrap it)."""
    out.print(summary_table(db, study, points))
    for cell_id, swept, message in failures(db, study, points):
        out.print(f"failed cell {cell_id} ({swept}): {message}", highlight=False, markup=False, soft_wrap=True)


def as_csv(columns: list[str], rows: list[tuple[Any, ...]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(rows)
    return buffer.getvalue()


def as_json(columns: list[str], rows: list[tuple[Any, ...]]) -> str:
    return json.dumps([dict(zip(columns, r, strict=True)) for r in rows], default=str) + "\n"


def task_listing(compiled: Plan, states: dict[str, str], prices: dict[str, Any], budget: int | None) -> Table:
    """``plan --tasks``: every selected task with its hash, state, dependencies, models, steps, FLOPs and time."""
    listing = Table("task", "kind", "state", "depends on", "models", "steps", "FLOPs", "time")
    for t in compiled.selected_tasks().values():
        state = {"done": "cached", "failed": "failed"}.get(states.get(t.hash, ""), "pending")
        cost = prices.get(t.hash)
        listing.add_row(t.hash, t.kind, state, ", ".join(d[:8] for d in t.deps) or "-",
                        str(t.trained_models(budget) or "-"),
                        f"{t.model_steps(budget):,}" if t.cost_steps else "-",
                        flops_text(t.model_flops(budget)) if t.flops else "-",
                        duration(cost.seconds) if cost is not None and cost.seconds is not None else "-")
    return listing


def plan_table(loaded: Any, compiled: Plan, states: dict[str, str], prices: dict[str, Any], budget: int | None
               ) -> tuple[Table, int, float, float, int]:
    """``plan``'s table, a row per task kind (count, cached, failed, to run, models, chunks, steps, FLOPs, time),
    with the totals to run: (table, model-steps, FLOPs, seconds, tasks without a measured rate)."""
    from inflang.compiling.pricing import timed

    shown = len(compiled.selected_cells())
    table = Table(title=f"plan for '{loaded.study.study}' ({shown} cells"
                        + (f" of {len(loaded.cells)}, selected)" if shown < len(loaded.cells) else ")"))
    for col in ("task", "count", "cached", "failed", "to run", "models", "chunks", "steps", "FLOPs", "time"):
        table.add_column(col, justify="right" if col != "task" else "left", no_wrap=True)
    total_steps = 0
    total_flops = 0.0
    total_seconds = 0.0
    unpriced = 0
    for kind, tasks in compiled.by_kind().items():
        if not tasks:
            continue
        cached = sum(states.get(t.hash) == "done" for t in tasks)
        failed = sum(states.get(t.hash) == "failed" for t in tasks)
        todo = [t for t in tasks if states.get(t.hash) != "done"]
        steps = sum(t.model_steps(budget) for t in todo)
        total_steps += steps
        models = sum(t.trained_models(budget) for t in todo)
        chunks = sum(t.chunks(budget) for t in todo)
        flops = sum(t.model_flops(budget) for t in todo)
        total_flops += flops
        priced = [prices[t.hash] for t in todo if timed(t)]
        missing = sum(p.seconds is None for p in priced)
        unpriced += missing
        seconds = sum(p.seconds or 0.0 for p in priced)
        total_seconds += seconds
        table.add_row(kind, str(len(tasks)), str(cached), str(failed), str(len(todo)),
                      f"{models:,}" if models else "-", f"{chunks:,}" if chunks else "-",
                      f"{steps:,}" if steps else "-", flops_text(flops) if flops else "-",
                      duration(seconds) if priced and not missing else "-")
    return table, total_steps, total_flops, total_seconds, unpriced
