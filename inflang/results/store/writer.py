"""Writes to the result database (``Store``): a task's rows and its ``tasks`` entry in one transaction, so a
crash leaves no half-written task; cells, runs, pooled rows and claims."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import duckdb

from inflang import __version__
from inflang.errors import UsageError
from inflang.results.store.connections import (
    _HELD,
    _key,
    access,
    changed_elsewhere,
    check_db_path,
    existing_database,
    mark_seen,
)
from inflang.results.store.queries import added_repeats, sequential_designs
from inflang.results.store.schema import (
    MIGRATIONS,
    OUTPUT_TABLES,
    SCHEMA_VERSION,
    TABLES,
    VIEWS,
    Rows,
    TaskState,
    _sql_key,
    _swept_type,
    has_table,
)


def _refresh_cell_results(con: duckdb.DuckDBPyConnection) -> None:
    keys: dict[str, str] = {}  # swept path -> its column's type
    for (params,) in con.execute("SELECT DISTINCT params FROM cells").fetchall():
        for key, value in json.loads(params or "{}").items():
            keys[key] = _swept_type(keys.get(key), value)
    columns = "".join(
        f", {'TRY_CAST(' if kind != 'VARCHAR' else ''}json_extract_string(c.params, '$.\"{_sql_key(k)}\"')"
        f"{f' AS {kind})' if kind != 'VARCHAR' else ''} AS \"{_sql_key(k)}\"" for k, kind in sorted(keys.items()))
    con.execute(f"""
        CREATE OR REPLACE VIEW cell_results AS
        SELECT c.study, c.cell_id, c."repeat", c.status, m.estimator, m.metric, m.value, m.ci_low, m.ci_high,
               m.n_pairs, c.params{columns}
        FROM cells c JOIN metrics m ON m.study = c.study AND m.cell_id = c.cell_id AND m.test_index IS NULL""")
    con.execute(f"""
        CREATE OR REPLACE VIEW sweep_results AS
        SELECT c.study, c.estimator, c.metric, c.value, c.sd, c.ci_low, c.ci_high, c.seeds, c.test_points,
               c.params{columns}
        FROM pooled_rows c""")


def _task_status(con: duckdb.DuckDBPyConnection, hashes: Sequence[str]) -> dict[str, TaskState]:
    if not has_table(con, "tasks"):
        return {}
    rows = con.execute("SELECT task_hash, status, error, artifact_sha256 FROM tasks WHERE task_hash IN "
                       "(SELECT unnest(?::VARCHAR[]))", [list(hashes)]).fetchall()
    return {h: (s, e, a) for h, s, e, a in rows}


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


class Store:
    """One DuckDB database, opened for the length of each read or write only (``access``), so several
    processes share it. A writing Store creates or migrates the schema once, when constructed; a read-only
    one (queries, plans) writes nothing."""

    def __init__(self, path: str | Path, read_only: bool = False) -> None:
        self.path = existing_database(path) if read_only else check_db_path(path)
        self.read_only = read_only
        if not read_only:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise UsageError(f"{self.path}: cannot create the folder {self.path.parent} for the database "
                                 f"({exc.strerror or exc})") from None
            with self.transaction() as con:
                con.execute(TABLES)
                con.execute(MIGRATIONS)
                con.execute(VIEWS)
                self.refresh_cell_results()
                con.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", [str(SCHEMA_VERSION)])

    @property
    def artifacts(self) -> Path:
        """Where task artifacts live: ``.inflang/`` beside the database."""
        return self.path.parent / ".inflang"

    def close(self) -> None:
        """Nothing to release: a Store holds the database only inside ``reading`` and ``transaction``."""

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def reading(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection for the reads of one block, under the shared lock (other processes may read, none
        writes); inside ``transaction`` it is the writing connection."""
        with access(self.path, write=False) as con:
            yield con

    @contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A writing connection under the exclusive lock, in one transaction committed at the end (rolled back
        on an exception); a transaction nested in another joins it."""
        if self.read_only:
            raise RuntimeError(f"{self.path}: a write through a read-only Store")
        with access(self.path, write=True) as con:
            held = _HELD[_key(self.path)]
            if held.in_transaction:
                yield con
                return
            held.in_transaction = True
            try:
                con.execute("BEGIN TRANSACTION")
                try:
                    yield con
                except BaseException:
                    con.execute("ROLLBACK")
                    raise
                con.execute("COMMIT")
            finally:
                held.in_transaction = False

    def has_table(self, name: str) -> bool:
        """Whether the database has the table (a read-only Store may open one no run has written)."""
        with self.reading() as con:
            return has_table(con, name)

    def task_status(self, hashes: Sequence[str]) -> dict[str, TaskState]:
        """hash -> (status, error, artifact sha256) for the given tasks that have a record."""
        if not hashes:
            return {}
        with self.reading() as con:
            mark_seen(self.path)  # under the lock nobody writes: what is read is the state stamped
            return _task_status(con, hashes)

    def finished_elsewhere(self, hashes: Sequence[str]) -> dict[str, TaskState]:
        """``task_status`` of the given tasks when another process may have written the database since this
        one last wrote or read the statuses; {} (without opening it) when none did."""
        return self.task_status(hashes) if hashes and changed_elsewhere(self.path) else {}

    def record_study(self, study: str, spec_hash: str, spec_yaml: str, source: str,
                     cells: Sequence[tuple[str, int, int, dict[str, Any]]],
                     cell_tasks: Sequence[tuple[str, str, str | None, str]], description: str = "",
                     claims: Sequence[tuple[str, str]] = ()) -> None:
        """Register a study, its cells (status 'pending' unless known) and their task links, and its claims'
        definitions ((name, canonical JSON): a new or edited one is recorded with the time, and whether some of
        the study's cells already had results), atomically."""
        now = _now()
        with self.transaction() as con:
            existing = con.execute("SELECT created_at FROM studies WHERE study = ?", [study]).fetchone()
            created = existing[0] if existing else now
            con.execute("INSERT OR REPLACE INTO studies (study, spec_hash, spec_yaml, source_path, created_at, "
                        "updated_at, inflang_version, description) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        [study, spec_hash, spec_yaml, source, created, now, __version__, description])
            old = dict(con.execute("SELECT cell_id, status FROM cells WHERE study = ?", [study]).fetchall())
            known = {(c, d) for c, d in con.execute(
                "SELECT claim, definition FROM claim_declarations WHERE study = ?", [study]).fetchall()}
            after = "done" in old.values()
            new = [(study, name, definition, now, after) for name, definition in claims
                   if (name, definition) not in known]
            if new:
                con.executemany("INSERT INTO claim_declarations VALUES (?, ?, ?, ?, ?)", new)
            con.execute("DELETE FROM cells WHERE study = ?", [study])
            con.execute("DELETE FROM cell_tasks WHERE study = ?", [study])
            for cell_id, repeat, seed, params in cells:
                con.execute("INSERT INTO cells VALUES (?, ?, ?, ?, ?, ?, NULL)",
                            [study, cell_id, repeat, seed, json.dumps(params, sort_keys=True),
                             old.get(cell_id, "pending")])
            if cell_tasks:
                con.executemany("INSERT INTO cell_tasks VALUES (?, ?, ?, ?, ?)",
                                [(study, c, k, e, h) for c, k, e, h in cell_tasks])
            self.refresh_cell_results()

    def refresh_cell_results(self) -> None:
        """(Re)create the cell_results view (aggregated metrics per cell and estimator) and the
        sweep_results view (pooled over seeds), with every swept path of every study as a column of its own
        (NULL where a study does not sweep it)."""
        with self.transaction() as con:
            _refresh_cell_results(con)

    def write_claims(self, study: str, verdicts: Sequence[Any], adjust: str = "none",
                     definitions: Sequence[str] = ()) -> None:
        """Replace a study's claim verdicts (``inflang.results.claims.Verdict``) in one transaction, each with when its
        definition (canonical JSON, in the same order) was first declared."""
        with self.transaction() as con:
            con.execute("DELETE FROM claims WHERE study = ?", [study])
            declared = {(c, d): (t, a) for c, d, t, a in con.execute(
                "SELECT claim, definition, min(declared_at), bool_or(after_results) FROM claim_declarations "
                "WHERE study = ? GROUP BY ALL", [study]).fetchall()}
            if verdicts:
                con.executemany(
                    "INSERT INTO claims (study, claim, form, statistic, estimate, ci_low, ci_high, seeds, test_points, "
                    "verdict, relative_to_ceiling, detail, position, threshold, p_value, level, adjust, family, "
                    "health, declared_at, declared_after_results, seeds_needed, seeds_to_negligible, "
                    "seeds_for_smallest_effect, settle, settle_seconds, sequential, max_seeds, seeds_added, "
                    "seconds_added) VALUES (" + ", ".join(["?"] * 30) + ")",
                    [(study, v.claim, v.form, v.statistic, v.estimate, v.ci_low, v.ci_high, v.seeds, v.test_points,
                      v.verdict, v.relative_to_ceiling, v.detail, i, v.threshold,
                      v.p_value if math.isfinite(v.p_value) else None, v.level, adjust, len(verdicts), v.health,
                      *declared.get((v.claim, definitions[i] if i < len(definitions) else ""), (None, None)),
                      v.seeds_needed, v.seeds_to_negligible, v.seeds_for_smallest_effect, v.settle or None,
                      v.settle_seconds, v.max_seeds is not None, v.max_seeds, v.seeds_added, v.seconds_added)
                     for i, v in enumerate(verdicts)])

    def added_repeats(self, study: str) -> dict[str, int]:
        """Sweep point (``inflang.compiling.validate.point_key``) -> seeds in all, where ``--until-settled``
        added some."""
        with self.reading() as con:
            return added_repeats(con, study)

    def add_repeats(self, study: str, repeats: Mapping[str, int]) -> None:
        """Raise the seeds of these sweep points to the given totals (never lower them), in one transaction: a
        run killed after this resumes with the added cells, and a plain run keeps them."""
        if not repeats:
            return
        with self.transaction() as con:
            have = added_repeats(con, study)
            con.executemany("INSERT OR REPLACE INTO seed_additions VALUES (?, ?, ?)",
                            [(study, k, max(n, have.get(k, 0))) for k, n in sorted(repeats.items())])

    def start_sequential(self, study: str, claims: Sequence[tuple[str, str]], first: int, last: int
                         ) -> dict[tuple[str, str], tuple[int, int, int | None]]:
        """Record that these claims ((name, definition)) are judged sequentially with looks at ``first`` to
        ``last`` seeds, unless already recorded; returns every claim's recorded design (which an earlier run
        may have fixed differently)."""
        with self.transaction() as con:
            known = sequential_designs(con, study)
            new = [(study, name, d, first, last, _now()) for name, d in claims if (name, d) not in known]
            if new:
                con.executemany("INSERT INTO sequential_claims VALUES (?, ?, ?, ?, ?, ?, NULL)", new)
            return sequential_designs(con, study)

    def stop_sequential(self, study: str, looks: Sequence[tuple[str, str, int]]) -> None:
        """Freeze these sequential claims ((name, definition, seeds)) at the look where they settled: later
        evaluations read that many seeds, whatever other claims add to the cells they share."""
        if not looks:
            return
        with self.transaction() as con:
            con.executemany("UPDATE sequential_claims SET settled_seeds = ? WHERE study = ? AND claim = ? AND "
                            "definition = ? AND settled_seeds IS NULL", [(n, study, c, d) for c, d, n in looks])

    def write_pooled(self, study: str, rows: Sequence[Any]) -> None:
        """Replace a study's pooled rows (``inflang.results.pooling.Pooled``) in one transaction."""
        with self.transaction() as con:
            con.execute("DELETE FROM pooled_rows WHERE study = ?", [study])
            if rows:
                con.executemany("INSERT INTO pooled_rows VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                                [(study, r.params, r.estimator, r.metric, r.value, r.sd, r.ci_low, r.ci_high,
                                  r.seeds, r.test_points) for r in rows])

    def write_diagnostics(self, study: str, found: Sequence[Any]) -> None:
        """Replace a study's health checks (``inflang.results.diagnostics.Diagnostic``) in one transaction."""
        with self.transaction() as con:
            con.execute("DELETE FROM diagnostics WHERE study = ?", [study])
            if found:
                con.executemany("INSERT INTO diagnostics VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                                [(study, d.cell_id, d.subject, d.check, d.value if math.isfinite(d.value) else None,
                                  d.threshold, d.severity, d.message) for d in found])

    def write_aggregates(self, columns: Mapping[str, Sequence[Any]]) -> None:
        """Replace the aggregate rows (``inflang.results.pooling.task_aggregates``) of the tasks they name."""
        hashes = sorted(set(columns.get("task_hash", [])))
        if not hashes:
            return
        with self.transaction() as con:
            con.execute("DELETE FROM aggregate_rows WHERE task_hash IN (SELECT unnest(?::VARCHAR[]))", [hashes])
            names = list(columns)
            con.execute(f"INSERT INTO aggregate_rows ({', '.join(names)}) SELECT "
                        + ", ".join(f"unnest(?) AS {n}" for n in names), [list(columns[n]) for n in names])

    def start_run(self, run_id: str, study: str, executor: str, device: str, git_commit: str | None,
                  engine: str | None = None) -> None:
        import socket

        with self.transaction() as con:
            con.execute("INSERT INTO runs (run_id, study, started_at, executor, device, host, inflang_version, "
                        "git_commit, status, engine) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'running', ?)",
                        [run_id, study, _now(), executor, device, socket.gethostname(), __version__, git_commit,
                         engine])

    def end_run(self, run_id: str, status: str, ran: int, reused: int, failed: int) -> None:
        with self.transaction() as con:
            con.execute("UPDATE runs SET ended_at = ?, status = ?, tasks_run = ?, tasks_reused = ?, "
                        "tasks_failed = ? WHERE run_id = ?", [_now(), status, ran, reused, failed, run_id])

    def set_cell_status(self, study: str, statuses: Mapping[str, tuple[str, str | None]]) -> None:
        with self.transaction() as con:
            con.executemany("UPDATE cells SET status = ?, error = ? WHERE study = ? AND cell_id = ?",
                            [(s, e, study, c) for c, (s, e) in statuses.items()])

    def write_task(self, task_hash: str, kind: str, inputs: dict[str, Any], rows: Rows, seconds: float,
                   artifact_sha256: str | None, engine: str | None = None) -> None:
        """A finished task's rows and its 'done' record, in one transaction (replacing any earlier attempt)."""
        with self.transaction() as con:
            for table in OUTPUT_TABLES:
                con.execute(f"DELETE FROM {table} WHERE task_hash = ?", [task_hash])
            for table, columns in rows.items():
                if table not in OUTPUT_TABLES:
                    raise ValueError(f"unknown output table {table}")
                names = list(columns)
                values = [list(columns[c]) for c in names]
                quoted = ", ".join(f'"{c}"' for c in names)
                selects = ", ".join(f"unnest(?) AS \"{c}\"" for c in names)
                con.execute(f"INSERT INTO {table} (task_hash, {quoted}) SELECT ?, {selects}",
                            [task_hash, *values])
            con.execute("INSERT OR REPLACE INTO tasks (task_hash, kind, inputs, status, error, seconds, "
                        "artifact_sha256, finished_at, engine) VALUES (?, ?, ?, 'done', NULL, ?, ?, ?, ?)",
                        [task_hash, kind, json.dumps(inputs, sort_keys=True), seconds, artifact_sha256, _now(),
                         engine])

    def fail_task(self, task_hash: str, kind: str, inputs: dict[str, Any], error: str, seconds: float) -> None:
        """Record a task's failure, dropping any rows of an earlier attempt; a 'done' record (another run into
        the same database finished the task) is kept as it is."""
        with self.transaction() as con:
            found = con.execute("SELECT status FROM tasks WHERE task_hash = ?", [task_hash]).fetchone()
            if found and found[0] == "done":
                return
            for table in OUTPUT_TABLES:
                con.execute(f"DELETE FROM {table} WHERE task_hash = ?", [task_hash])
            con.execute("INSERT OR REPLACE INTO tasks (task_hash, kind, inputs, status, error, seconds, "
                        "artifact_sha256, finished_at) VALUES (?, ?, ?, 'failed', ?, ?, NULL, ?)",
                        [task_hash, kind, json.dumps(inputs, sort_keys=True), error, seconds, _now()])
