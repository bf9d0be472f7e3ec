"""Small helpers shared by the tests."""

from __future__ import annotations

from pathlib import Path

import duckdb


def rows(db: Path, sql: str) -> list[tuple]:
    """All rows of a query on a results database, opened read-only and closed again."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()
