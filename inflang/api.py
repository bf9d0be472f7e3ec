"""The Python API for notebooks: load a study, run it, and query the results.

    import inflang
    study = inflang.load("studies/quickstart.yaml")
    summary = inflang.run(study, db="inflang.duckdb")
    con = inflang.connect("inflang.duckdb")           # a read-only DuckDB connection
    con.sql("SELECT * FROM metrics").df()             # pandas, if installed (.pl() for polars)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb

from inflang.plan import Plan, compile_study
from inflang.store import Store, check_db_path
from inflang.validate import LoadedStudy, load_study


def load(path: str | Path) -> LoadedStudy:
    """Load and validate a study file (raises inflang.errors.StudyError with every problem placed)."""
    return load_study(path)


def plan(study: LoadedStudy | str | Path) -> Plan:
    """The content-addressed tasks a study compiles into."""
    return compile_study(study if isinstance(study, LoadedStudy) else load_study(study))


def run(study: LoadedStudy | str | Path, db: str | Path = "inflang.duckdb", *, memory_budget: int | None = None,
        threads: int = 1, retry_failed: bool = False, device: str = "cpu") -> Any:
    """Run a study into ``db`` (finished tasks are reused) on ``device`` (cpu | cuda | cuda:N | auto); returns
    the executor's RunSummary."""
    from runners.executors import execute  # torch is imported only when something runs

    compiled = plan(study)
    with Store(db) as store:
        return execute(compiled, store, memory_budget=memory_budget, threads=threads, retry_failed=retry_failed,
                       device=device)


def connect(db: str | Path = "inflang.duckdb", read_only: bool = True) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection to the results (read-only unless asked); use .df() / .pl() / .fetchall()."""
    path = check_db_path(db)
    return duckdb.connect(str(path), read_only=read_only)
