"""inflang: a declarative language for studies of how far influence estimates can be trusted.

Python API (see ``inflang.api``)::

    study = inflang.load("studies/quickstart.yaml")
    summary = inflang.run(study, db="inflang.duckdb")
    con = inflang.connect("inflang.duckdb")

Importing inflang does not import torch; ``run`` does, when something runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "connect", "load", "run"]


def load(path: str | Path) -> Any:
    """Load and validate a study file; see ``inflang.api.load``."""
    from inflang import api

    return api.load(path)


def run(study: Any, db: str | Path = "inflang.duckdb", **options: Any) -> Any:
    """Run a study into a database; see ``inflang.api.run``."""
    from inflang import api

    return api.run(study, db, **options)


def connect(db: str | Path = "inflang.duckdb", read_only: bool = True) -> Any:
    """A DuckDB connection to the results; see ``inflang.api.connect``."""
    from inflang import api

    return api.connect(db, read_only)
