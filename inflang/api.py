"""The Python API for notebooks: load a study, run it, and query the results.

    import inflang
    study = inflang.load("studies/quickstart.yaml")
    summary = inflang.run(study, db="inflang.duckdb")
    con = inflang.connect("inflang.duckdb")           # a read-only DuckDB connection
    con.sql("SELECT * FROM metrics").df()             # pandas, if installed (.pl() for polars)
"""

from __future__ import annotations

from pathlib import Path

import duckdb

from inflang.plan import Plan, compile_study
from inflang.pricing import Rates, Workload
from inflang.scheduler import Events, RunSummary, execute
from inflang.store import Store, check_db_path
from inflang.validate import LoadedStudy, load_study


def load(path: str | Path) -> LoadedStudy:
    """Load and validate a study file (raises inflang.errors.StudyError with every problem placed)."""
    return load_study(path)


def plan(study: LoadedStudy | str | Path) -> Plan:
    """The content-addressed tasks a study compiles into."""
    return compile_study(study if isinstance(study, LoadedStudy) else load_study(study))


def run(study: LoadedStudy | str | Path, db: str | Path = "inflang.duckdb", *, memory_budget: int | None = None,
        threads: int = 1, retry_failed: bool = False, device: str = "cpu", engine: str | None = None) -> RunSummary:
    """Run a study into ``db`` (finished tasks are reused) on ``device`` (cpu | cuda | cuda:N | auto) with the
    retraining ``engine`` (auto | compiled | eager; None: INFLANG_ENGINE or auto); returns the scheduler's
    RunSummary."""
    compiled = plan(study)
    with Store(db) as store:
        return execute_plan(compiled, store, memory_budget=memory_budget, threads=threads,
                            retry_failed=retry_failed, device=device, engine=engine)


def execute_plan(compiled: Plan, store: Store, *, memory_budget: int | None = None, threads: int = 1,
                 retry_failed: bool = False, events: Events | None = None, workers: int = 1, executor: str = "local",
                 address: str | None = None, device: str = "cpu", gpus_per_task: float = 1.0,
                 engine: str | None = None) -> RunSummary:
    """Open a backend on the torch side (``runners.executors``: threads, device, data files; local, a pool of
    ``workers`` processes, or Ray) and let the scheduler run the plan's selected tasks on it. Raises
    ``runners.errors.SetupError`` when the run cannot start and ``inflang.errors.StorageError`` when results
    cannot be written."""
    from runners.executors import compute_here, open_backend  # torch is imported only when something runs

    events = events or Events()
    datasets = [c.cell.study.dataset for c in compiled.selected_cells()]
    backend = open_backend(executor, workers, threads, memory_budget, device, address, gpus_per_task, datasets,
                           events.models_retrained, engine)
    here = backend.device if executor != "ray" else "cpu"  # a missing dependency is rebuilt in this process
    return execute(compiled, store, backend, compute_here(memory_budget, here, backend.engine),
                   retry_failed=retry_failed, events=events, threads=threads)


def calibrate(workloads: dict[str, Workload], rates: Rates, device: str = "cpu", threads: int = 1) -> None:
    """Measure the seconds per model-step of each workload (by its key) on ``device`` with ``threads`` torch
    threads (``runners.calibrate``) and save them in ``rates``. Raises ``runners.errors.SetupError`` for a
    device that is not here."""
    import torch

    from runners.calibrate import seconds_per_model_step
    from runners.device import configure, resolve

    where = resolve(device)
    configure(where)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for key, work in workloads.items():
            seconds, _ = seconds_per_model_step(work.spec, work.models, work.engine, where)
            rates.put(key, seconds)
    finally:
        torch.set_num_threads(before)
        rates.save()


def connect(db: str | Path = "inflang.duckdb", read_only: bool = True) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection to the results (read-only unless asked); use .df() / .pl() / .fetchall()."""
    path = check_db_path(db)
    return duckdb.connect(str(path), read_only=read_only)
