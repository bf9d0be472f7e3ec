"""The Python API for notebooks: load a study, run it, and query the results.

    import inflang
    study = inflang.load("studies/quickstart.yaml")
    results = inflang.run(study, db="inflang.duckdb", select=["depth=2"], workers=2)
    results.table                                     # sweep_results rows of the study (its swept paths as columns)
    results.claims, results.diagnostics               # verdicts and health checks; results.df() for pandas
    con = inflang.connect("inflang.duckdb")           # a read-only snapshot: runs go on while it is open
    con.sql("SELECT * FROM metrics").df()             # pandas (pip install 'inflang[pandas]'; .pl() for polars)
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb

from inflang.compiling.cost import ENGINES
from inflang.compiling.plan import Plan, compile_study
from inflang.compiling.pricing import COMPILE, COMPILE_FAILED, Rates, Workload, engine_choices
from inflang.compiling.validate import LoadedStudy, load_study, with_repeats
from inflang.errors import UsageError
from inflang.results import store as queries
from inflang.results.store import Store, check_db_path
from inflang.running.rounds import parse_duration
from inflang.running.scheduler import Events, RunSummary, execute
from inflang.spec import Study
from inflang.spec.base import CodeFields


def code_folders(study: Study) -> list[str]:
    """The folders a study's own code is looked for in (its custom dataset, model and estimators)."""
    specs = [study.dataset, study.model, *study.estimators]
    return [s.folder for s in specs if isinstance(s, CodeFields) and s.folder is not None]


def probe_code(study: Study) -> Study:
    """A study with its own code's sizes learned by running it once (``runners.custom.probe``; torch is imported
    only for a study that names code of its own)."""
    from runners.custom import probe

    return probe(study)


FLOAT_LABELS = "warning: labels are float: regression with the squared error; return integers for classification"


def float_label_warning(loaded: LoadedStudy) -> str | None:
    """One positioned line when the study's own loader returns whole-number float targets (0.0/1.0): documented
    as regression with the squared error, and rarely what was meant; None otherwise."""
    from inflang.errors import Problem
    from inflang.spec import CustomDataset

    if any(isinstance(c.study.dataset, CustomDataset) and c.study.dataset.info().whole_targets for c in loaded.cells):
        return Problem(loaded.document.position(("dataset", "loader"), True), "dataset.loader", FLOAT_LABELS).format()
    return None


def load(path: str | Path) -> LoadedStudy:
    """Load and validate a study file, running its own code (if any) once to learn its sizes (raises
    inflang.errors.StudyError with every problem placed); a loader returning float 0/1 labels gives a
    UserWarning (``float_label_warning``), as the CLI prints it."""
    loaded = load_study(path, probe=probe_code)
    line = float_label_warning(loaded)
    if line is not None:
        warnings.warn(line, UserWarning, stacklevel=2)
    return loaded


def plan(study: LoadedStudy | str | Path, db: str | Path | None = None) -> Plan:
    """The content-addressed tasks a study compiles into; with ``db``, with the seeds ``--until-settled`` added
    there (as ``inflang plan`` and ``run`` compile it)."""
    loaded = study if isinstance(study, LoadedStudy) else load(study)
    if db is not None:
        loaded = with_repeats(loaded, queries.study_added_repeats(db, loaded.study.study))
    return compile_study(loaded)


def selected(compiled: Plan, expressions: list[str] | None) -> Plan:
    """The plan with only the cells ``expressions`` pick (as ``--select``: "depth=2", a cell id prefix; None:
    every cell); raises inflang.errors.UsageError for an expression that matches nothing."""
    from inflang.compiling.selector import select

    return compiled.select(select(expressions, [(c.cell.cell_id, c.cell.params) for c in compiled.cells]))


@dataclass
class Results:
    """What ``run`` returns: the run's counts (``summary``) and the study's results as the CLI prints them."""

    summary: RunSummary
    table: list[dict[str, Any]] = field(default_factory=list)  # sweep_results rows: one per point, estimator, metric
    claims: list[dict[str, Any]] = field(default_factory=list)  # the claims table's rows
    diagnostics: list[dict[str, Any]] = field(default_factory=list)  # the health checks that warn

    @property
    def ran(self) -> int:
        return self.summary.ran

    @property
    def cached(self) -> int:
        return self.summary.cached

    @property
    def failed(self) -> dict[str, str]:
        return self.summary.failed

    def df(self) -> Any:
        """``table`` as a pandas DataFrame (pip install 'inflang[pandas]')."""
        try:
            import pandas as pd
        except ImportError:
            raise ImportError("Results.df() needs pandas: pip install 'inflang[pandas]'") from None
        return pd.DataFrame(self.table)


def run(study: LoadedStudy | str | Path, db: str | Path = "inflang.duckdb", *, select: list[str] | None = None,
        workers: int = 1, memory_budget: int | None = None, threads: int = 1, retry_failed: bool = False,
        device: str = "cpu", engine: str | None = None) -> Results:
    """Run a study into ``db`` (finished tasks are reused), only the cells ``select`` picks (as ``--select``:
    "depth=2", "model={arch: cnn}"; None: every cell), in ``workers`` processes, on ``device`` (cpu | cuda |
    cuda:N | auto) with the retraining ``engine`` (auto | compiled | eager; None: INFLANG_ENGINE or auto);
    returns its Results (raises inflang.errors.UsageError for a ``select`` that matches nothing)."""
    compiled = selected(plan(study, db), select)
    name = compiled.study.study.study
    with Store(db) as store:
        summary = execute_plan(compiled, store, memory_budget=memory_budget, threads=threads, workers=workers,
                               retry_failed=retry_failed, device=device, engine=engine)
    return Results(summary, queries.pooled_results(db, name), queries.claim_rows(db, [name]),
                   queries.study_diagnostics(db, name))


def execute_plan(compiled: Plan, store: Store, *, memory_budget: int | None = None, threads: int = 1,
                 retry_failed: bool = False, events: Events | None = None, workers: int = 1, executor: str = "local",
                 address: str | None = None, device: str = "cpu", gpus_per_task: float = 1.0,
                 engine: str | None = None) -> RunSummary:
    """Open a backend on the torch side (``runners.executors``: threads, device, data files; local, a pool of
    ``workers`` processes, or Ray) and let the scheduler run the plan's selected tasks on it. Raises
    ``runners.errors.SetupError`` when the run cannot start and ``inflang.errors.StorageError`` when results
    cannot be written."""
    events = events or Events()
    if executor == "local" and not _pending(compiled, store, retry_failed):
        idle = _Idle(device, requested_engine(engine), workers)
        return execute(compiled, store, idle, idle.compute, retry_failed=retry_failed, events=events, threads=threads)
    from runners.executors import compute_here, open_backend  # torch is imported only when something runs

    datasets = [c.cell.study.dataset for c in compiled.selected_cells()]
    folders = [f for c in compiled.selected_cells() for f in code_folders(c.cell.study)]
    backend = open_backend(executor, workers, threads, memory_budget, device, address, gpus_per_task, datasets,
                           events.models_retrained, engine, folders[0] if folders else None)
    here = backend.device if executor != "ray" else "cpu"  # a missing dependency is rebuilt in this process
    chosen = None
    if backend.engine == "auto":  # decided once, here, from the rates measured on this machine so far
        chosen = engine_choices(list(compiled.selected_tasks().values()), memory_budget,
                                device if executor == "ray" else backend.device, 1 if executor == "ray" else threads,
                                Rates())
    return execute(compiled, store, backend, compute_here(memory_budget, here, backend.engine),
                   retry_failed=retry_failed, events=events, threads=threads, engines=chosen)


def _pending(compiled: Plan, store: Store, retry_failed: bool) -> bool:
    """Whether any selected task has still to run (no record, or failed and ``retry_failed``)."""
    selected = list(compiled.selected_tasks())
    status = store.task_status(selected)
    return any(h not in status or (status[h][0] == "failed" and retry_failed) for h in selected)


class _Idle:
    """The backend of a run with nothing to compute (a rerun of a finished study): it records the run and
    pools the results without starting torch or any worker; ``submit`` is never called."""

    capacity = 1
    reports_progress = False

    def __init__(self, device: str, engine: str, workers: int) -> None:
        self.device, self.engine = device, engine
        self.where = "local" if workers == 1 else f"local x{workers}"

    def submit(self, key: str, kind: str, inputs: dict[str, Any], deps: dict[str, Any]) -> None:
        raise RuntimeError(f"a run with nothing to compute was handed {kind} task {key}")

    def wait(self) -> list[tuple[str, Any, BaseException | None, float]]:
        return []

    def close(self) -> None:
        pass

    def compute(self, kind: str, inputs: dict[str, Any], deps: dict[str, Any]) -> Any:
        raise RuntimeError(f"a run with nothing to compute was asked to rebuild {kind}")


def calibrate(workloads: dict[str, Workload], rates: Rates, device: str = "cpu", threads: int = 1) -> None:
    """Measure the seconds per model-step of each workload (by its key) on ``device`` with ``threads`` torch
    threads (``runners.calibrate``) and save them in ``rates``. Raises ``runners.errors.SetupError`` for a
    device that is not here."""
    import torch

    from runners.calibrate import seconds_per_model_step, seconds_per_newton_refit
    from runners.device import configure, resolve

    where = resolve(device)
    configure(where)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for key, work in workloads.items():
            if work.spec.get("solver") == "newton":
                per_refit, hessian = seconds_per_newton_refit(work.spec, work.models, where)
                rates.put(key, per_refit)
                rates.put(key + "/hessian", hessian)
            else:
                seconds, ran, compile_seconds = seconds_per_model_step(work.spec, work.models, work.engine, where)
                rates.put(key, seconds)
                if work.engine == "compiled":  # compiling failed here: auto must never choose it
                    rates.put(key + COMPILE, compile_seconds if ran == "compiled" else COMPILE_FAILED)
    finally:
        torch.set_num_threads(before)
        rates.save()


def connect(db: str | Path = "inflang.duckdb", read_only: bool = True) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection to the results; use .sql(...).df() / .pl() / .fetchall().

    Read-only (the default): a snapshot of the database as of the call (a private copy, taken in the moment no
    run is writing), which holds nothing: runs go on writing while it is open, and it does not see what they
    write after the call; call ``connect()`` again for newer rows. The copy costs a read of the file.
    ``read_only=False``: the database itself, writable; while it is open every run and query on the database
    waits (up to INFLANG_DB_WAIT seconds), so close it soon."""
    path = check_db_path(db)
    if read_only:
        return queries.snapshot(path)
    return queries.writable(path)


# --- the command line's options, checked and resolved (the CLI prints what these raise) ---------------------------

@dataclass(frozen=True)
class RunOptions:
    """How ``inflang run`` executes a plan: its flags checked, sizes and durations parsed. ``backend()`` gives
    ``execute_plan``'s keywords; ``until_settled`` with its ``time_budget`` (seconds) and ``max_seeds``."""

    memory_budget: int | None = None
    threads: int = 1
    workers: int = 1
    executor: str = "local"
    address: str | None = None
    retry_failed: bool = False
    device: str = "cpu"
    gpus_per_task: float = 1.0
    engine: str | None = None
    until_settled: bool = False
    time_budget: float | None = None
    max_seeds: int | None = None

    def backend(self) -> dict[str, Any]:
        return {"memory_budget": self.memory_budget, "threads": self.threads, "retry_failed": self.retry_failed,
                "workers": self.workers, "executor": self.executor, "address": self.address, "device": self.device,
                "gpus_per_task": self.gpus_per_task, "engine": self.engine}


def run_options(*, memory_budget: str | None = None, time_budget: str | None = None, select: list[str] | None = None,
                **flags: Any) -> RunOptions:
    """``inflang run``'s flags as RunOptions; raises UsageError naming the flag that is wrong (or the pair that
    does not go together). ``flags``: the other RunOptions fields, as given. (The CLI parses ``memory_budget``
    with ``parse_bytes`` after the study has loaded, so a study's own error is reported first.)"""
    executor, engine = flags.get("executor", "local"), flags.get("engine")
    until_settled = flags.get("until_settled", False)
    if executor not in ("local", "ray"):
        raise UsageError(f"--executor: '{executor}' is not one of local, ray")
    check_engine(engine)
    if executor == "ray":
        try:
            import ray  # noqa: F401
        except ImportError:
            raise UsageError("--executor ray needs Ray: pip install 'inflang[ray]'") from None
    if not until_settled and (time_budget is not None or flags.get("max_seeds") is not None):
        raise UsageError(f"{'--time-budget' if time_budget is not None else '--max-seeds'} goes with --until-settled")
    if until_settled and select:
        raise UsageError("--until-settled judges the study's claims over all their cells: leave out --select")
    try:
        seconds = None if time_budget is None else parse_duration(time_budget)
    except ValueError as exc:
        raise UsageError(f"--time-budget: {exc}") from None
    return RunOptions(memory_budget=parse_bytes(memory_budget), time_budget=seconds, **flags)


def check_engine(engine: str | None) -> None:
    """``--engine``, when given, is one of ENGINES."""
    if engine is not None and engine not in ENGINES:
        raise UsageError(f"--engine: '{engine}' is not one of {', '.join(ENGINES)}")


def requested_engine(engine: str | None) -> str:
    """The engine asked for: ``--engine``, else INFLANG_ENGINE, else auto (as given; ``resolved_engine`` checks)."""
    return engine or os.environ.get("INFLANG_ENGINE", "auto")


def resolved_engine(engine: str | None) -> str:
    """The engine a run uses: ``--engine``, else INFLANG_ENGINE, else auto (each checked)."""
    check_engine(engine)
    found = requested_engine(engine)
    if found not in ENGINES:
        raise UsageError(f"INFLANG_ENGINE: '{found}' is not one of {', '.join(ENGINES)}")
    return found


def parse_bytes(text: str | None) -> int | None:
    """``--memory-budget`` in bytes: 512MB, 4GB, 2GiB, 1e9 (None when not given)."""
    if text is None:
        return None
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    s = text.strip().lower().removesuffix("ib").removesuffix("b")
    try:
        if s and s[-1] in units:
            return int(float(s[:-1]) * units[s[-1]])
        return int(float(s))
    except ValueError:
        raise UsageError(f"--memory-budget: '{text}' is not a size (e.g. 512MB, 4GB)") from None
