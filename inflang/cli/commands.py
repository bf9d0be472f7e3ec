"""The ``inflang`` command line: validate, plan, run, query, report, schema.

Over 500 lines for a reason: it is the twelve commands' Typer signatures, whose options and help texts are
most of its lines. The run's options are checked in ``inflang.api`` (``run_options``); most of what the commands
print lives in ``inflang.cli.tables`` and ``inflang.cli.progress`` (a few small tables are still built here), what
they do in ``inflang.api`` and the modules it calls."""

from __future__ import annotations

import csv
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from inflang import __version__
from inflang.api import parse_bytes, probe_code, requested_engine, resolved_engine, run_options, selected
from inflang.api import plan as api_plan
from inflang.cli.progress import RichEvents
from inflang.cli.tables import (
    as_csv,
    as_json,
    claims_rows,
    plan_table,
    print_claims,
    print_diagnostics,
    print_summary,
    summary,
    task_listing,
)
from inflang.cli.terminal import err, out
from inflang.compiling.plan import Plan, compile_study
from inflang.compiling.sweep import label
from inflang.compiling.validate import LoadedStudy, load_study
from inflang.errors import StorageError, StudyError, UsageError
from inflang.results import store as store_queries
from inflang.results.intervals import interval_text
from inflang.results.sequential import DEFAULT_MAX_SEEDS
from inflang.results.sequential import MAX_SEEDS as SEQUENTIAL_MAX
from inflang.results.store import Store, run_query, write_parquet
from inflang.running.rounds import check, run_until_settled
from inflang.spec.study import is_study_name
from inflang.units import duration, flops_text

app = typer.Typer(
    name="inflang",
    help="Declarative studies of how far influence estimates can be trusted: write a study in YAML, "
    "check it, see its plan, run it, and query the results in SQL.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

DB_HELP = "DuckDB result database; artifacts live in .inflang/ beside it."
STUDY_ARG = typer.Argument(..., help="Path to the study YAML file.", show_default=False)


def _fail(message: str, code: int = 2) -> typer.Exit:
    err.print(message, markup=False, highlight=False, soft_wrap=True)
    return typer.Exit(code)


def _load(path: str, require_files: bool = True, probe: bool = False) -> LoadedStudy:
    """The validated study; with ``probe`` its own code (if it names any) is imported and run once to learn its
    sizes (``inflang plan`` and ``run``; ``validate`` only finds the code)."""
    try:
        return load_study(path, require_files, probe_code if probe else None)
    except StudyError as exc:
        raise _fail(str(exc)) from None


def _warn_float_labels(loaded: LoadedStudy) -> None:
    """The positioned line of ``api.float_label_warning``, when there is one."""
    from inflang.api import float_label_warning

    line = float_label_warning(loaded)
    if line is not None:
        err.print(line, markup=False, highlight=False, soft_wrap=True)


@app.command()
def validate(study: str = STUDY_ARG) -> None:
    """Check a study file and print the cells it would run. Nothing is written."""
    loaded = _load(study)
    plan = compile_study(loaded)
    table = Table(title=f"study '{loaded.study.study}': {len(loaded.cells)} cells")
    for col in ("cell", "repeat", "seed", "swept values"):
        table.add_column(col)
    for cell in loaded.cells:
        table.add_row(cell.cell_id, str(cell.repeat), str(cell.seed), label(cell.params))
    out.print(table)
    out.print(f"[green]valid[/green]: {len(loaded.cells)} cells, {len(plan.tasks)} tasks")


def _task_states(plan: Plan, db: str) -> dict[str, str]:
    path = Path(db)
    if path.is_dir():
        raise _fail(f"{db}: is a directory; --db takes a database file path")
    if not path.exists():
        return {}
    try:
        with Store(path, read_only=True) as store:
            return {h: s for h, (s, _, _) in store.task_status(list(plan.tasks)).items()}
    except UsageError as exc:
        raise _fail(f"error: {exc}") from None


MEMORY_HELP = ("Memory for one retraining chunk, e.g. 4GB (default 2GB, fixed so that results do not depend on "
               "the free memory).")
SELECT_HELP = ("Work on these cells only: path=value conditions joined by commas (e.g. model.depth=3 or "
               "depth=3,lr=0.1) or a cell id prefix; repeat the option for a union.")


@app.command()
def plan(study: str = STUDY_ARG, db: str = typer.Option("inflang.duckdb", help=DB_HELP),
         memory_budget: str = typer.Option(None, "--memory-budget", help=MEMORY_HELP, show_default=False),
         list_tasks: bool = typer.Option(False, "--tasks", help="List every task with its hash and state."),
         select: list[str] = typer.Option(None, "--select", help=SELECT_HELP, show_default=False),
         calibrate: bool = typer.Option(False, "--calibrate", help="Time a few training steps of each distinct "
                                        "(re)training workload on --device to price the plan; rates are kept "
                                        "in the cache folder, so later plans price themselves."),
         device: str = typer.Option("cpu", help="The device the time estimate is for: cpu | cuda | cuda:N."),
         threads: int = typer.Option(1, min=1, help="torch threads the time estimate is for."),
         engine: str = typer.Option(None, help="auto | compiled | eager: the retraining engine the estimate is "
                                    "for (default: INFLANG_ENGINE or auto).", show_default=False)) -> None:
    """Show the tasks a study compiles into: which are cached, which would run, and their cost (model-steps,
    FLOPs and, once measured here with --calibrate, time). Data files need not exist yet."""
    from inflang.compiling.pricing import Rates, price, timed, unmeasured

    try:
        engine = resolved_engine(engine)
    except UsageError as exc:
        raise _fail(f"error: {exc}") from None
    loaded = _load(study, require_files=False, probe=True)
    _warn_float_labels(loaded)
    try:  # with the seeds --until-settled added, which later runs keep
        compiled = selected(api_plan(loaded, db), select)
        budget = parse_bytes(memory_budget)
    except UsageError as exc:
        raise _fail(f"error: {exc}") from None
    states = _task_states(compiled, db)
    todo_all = [t for t in compiled.selected_tasks().values() if states.get(t.hash) != "done"]
    rates = Rates()
    if calibrate:
        workloads = unmeasured(compiled, todo_all, budget, engine, device, threads, rates)
        if workloads:
            err.print(f"calibrating {len(workloads)} workload(s) on {device}, {threads} thread(s)...")
            from inflang.api import calibrate as measure
            from runners.errors import SetupError

            try:
                measure(workloads, rates, device, threads)
            except SetupError as exc:
                raise _fail(f"error: {exc}") from None
    prices = price(todo_all, budget, engine, device, threads, rates)
    if list_tasks:
        out.print(task_listing(compiled, states, prices, budget))
    table, total_steps, total_flops, total_seconds, unpriced = plan_table(loaded, compiled, states, prices, budget)
    out.print(table)
    loops = _loops(compiled)
    batched = [] if any(" over models " in line for line in loops) else ["retraining runs its models as batched "
                                                                          "ensembles"]
    how = "; ".join(batched + loops)
    out.print(f"to run: {total_steps:,} model-steps of training (one optimizer step of one model each), "
              f"{flops_text(total_flops)} in matmuls and convolutions; {how}, in the chunks shown",
              highlight=False, markup=False, soft_wrap=bool(loops))
    _pilot_note(loaded, db)
    if not total_steps and not any(timed(t) for t in todo_all):
        return
    if unpriced:
        out.print(f"time: {unpriced} (re)training task(s) have no rate measured for {device}, {threads} "
                  f"thread(s), the {engine} engine; --calibrate measures them here (a few steps each; Newton "
                  "refits by a few refits)", highlight=False, soft_wrap=True)
    else:
        out.print(f"time: about {duration(total_seconds)} of training and retraining on {device} with {threads} "
                  f"thread(s) and the {engine} engine, from rates measured on this machine (a compile where one was "
                  "measured, no curvature, estimates or metrics; Newton refits at their measured seconds per refit)")
    missing_files = _missing_files(compiled)
    if missing_files:
        out.print(f"note: {missing_files}; task hashes cover the files once they are there")


def _pilot_note(loaded: Any, db: str) -> None:
    """Before a study's first results, say that the seeds its claims need follow from a pilot's spread."""
    declared = loaded.study.claims
    if not declared or (Path(db).exists() and store_queries.claim_rows(db, [loaded.study.study])):
        return
    repeats = loaded.study.repeats
    pilot = "this run is that pilot" if repeats >= 3 else f"repeats: {repeats} is too few for one (at least 3)"
    out.print(f"claims: {len(declared)} declared; how many seeds settle them follows from the spread between seeds "
              f"of a pilot run ({pilot}); inflang claims then says, for each unresolved claim, the seeds it needs "
              "and their time", highlight=False, soft_wrap=True)


def _loops(compiled: Plan) -> list[str]:
    """What the run will compute one at a time because vmap cannot batch the study's own module (its probe)."""
    from inflang.spec import CustomModel

    found: list[str] = []
    for cell in compiled.selected_cells():
        model = cell.cell.study.model
        if isinstance(model, CustomModel):
            found += [line for line in model.loops() if line not in found]
    return found


def _missing_files(compiled: Plan) -> str | None:
    """Which data files a plan's study lacks (it can be priced, not run)."""
    from inflang.compiling.datadigest import dataset_files
    from inflang.spec import FileDataset
    from inflang.spec.dataset import expected_files

    for cell in compiled.selected_cells():
        spec = cell.cell.study.dataset
        if isinstance(spec, FileDataset) and not spec.download:
            expected, _ = expected_files(spec.name)
            if len(dataset_files(spec)) < len(expected):
                return f"the {spec.name} files are not in {spec.root} yet (inflang run needs them)"
    return None


def _rounds_summary(summaries: list[Any]) -> Any:
    """One summary of the rounds of --until-settled: the tasks every round ran, those reused from before the
    command, and the last round's cells, failures and log."""
    last = summaries[-1]
    ran = sum(s.ran for s in summaries)
    return replace(last, ran=ran, cached=max(last.cached - (ran - last.ran), 0))


def _run_stopped(exc: BaseException, db: str) -> typer.Exit:
    """How a run that stopped early says so: a study's own error as it is; a setup problem, or the database
    in use by another process longer than INFLANG_DB_WAIT, with exit code 2; results that could not be written
    with 1; an interrupt with 130 (finished tasks are saved)."""
    if isinstance(exc, KeyboardInterrupt):
        return _fail(f"\ninterrupted: finished tasks are saved in {db}; run the same command again to resume", 130)
    if isinstance(exc, StudyError):
        return _fail(str(exc))
    return _fail(f"error: {exc}", 1 if isinstance(exc, StorageError) else 2)


@app.command()
def run(
    study: str = STUDY_ARG,
    db: str = typer.Option("inflang.duckdb", help=DB_HELP),
    memory_budget: str = typer.Option(None, "--memory-budget", help=MEMORY_HELP, show_default=False),
    threads: int = typer.Option(1, min=1, help="torch threads in all (small models run fastest on 1 per "
                                "process; with --workers they are shared among the workers)."),
    workers: int = typer.Option(1, min=1, help="Run independent tasks in this many processes."),
    executor: str = typer.Option("local", help="local | ray"),
    address: str = typer.Option(None, help="Ray cluster address (ray start --head; 'auto'); default: a local "
                                "Ray started for this run.", show_default=False),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Run tasks that failed before again."),
    device: str = typer.Option("cpu", help="cpu | cuda | cuda:N | auto (CUDA when available). CPU runs repeat "
                               "bit for bit; see docs/language.md for GPU determinism."),
    gpus_per_task: float = typer.Option(1.0, "--gpus-per-task", min=0.01, max=64,
                                        help="With --executor ray and a CUDA device: the GPU share each task "
                                        "requests (0.25 runs four small tasks per GPU)."),
    select: list[str] = typer.Option(None, "--select", help=SELECT_HELP, show_default=False),
    engine: str = typer.Option(None, help="auto | compiled | eager: how retraining steps run. compiled fuses "
                               "each step with torch.compile; auto (the default, or INFLANG_ENGINE) compiles "
                               "retraining long enough to pay for it. Recorded in runs.engine and tasks.engine.",
                               show_default=False),
    until_settled: bool = typer.Option(False, "--until-settled", help="After the study's seeds, add seeds "
                                       "round by round to the cells of unresolved claims, judging them "
                                       "sequentially, until each settles (docs/language.md, Run until settled)."),
    time_budget: str = typer.Option(None, "--time-budget", help="With --until-settled: stop adding rounds once "
                                    "the next would pass this wall-clock time (90s, 30m, 2h).", show_default=False),
    max_seeds: int = typer.Option(None, "--max-seeds", min=1, max=SEQUENTIAL_MAX, help="With --until-settled: "
                                  f"the last look's seeds (default {DEFAULT_MAX_SEEDS}; fixed for a claim by its "
                                  "first such run).",
                                  show_default=False),
) -> None:
    """Run a study: train, estimate, retrain for ground truth, score; results go to the database.

    Finished tasks are reused, so an interrupted run resumes where it stopped and a finished study
    computes nothing when run again. Seeds that --until-settled added are kept by later runs.
    """
    try:
        options = run_options(time_budget=time_budget, select=select, threads=threads,
                              workers=workers, executor=executor, address=address, retry_failed=retry_failed,
                              device=device, gpus_per_task=gpus_per_task, engine=engine,
                              until_settled=until_settled, max_seeds=max_seeds)
    except UsageError as exc:
        raise _fail(f"error: {exc}") from None
    loaded = _load(study, probe=True)
    _warn_float_labels(loaded)
    try:  # with the seeds --until-settled added, which later runs keep
        compiled = selected(api_plan(loaded, db), select)
        options = replace(options, memory_budget=parse_bytes(memory_budget))
        if until_settled:  # what the study file alone decides, before the database is opened
            check(loaded, max_seeds)
    except StudyError as exc:
        raise _fail(str(exc)) from None
    except UsageError as exc:
        raise _fail(f"error: {exc}") from None
    try:
        store = Store(db)
    except UsageError as exc:
        raise _fail(f"error: {exc}") from None
    from inflang.api import execute_plan
    from runners.errors import SetupError

    err.print(f"results go to {Path(db).resolve()}", highlight=False)
    events = RichEvents(err, (options.memory_budget, requested_engine(engine), device, threads), study)

    summaries: list[Any] = []

    def execute_once(plan_: Plan) -> Any:
        summaries.append(execute_plan(plan_, store, events=events, **options.backend()))
        return summaries[-1]

    rounds = None
    try:
        if until_settled:  # --select is refused with it, so ``compiled`` selects every cell, as the rounds do
            rounds = run_until_settled(loaded, store, lambda cells: execute_once(compile_study(cells)),
                                       options.time_budget, max_seeds,
                                       lambda text: err.print(text, highlight=False, markup=False), workers)
            summary = _rounds_summary(summaries)
        else:
            summary = execute_once(compiled)
    except (StudyError, SetupError, StorageError, UsageError, KeyboardInterrupt) as exc:
        events.stop()
        store.close()
        raise _run_stopped(exc, db) from None
    events.stop()
    store.close()
    chosen = None if compiled.selected is None else [c.cell.params for c in compiled.selected_cells()]
    try:  # the results are saved; reading them back can still find the database busy for too long
        print_summary(db, loaded.study.study, chosen)
        print_diagnostics(db, loaded.study.study, chosen)
        if loaded.study.claims:
            print_claims(claims_rows(db, [loaded.study.study]), False)
    except UsageError as exc:
        raise _fail(f"error: {exc} (the run's results are saved: inflang report {loaded.study.study} shows "
                    "them)") from None
    failed_cells = [c for c, (s, _) in summary.cell_status.items() if s == "failed"]
    out.print(f"ran {summary.ran} tasks, reused {summary.cached}; {len(failed_cells)} of "
              f"{len(summary.cell_status)} cells failed" + (" (messages above; rerun failed tasks with "
                                                            "--retry-failed)" if failed_cells else ""))
    if rounds is not None:
        out.print(f"until settled: {rounds.rounds} round{'s' if rounds.rounds != 1 else ''} added "
                  f"{rounds.cells_added} seed cells in {duration(rounds.seconds)}; stopped: {rounds.stopped}",
                  highlight=False, soft_wrap=True)
    if summary.log:
        out.print(f"log: {summary.log}", highlight=False)
    if failed_cells:
        raise typer.Exit(1)


@app.command()
def query(
    sql: str = typer.Argument(None, help="One read-only SQL statement, e.g. \"SELECT * FROM metrics\".",
                              show_default=False),
    db: str = typer.Option("inflang.duckdb", help=DB_HELP),
    format: str = typer.Option("table", "--format", help="table | csv | json | parquet (parquet needs --out)"),
    out_file: str = typer.Option(None, "--out", help="Write the result to this file instead of the terminal."),
    examples: bool = typer.Option(False, "--examples", help="Print eleven useful queries and exit."),
) -> None:
    """Query the results with SQL (the database is opened read-only).

    Tables and views: studies, cells, runs, models, splits, influence, influence_pairs, metrics,
    metric_replicates, cell_results, sweep_results (pooled over seeds), ground_truths, group_influence,
    responses, refits (see docs/language.md).
    """
    if examples:
        from inflang.cli.examples import text as example_queries

        sys.stdout.write(example_queries())
        return
    if sql is None:
        raise _fail("error: give a SQL statement (or --examples for some to start from)")
    if format not in ("table", "csv", "json", "parquet"):
        raise _fail(f"error: --format: '{format}' is not one of table, csv, json, parquet")
    if format == "parquet" and not out_file:
        raise _fail("error: --format parquet writes a file; add --out FILE")
    if out_file and Path(out_file).is_dir():
        raise _fail(f"error: --out: {out_file} is a directory")
    try:
        if format == "parquet":
            err.print(f"wrote {write_parquet(db, sql, out_file)} rows to {out_file}")
            return
        columns, rows = run_query(db, sql)
    except UsageError as exc:
        raise _fail(f"error: {exc}") from None
    if format == "table" and not out_file:
        table = Table(*columns)
        for r in rows:
            table.add_row(*("NULL" if v is None else str(v) for v in r))
        out.print(table)
        return
    rendered = as_json(columns, rows) if format == "json" else as_csv(columns, rows)
    if out_file:
        Path(out_file).write_text(rendered)
        err.print(f"wrote {len(rows)} rows to {out_file}")
    else:
        sys.stdout.write(rendered)


@app.command()
def init(
    name: str = typer.Argument(..., help="The new study's name, e.g. my-study.", show_default=False),
    out_dir: str = typer.Option(".", "--out", help="Folder to write NAME.yaml into."),
) -> None:
    """Write a commented starter study, NAME.yaml, ready to run and edit, and study.schema.json beside it (the
    editor schema its first line points at, for completion and checking without a network)."""
    if not is_study_name(name):
        raise _fail(f"error: '{name}' is not a study name: use lowercase letters, digits, '-' and '_'")
    target = Path(out_dir) / f"{name}.yaml"
    if target.exists():
        raise _fail(f"error: {target} exists; pick another name or remove it")
    from inflang.cli.starter import starter
    from inflang.spec import Study

    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(starter(name))
    schema_file = target.parent / "study.schema.json"
    schema_file.write_text(json.dumps(Study.model_json_schema(), indent=2) + "\n")  # refreshed if it is there
    out.print(f"wrote {target} and {schema_file}; check it with: inflang validate {target}")


@app.command(name="ls")
@app.command(name="status", help="Alias of ls: the studies in a database, their cells and last run.")
def list_studies(db: str = typer.Option("inflang.duckdb", help=DB_HELP)) -> None:
    """List the studies in a database with their cells and when they last ran (alias: status)."""
    try:
        columns, rows = store_queries.studies_overview(db)
    except UsageError as exc:
        raise _fail(f"error: {exc}") from None
    table = Table(*columns)
    for r in rows:
        table.add_row(*("-" if v is None else str(v) for v in r))
    out.print(table)


@app.command()
def compare(
    studies: list[str] = typer.Argument(..., help="Two or more study names.", show_default=False),
    db: str = typer.Option("inflang.duckdb", help=DB_HELP),
    metric: str = typer.Option("spearman", help="Which metric to put side by side."),
) -> None:
    """Put a metric of several studies side by side, matching cells by their swept values.

    Each value is the mean over seeds and test points with its 95% interval; the last columns give the
    difference from the first study, paired by seed and test point, and whether its interval excludes 0.
    """
    if len(studies) < 2:
        raise _fail("error: compare needs at least two studies")
    from inflang.results.pooling import difference, per_seed

    try:
        missing = store_queries.missing_studies(db, studies)
        if missing:
            raise UsageError(f"no study {', '.join(missing)} in {db}")
        with Store(db, read_only=True).reading() as con:
            sides = {s: per_seed(con, s, metric.replace("'", "")) for s in studies}
    except UsageError as exc:
        raise _fail(f"error: {exc}") from None
    from inflang.results.pooling import pool

    keys = sorted({(k[0], k[1]) for side in sides.values() for k in side}, key=lambda k: (k[0], k[1] or ""))
    if not keys:
        raise _fail(f"error: no '{metric}' rows in {', '.join(studies)}")
    first = studies[0]
    table = Table("swept values", "estimator", title=f"{metric}: mean over seeds and test points [95% interval]; "
                  f"differences from {first}, paired by seed and test point")
    for name in [*studies, *(f"{s} - {first}" for s in studies[1:])]:
        table.add_column(name, no_wrap=True)
    paired_any = False
    for params, estimator in keys:
        cells = []
        for s in studies:
            rows = sides[s].get((params, estimator, metric))
            pooled = pool((params, estimator, metric), rows) if rows else None
            cells.append(interval_text(pooled.value, pooled.ci_low, pooled.ci_high) if pooled else "-")
        base = sides[first].get((params, estimator, metric))
        for s in studies[1:]:
            other = sides[s].get((params, estimator, metric))
            if not base or not other:
                cells.append("-")
                continue
            diff = difference((params, estimator), other, base)
            paired_any = True
            verdict = {True: "resolved", False: "not resolved",
                       None: "no spread" if diff.no_spread else "no interval"}[diff.resolved]
            cells.append(f"{interval_text(diff.estimate, diff.ci_low, diff.ci_high)} {verdict} "
                         f"({diff.seeds} seed{'s' if diff.seeds != 1 else ''}, {diff.test_points} test points)")
        table.add_row(label(json.loads(params)), estimator or "-", *cells)
    out.print(table)
    if not paired_any:
        out.print(f"nothing pairs: no swept values and estimator that {first} shares with "
                  f"{', '.join(studies[1:])} (differences need the same swept values on both sides)",
                  highlight=False)


@app.command(name="claims")
def claims_command(
    studies: list[str] = typer.Argument(..., help="One or more study names.", show_default=False),
    db: str = typer.Option("inflang.duckdb", help=DB_HELP),
) -> None:
    """Print the verdicts of the studies' claims: supported, contradicted, negligible, unresolved or not
    evaluable, each with its statistic and 95% interval (claims are evaluated by inflang run). A study not in
    the database is named on one line and the others are shown; exit code 2 only when none is there."""
    try:
        missing = store_queries.missing_studies(db, studies)
        found = [s for s in studies if s not in missing]
        if not found:
            known = ", ".join(store_queries.study_names(db)) or "none"
            raise UsageError(f"no study {', '.join(missing)} in {db} (studies there: {known})")
        rows = claims_rows(db, found)
    except UsageError as exc:
        raise _fail(f"error: {exc}") from None
    if missing:
        err.print(f"note: no study {', '.join(missing)} in {db} (not run into it yet?); showing "
                  f"{', '.join(found)}", markup=False, highlight=False, soft_wrap=True)
    if not rows:
        raise _fail(f"error: {', '.join(found)} declare no claims (add a claims: section and run again)")
    print_claims(rows, len(studies) > 1)


@app.command()
def report(
    study: str = typer.Argument(..., help="The study's name (its 'study:' key).", show_default=False),
    db: str = typer.Option("inflang.duckdb", help=DB_HELP),
    out_dir: str = typer.Option(None, "--out", help="Also write report.html (figures), summary.csv and "
                                "influence.csv here."),
    select: list[str] = typer.Option(None, "--select", help=SELECT_HELP, show_default=False),
) -> None:
    """Summarise one study: per sweep point and estimator, the correlations and the models' curvature;
    with --out, an HTML report with the paper's figures (needs matplotlib: pip install 'inflang\\[plot]').

    Numbers are pooled over seeds with 95% intervals; --select picks sweep points (and the cells whose
    figures are drawn)."""
    if not is_study_name(study):
        raise _fail(f"error: '{study}' is not a study name (lowercase letters, digits, '-' and '_')")
    try:
        if store_queries.missing_studies(db, [study]):
            known = ", ".join(store_queries.study_names(db)) or "none"
            raise UsageError(f"no study '{study}' in {db} (studies there: {known})")
        from inflang.compiling.selector import select as select_cells

        registered = store_queries.cell_params(db, study)
        chosen = select_cells(select, registered)
        points = None if chosen is None else [p for c, p in registered if c in chosen]
        claim_rows = claims_rows(db, [study])
        if claim_rows:
            print_claims(claim_rows, False)
        print_summary(db, study, points)
        print_diagnostics(db, study, points)
        cols, rows = store_queries.trained_models(db, study)
    except UsageError as exc:
        raise _fail(f"error: {exc}") from None
    table = Table(*cols, title="trained models")
    for r in rows:
        if chosen is not None and r[0] not in chosen:
            continue
        table.add_row(*("-" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v) for v in r))
    out.print(table)
    if out_dir:
        target = Path(out_dir)
        target.mkdir(parents=True, exist_ok=True)
        for name, table_of in (("summary.csv", lambda: summary(db, study, points)),
                               ("influence.csv", lambda: store_queries.influence_of(db, study))):
            columns, data = table_of()
            with open(target / name, "w", newline="") as fh:
                writer = csv.writer(fh)
                writer.writerow(columns)
                writer.writerows(data)
        out.print(f"wrote {target / 'summary.csv'} and {target / 'influence.csv'}")
        from inflang.results.report import build

        try:
            built = build(Path(db), study, target, chosen)
        except UsageError as exc:
            err.print(f"note: {exc}", markup=False)
            return
        out.print(f"wrote {built.html_path} with {len(built.figures)} figures")


@app.command()
def gc(
    db: str = typer.Option("inflang.duckdb", help=DB_HELP),
    dry_run: bool = typer.Option(False, "--dry-run", help="Only say what would be removed."),
) -> None:
    """Remove artifacts in .inflang/ that no study in the database references (and unfinished temp files)."""
    try:
        referenced = store_queries.referenced_tasks(db)
    except UsageError as exc:
        raise _fail(f"error: {exc}") from None
    root = Path(db).parent / ".inflang" / "artifacts"
    doomed = [p for p in root.rglob("*") if p.is_file() and (p.name.startswith(".tmp-")
                                                             or p.stem not in referenced)]
    size = sum(p.stat().st_size for p in doomed)
    if not dry_run:
        for p in doomed:
            p.unlink()
    verb = "would remove" if dry_run else "removed"
    out.print(f"{verb} {len(doomed)} files ({size / 1e6:.1f} MB); {len(referenced)} tasks are referenced")


@app.command()
def schema() -> None:
    """Print the JSON Schema of a study file (for editor autocompletion and validation)."""
    from inflang.spec import Study

    sys.stdout.write(json.dumps(Study.model_json_schema(), indent=2) + "\n")


@app.command()
def version() -> None:
    """Print the inflang version."""
    out.print(__version__)


def _reflowed(text: str) -> str:
    """A docstring with each paragraph on one line: rich help keeps a docstring's line breaks, which then fall
    mid-phrase at any terminal width."""
    import inspect

    return "\n\n".join(" ".join(p.split()) for p in inspect.cleandoc(text).split("\n\n"))


for _command in app.registered_commands:
    _command.help = _reflowed(_command.help or (_command.callback.__doc__ if _command.callback else None) or "")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
