"""The result database (DuckDB): schema, transactional writes per task, read-only queries.

Task outputs live in tables keyed by the task's hash (``train_results``, ``estimate_rows``, ...), so a task
shared by several cells or studies is stored once. The tables of LANGUAGE.md (``models``, ``influence``,
``metrics``, ``splits``) are views joining those outputs to cells through ``cell_tasks``. A task's rows and
its ``tasks`` entry (status 'done') are written in one transaction: a crash leaves no half-written task.

Several processes share one database: each opens it for one read or one write only (``access``), under the lock
file ``<db>.lock`` (shared to read, exclusive to write), so queries answer while runs write and several runs
write at once. ``snapshot`` gives a long-lived reader a private copy that holds nothing.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import duckdb

from inflang import __version__
from inflang.errors import UsageError

SCHEMA_VERSION = 2

TABLES = """
CREATE TABLE IF NOT EXISTS meta (key VARCHAR PRIMARY KEY, value VARCHAR);
CREATE TABLE IF NOT EXISTS studies (
    study VARCHAR PRIMARY KEY, spec_hash VARCHAR, spec_yaml VARCHAR, source_path VARCHAR,
    created_at TIMESTAMP, updated_at TIMESTAMP, inflang_version VARCHAR);
CREATE TABLE IF NOT EXISTS cells (
    study VARCHAR, cell_id VARCHAR, "repeat" INTEGER, seed BIGINT, params JSON, status VARCHAR, error VARCHAR,
    PRIMARY KEY (study, cell_id));
CREATE TABLE IF NOT EXISTS runs (
    run_id VARCHAR PRIMARY KEY, study VARCHAR, started_at TIMESTAMP, ended_at TIMESTAMP, executor VARCHAR,
    device VARCHAR, host VARCHAR, inflang_version VARCHAR, git_commit VARCHAR, status VARCHAR,
    tasks_run INTEGER, tasks_reused INTEGER, tasks_failed INTEGER);
CREATE TABLE IF NOT EXISTS cell_tasks (
    study VARCHAR, cell_id VARCHAR, kind VARCHAR, estimator VARCHAR, task_hash VARCHAR);
CREATE TABLE IF NOT EXISTS tasks (
    task_hash VARCHAR PRIMARY KEY, kind VARCHAR, inputs JSON, status VARCHAR, error VARCHAR,
    seconds DOUBLE, artifact_sha256 VARCHAR, finished_at TIMESTAMP);
CREATE TABLE IF NOT EXISTS train_results (
    task_hash VARCHAR PRIMARY KEY, n_params INTEGER, n_train INTEGER, n_test INTEGER, train_loss DOUBLE,
    test_loss DOUBLE, test_accuracy DOUBLE, train_seconds DOUBLE, steps BIGINT);
CREATE TABLE IF NOT EXISTS split_rows (task_hash VARCHAR, "index" INTEGER, role VARCHAR,
    label_flipped BOOLEAN, loss DOUBLE, correct BOOLEAN);
CREATE TABLE IF NOT EXISTS curvature_results (
    task_hash VARCHAR PRIMARY KEY, n_params INTEGER, max_eigenvalue DOUBLE, min_eigenvalue DOUBLE,
    n_negative INTEGER, trace DOUBLE);
CREATE TABLE IF NOT EXISTS hessian_results (
    task_hash VARCHAR PRIMARY KEY, top_eigenvalues DOUBLE[], min_eigenvalue DOUBLE, trace DOUBLE,
    n_negative INTEGER);
CREATE TABLE IF NOT EXISTS estimate_rows (task_hash VARCHAR, test_index INTEGER, train_index INTEGER,
    estimate DOUBLE);
CREATE TABLE IF NOT EXISTS actual_rows (task_hash VARCHAR, test_index INTEGER, train_index INTEGER,
    actual DOUBLE);
CREATE TABLE IF NOT EXISTS metric_rows (task_hash VARCHAR, test_index INTEGER, metric VARCHAR, value DOUBLE,
    n_pairs INTEGER, ci_low DOUBLE, ci_high DOUBLE);
CREATE TABLE IF NOT EXISTS aggregate_rows (task_hash VARCHAR, metric VARCHAR, value DOUBLE, n_pairs INTEGER,
    ci_low DOUBLE, ci_high DOUBLE);
CREATE TABLE IF NOT EXISTS metric_replicates (task_hash VARCHAR, test_index INTEGER, metric VARCHAR,
    replicates DOUBLE[]);
CREATE TABLE IF NOT EXISTS ground_truth_results (task_hash VARCHAR PRIMARY KEY, protocol VARCHAR, items INTEGER,
    repeats INTEGER, dropped INTEGER);
CREATE TABLE IF NOT EXISTS pooled_rows (study VARCHAR, params JSON, estimator VARCHAR, metric VARCHAR,
    value DOUBLE, sd DOUBLE, ci_low DOUBLE, ci_high DOUBLE, seeds INTEGER, test_points INTEGER);
CREATE TABLE IF NOT EXISTS claims (study VARCHAR, claim VARCHAR, form VARCHAR, statistic VARCHAR, estimate DOUBLE,
    ci_low DOUBLE, ci_high DOUBLE, seeds INTEGER, test_points INTEGER, verdict VARCHAR,
    relative_to_ceiling DOUBLE, detail VARCHAR, position INTEGER, threshold DOUBLE);
CREATE TABLE IF NOT EXISTS diagnosis_results (task_hash VARCHAR PRIMARY KEY, grad_norm DOUBLE, objective DOUBLE,
    top_eigenvalue DOUBLE, min_eigenvalue DOUBLE, trace DOUBLE, n_params INTEGER, examples INTEGER);
CREATE TABLE IF NOT EXISTS estimate_notes (task_hash VARCHAR, note VARCHAR, value DOUBLE);
CREATE TABLE IF NOT EXISTS diagnostics (study VARCHAR, cell_id VARCHAR, subject VARCHAR, "check" VARCHAR,
    value DOUBLE, threshold DOUBLE, severity VARCHAR, message VARCHAR);
CREATE TABLE IF NOT EXISTS claim_declarations (study VARCHAR, claim VARCHAR, definition VARCHAR,
    declared_at TIMESTAMP, after_results BOOLEAN);
CREATE TABLE IF NOT EXISTS response_rows (task_hash VARCHAR, test_index INTEGER, train_index INTEGER,
    response VARCHAR, value DOUBLE);
CREATE TABLE IF NOT EXISTS solver_rows (task_hash VARCHAR, train_index INTEGER, grad_norm DOUBLE,
    iterations INTEGER);
CREATE TABLE IF NOT EXISTS group_members (task_hash VARCHAR, group_index INTEGER, train_index INTEGER);
CREATE TABLE IF NOT EXISTS seed_additions (study VARCHAR, point VARCHAR, repeats INTEGER,
    PRIMARY KEY (study, point));
CREATE TABLE IF NOT EXISTS sequential_claims (study VARCHAR, claim VARCHAR, definition VARCHAR, first_seeds INTEGER,
    last_seeds INTEGER, started_at TIMESTAMP, settled_seeds INTEGER, PRIMARY KEY (study, claim, definition));
CREATE TABLE IF NOT EXISTS group_actual (task_hash VARCHAR, test_index INTEGER, group_index INTEGER,
    actual DOUBLE);
"""

# Columns added after a table first shipped; each statement is idempotent.
MIGRATIONS = """
ALTER TABLE studies ADD COLUMN IF NOT EXISTS description VARCHAR;
ALTER TABLE metric_rows ADD COLUMN IF NOT EXISTS ci_low DOUBLE;
ALTER TABLE metric_rows ADD COLUMN IF NOT EXISTS ci_high DOUBLE;
ALTER TABLE split_rows ADD COLUMN IF NOT EXISTS label_flipped BOOLEAN;
ALTER TABLE split_rows ADD COLUMN IF NOT EXISTS loss DOUBLE;
ALTER TABLE split_rows ADD COLUMN IF NOT EXISTS correct BOOLEAN;
ALTER TABLE runs ADD COLUMN IF NOT EXISTS engine VARCHAR;
ALTER TABLE tasks ADD COLUMN IF NOT EXISTS engine VARCHAR;
ALTER TABLE claims ADD COLUMN IF NOT EXISTS p_value DOUBLE;
ALTER TABLE claims ADD COLUMN IF NOT EXISTS level DOUBLE;
ALTER TABLE claims ADD COLUMN IF NOT EXISTS adjust VARCHAR;
ALTER TABLE claims ADD COLUMN IF NOT EXISTS family INTEGER;
ALTER TABLE claims ADD COLUMN IF NOT EXISTS declared_at TIMESTAMP;
ALTER TABLE claims ADD COLUMN IF NOT EXISTS declared_after_results BOOLEAN;
ALTER TABLE claims ADD COLUMN IF NOT EXISTS health VARCHAR;
ALTER TABLE solver_rows ADD COLUMN IF NOT EXISTS start_grad_norm DOUBLE;
ALTER TABLE solver_rows ADD COLUMN IF NOT EXISTS converged BOOLEAN;
ALTER TABLE solver_rows ADD COLUMN IF NOT EXISTS tolerance DOUBLE;
ALTER TABLE claims ADD COLUMN IF NOT EXISTS seeds_needed INTEGER;
ALTER TABLE claims ADD COLUMN IF NOT EXISTS seeds_to_negligible INTEGER;
ALTER TABLE claims ADD COLUMN IF NOT EXISTS seeds_for_smallest_effect INTEGER;
ALTER TABLE claims ADD COLUMN IF NOT EXISTS settle VARCHAR;
ALTER TABLE claims ADD COLUMN IF NOT EXISTS settle_seconds DOUBLE;
ALTER TABLE claims ADD COLUMN IF NOT EXISTS sequential BOOLEAN;
ALTER TABLE claims ADD COLUMN IF NOT EXISTS max_seeds INTEGER;
ALTER TABLE claims ADD COLUMN IF NOT EXISTS seeds_added INTEGER;
ALTER TABLE claims ADD COLUMN IF NOT EXISTS seconds_added DOUBLE;
ALTER TABLE train_results ADD COLUMN IF NOT EXISTS polish_steps INTEGER;
ALTER TABLE train_results ADD COLUMN IF NOT EXISTS polish_start_grad_norm DOUBLE;
ALTER TABLE train_results ADD COLUMN IF NOT EXISTS polish_grad_norm DOUBLE;
ALTER TABLE train_results ADD COLUMN IF NOT EXISTS polish_converged BOOLEAN;
ALTER TABLE train_results ADD COLUMN IF NOT EXISTS polish_accuracy_change DOUBLE;
ALTER TABLE train_results ADD COLUMN IF NOT EXISTS polish_seconds DOUBLE;
"""

VIEWS = """
CREATE OR REPLACE VIEW models AS
SELECT c.study, c.cell_id, r.n_params, r.train_loss, r.test_loss, r.test_accuracy, r.train_seconds,
       h.top_eigenvalues AS hessian_top_eigenvalues, h.min_eigenvalue AS hessian_min_eigenvalue,
       h.trace AS hessian_trace, r.n_train, r.n_test, r.steps, c.task_hash AS train_task,
       r.polish_steps, r.polish_start_grad_norm, r.polish_grad_norm, r.polish_converged, r.polish_accuracy_change,
       r.polish_seconds
FROM cell_tasks c JOIN train_results r ON r.task_hash = c.task_hash AND c.kind = 'train'
LEFT JOIN cell_tasks ch ON ch.study = c.study AND ch.cell_id = c.cell_id AND ch.kind = 'hessian'
LEFT JOIN hessian_results h ON h.task_hash = ch.task_hash;

CREATE OR REPLACE VIEW splits AS
SELECT c.study, c.cell_id, s."index", s.role, coalesce(s.label_flipped, false) AS label_flipped, s.loss,
       s.correct
FROM cell_tasks c JOIN split_rows s ON s.task_hash = c.task_hash AND c.kind = 'train';

CREATE OR REPLACE VIEW influence AS
SELECT ce.study, ce.cell_id, ce.estimator, e.test_index, e.train_index, e.estimate, a.actual,
       abs(a.actual) >= res.value AS resolved, res.value AS resolution
FROM cell_tasks ce JOIN estimate_rows e ON e.task_hash = ce.task_hash AND ce.kind = 'estimate'
LEFT JOIN cell_tasks cg ON cg.study = ce.study AND cg.cell_id = ce.cell_id AND cg.kind = 'ground_truth'
LEFT JOIN actual_rows a ON a.task_hash = cg.task_hash AND a.test_index = e.test_index
                       AND a.train_index = e.train_index
LEFT JOIN metric_rows res ON res.task_hash = cg.task_hash AND res.metric = 'resolution'
                         AND res.test_index = e.test_index;

CREATE OR REPLACE VIEW metrics AS
SELECT c.study, c.cell_id, c.estimator, m.test_index, m.metric, m.value, m.n_pairs, m.ci_low, m.ci_high
FROM cell_tasks c JOIN metric_rows m ON m.task_hash = c.task_hash AND c.kind IN ('metrics', 'ground_truth')
WHERE m.test_index IS NOT NULL OR NOT EXISTS (
    SELECT 1 FROM aggregate_rows a WHERE a.task_hash = m.task_hash AND a.metric = m.metric)
UNION ALL
SELECT c.study, c.cell_id, c.estimator, NULL AS test_index, a.metric, a.value, a.n_pairs, a.ci_low, a.ci_high
FROM cell_tasks c JOIN aggregate_rows a ON a.task_hash = c.task_hash AND c.kind IN ('metrics', 'ground_truth');

CREATE OR REPLACE VIEW responses AS
SELECT c.study, c.cell_id, r.test_index, r.train_index, r.response, r.value
FROM cell_tasks c JOIN response_rows r ON r.task_hash = c.task_hash AND c.kind = 'ground_truth';

CREATE OR REPLACE VIEW ground_truths AS
SELECT c.study, c.cell_id, g.protocol, g.items, g.repeats, g.dropped, c.task_hash AS ground_truth_task
FROM cell_tasks c JOIN ground_truth_results g ON g.task_hash = c.task_hash AND c.kind = 'ground_truth';

CREATE OR REPLACE VIEW refits AS
SELECT c.study, c.cell_id, s.train_index, s.grad_norm, s.iterations, s.start_grad_norm, s.converged,
       s.tolerance
FROM cell_tasks c JOIN solver_rows s ON s.task_hash = c.task_hash AND c.kind = 'ground_truth';

CREATE OR REPLACE VIEW influence_pairs AS
SELECT i.*, s.label_flipped
FROM influence i JOIN splits s ON s.study = i.study AND s.cell_id = i.cell_id AND s."index" = i.train_index;

CREATE OR REPLACE VIEW group_influence AS
SELECT ce.study, ce.cell_id, ce.estimator, ga.test_index, ga.group_index, count(*) AS size,
       sum(e.estimate) AS estimate, any_value(ga.actual) AS actual,
       any_value(abs(ga.actual) >= res.value) AS resolved, any_value(res.value) AS resolution
FROM cell_tasks cg
JOIN group_actual ga ON ga.task_hash = cg.task_hash AND cg.kind = 'ground_truth'
JOIN group_members gm ON gm.task_hash = ga.task_hash AND gm.group_index = ga.group_index
JOIN cell_tasks ce ON ce.study = cg.study AND ce.cell_id = cg.cell_id AND ce.kind = 'estimate'
JOIN estimate_rows e ON e.task_hash = ce.task_hash AND e.test_index = ga.test_index
                    AND e.train_index = gm.train_index
LEFT JOIN metric_rows res ON res.task_hash = cg.task_hash AND res.metric = 'resolution'
                         AND res.test_index = ga.test_index
GROUP BY ALL;
"""

TaskState = tuple[str, str | None, str | None]  # a task's record: status, error, artifact sha256

# Outputs of a task: table name -> column name -> values (one list per column, equal lengths).
Rows = Mapping[str, Mapping[str, Sequence[Any]]]

OUTPUT_TABLES = ("train_results", "split_rows", "curvature_results", "hessian_results", "estimate_rows",
                 "actual_rows", "metric_rows", "metric_replicates", "aggregate_rows", "ground_truth_results",
                 "group_members", "group_actual", "solver_rows", "response_rows", "diagnosis_results",
                 "estimate_notes")


def _sql_key(key: str) -> str:
    return key.replace('"', "").replace("'", "")


def _swept_type(before: str | None, value: Any) -> str:
    """The column type of a swept path once ``value`` is seen too: BIGINT while every value is an integer,
    DOUBLE while every value is a number, else VARCHAR."""
    if isinstance(value, bool) or not isinstance(value, int | float) or before == "VARCHAR":
        return "VARCHAR"
    if isinstance(value, int) and before in (None, "BIGINT"):
        return "BIGINT"
    return "DOUBLE"


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def check_db_path(path: str | Path) -> Path:
    p = Path(path)
    if p.is_dir():
        raise UsageError(f"{p}: is a directory; --db takes a database file path (e.g. {p / 'inflang.duckdb'})")
    return p


# --- access: one process writes at a time, readers share; nobody holds the database between accesses --------

WAIT_ENV = "INFLANG_DB_WAIT"  # seconds an access waits for the database before giving up
READ_WAIT = 600.0  # a read's default; a write waits without limit unless INFLANG_DB_WAIT is set
NOTICE_AFTER = 2.0  # seconds of waiting before the one line on stderr that says so


@dataclass
class _Held:
    """This process's current access to one database: its connection, whether it writes, and how deeply
    accesses are nested in it."""

    con: duckdb.DuckDBPyConnection
    write: bool
    depth: int = 1
    in_transaction: bool = False
    shared: bool = False  # an instance this process opened outside inflang: its settings are not ours to change


_HELD: dict[str, _Held] = {}  # resolved path -> the access this process holds
_GUARDS: dict[str, threading.RLock] = {}  # resolved path -> what serialises this process's threads on it
_GUARDS_LOCK = threading.Lock()
_STAMPS: dict[str, tuple[Any, ...]] = {}  # resolved path -> the files' state when this process last wrote or looked
_NEWS: set[str] = set()  # resolved paths another process wrote between two of this process's writes, unread since


def lock_path(path: Path) -> Path:
    """The inter-process lock file beside a database: ``<db>.lock``."""
    return path.with_name(path.name + ".lock")


def _key(path: Path) -> str:
    return str(path.resolve())


def _guard(key: str) -> threading.RLock:
    with _GUARDS_LOCK:
        return _GUARDS.setdefault(key, threading.RLock())


def _stamp(path: Path) -> tuple[Any, ...]:
    """What changes when any process writes the database: the database and WAL files' size and mtime."""
    out: list[Any] = []
    for p in (path, path.with_name(path.name + ".wal")):
        try:
            st = p.stat()
            out.append((st.st_ino, st.st_size, st.st_mtime_ns))
        except OSError:
            out.append(None)
    return tuple(out)


class _Wait:
    """A bounded wait for the database: sleeps a little more each time, prints one line to stderr once it has
    waited ``NOTICE_AFTER`` seconds, and raises UsageError after ``INFLANG_DB_WAIT`` seconds."""

    def __init__(self, path: Path, write: bool) -> None:
        self.path, self.start, self.delay, self.told = path, time.monotonic(), 0.002, False
        raw = os.environ.get(WAIT_ENV)
        try:  # a writer (a run, perhaps hours in) waits for as long as it takes unless told otherwise
            self.limit = float(raw) if raw is not None else math.inf if write else READ_WAIT
        except ValueError:
            raise UsageError(f"{WAIT_ENV}={raw!r}: not a number of seconds") from None

    def __call__(self, holder: str) -> None:
        waited = time.monotonic() - self.start
        if waited >= self.limit:
            raise UsageError(f"{self.path}: the database is still in use by {holder} after "
                             f"{round(waited, 1):g} s of waiting; try again later (or set {WAIT_ENV} to wait longer)")
        if not self.told and waited >= NOTICE_AFTER:
            sys.stderr.write(f"waiting for the database {self.path}: {holder} is using it\n")
            sys.stderr.flush()
            self.told = True
        time.sleep(min(self.delay, max(self.limit - waited, 0.0)))
        self.delay = min(self.delay * 2, 0.05)


def _lock_file(path: Path, write: bool) -> int | None:
    """An open descriptor of the lock file (created if need be); None for a reader that may not create it."""
    target = lock_path(path.resolve())
    try:
        return os.open(target, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        if not write:
            try:
                return os.open(target, os.O_RDONLY)
            except OSError:
                return None  # a read-only folder: DuckDB's own file lock still keeps a writer out
        raise UsageError(f"{path}: cannot create the lock file {target} ({exc.strerror or exc})") from None


class _Busy(Exception):
    """A process outside inflang's lock (the duckdb CLI, a notebook's writing connection) holds the file."""


def _connect(path: Path, write: bool) -> tuple[duckdb.DuckDBPyConnection, bool]:
    """A DuckDB connection and whether it shares an instance this process opened outside inflang (a raw
    ``duckdb.connect`` or ``inflang.connect(read_only=False)``: a read shares it); _Busy while another process
    holds DuckDB's own lock on the file."""
    try:
        return duckdb.connect(str(path), read_only=not write), False
    except duckdb.IOException as exc:
        text = str(exc)
        if "could not set lock" not in text.lower():
            raise UsageError(f"{path}: cannot open the database ({text.splitlines()[0]})") from None
        raise _Busy() from None
    except duckdb.ConnectionException as exc:
        if write:
            raise UsageError(f"{path}: this process holds a read-only connection to the database; close it "
                             "before writing") from None
        try:
            return duckdb.connect(str(path)), True
        except duckdb.Error:
            raise UsageError(f"{path}: cannot open the database ({str(exc).splitlines()[0]})") from None
    except duckdb.Error as exc:
        raise UsageError(f"{path}: not a DuckDB database ({str(exc).splitlines()[0]})") from None


@contextmanager
def _connected(path: Path, write: bool, wait: _Wait) -> Iterator[tuple[duckdb.DuckDBPyConnection, bool]]:
    """The lock file held (shared to read, exclusive to write) and ``_connect``'s connection made, until the
    block ends; closing the connection is the caller's. While another process holds DuckDB's own lock, the lock
    file is let go between tries, so this process's other accesses (and other inflang processes) are not held
    up by the wait."""
    while True:
        with _locked(path, write, wait):
            try:
                found = _connect(path, write)
            except _Busy:
                pass
            else:
                yield found
                return
        wait("another process")


@contextmanager
def _opened(path: Path, write: bool, wait: _Wait,
            closed: Callable[[], None] | None = None) -> Iterator[tuple[duckdb.DuckDBPyConnection, bool]]:
    """``_connected``, the connection closed at the end of the block, then ``closed`` called while the lock
    file is still held."""
    with _connected(path, write, wait) as (con, shared):
        try:
            yield con, shared
        finally:
            con.close()
            if closed is not None:  # still under the lock file: nobody else has written since
                closed()


@contextmanager
def _locked(path: Path, write: bool, wait: _Wait) -> Iterator[None]:
    """Hold the lock file of ``path`` (shared to read, exclusive to write), waiting for it as ``wait`` says."""
    fd = _lock_file(path, write)
    try:
        if fd is not None:
            while True:
                try:
                    fcntl.flock(fd, (fcntl.LOCK_EX if write else fcntl.LOCK_SH) | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    wait("another inflang process")
        yield
    finally:
        if fd is not None:
            os.close(fd)  # releases the lock


@contextmanager
def access(path: Path, write: bool) -> Iterator[duckdb.DuckDBPyConnection]:
    """A connection to the database for one read or one write, under the lock file, closed at the end (a
    writer's close checkpoints, so the next reader opens a complete file). Nested accesses in one process share
    the outermost one's connection (a read inside a write reads through the writer); a write inside a read
    raises RuntimeError. Threads of one process take turns."""
    key = _key(path)
    with _guard(key):
        held = _HELD.get(key)
        if held is not None:
            if write and not held.write:
                raise RuntimeError(f"{path}: a write nested inside a read of the same database")
            held.depth += 1
            try:
                yield held.con
            finally:
                held.depth -= 1
            return

        def stamp() -> None:
            _STAMPS[key] = _stamp(path)

        with _opened(path, write, _Wait(path, write), stamp if write else None) as (con, shared):
            if write and _STAMPS.get(key) != _stamp(path):
                _NEWS.add(key)  # someone wrote since this process last did: remembered past this write's stamp
            _HELD[key] = _Held(con, write, shared=shared)
            try:
                yield con
            finally:
                del _HELD[key]


def _nested(path: Path) -> bool:
    """Whether this access to ``path`` shares a connection: nested in another access of this process, or on an
    instance this process opened outside inflang."""
    held = _HELD.get(_key(path))
    return held is not None and (held.depth > 1 or held.shared)


def changed_elsewhere(path: Path) -> bool:
    """Whether another process may have written the database since this process last wrote it (or last called
    ``mark_seen``); True when this process has not written it."""
    key = _key(path)
    return key in _NEWS or _STAMPS.get(key) != _stamp(path)


def mark_seen(path: Path) -> None:
    """Note the database's current state as seen (``changed_elsewhere`` is False until someone writes)."""
    key = _key(path)
    _STAMPS[key] = _stamp(path)
    _NEWS.discard(key)


def snapshot(path: str | Path) -> duckdb.DuckDBPyConnection:
    """A read-only connection to a private copy of the database as of now: the file (and any WAL) is copied
    under the shared lock into a temporary folder, opened, and the folder removed at once (the open connection
    keeps the bytes until it closes), so holding the connection blocks no run and leaves nothing behind."""
    db = check_db_path(path)
    if not db.exists():
        raise UsageError(f"{db}: no such database; run a study first (inflang run STUDY.yaml)")
    folder = Path(tempfile.mkdtemp(prefix="inflang-snapshot-"))
    try:
        with _guard(_key(db)):
            wal = db.with_name(db.name + ".wal")
            if _key(db) in _HELD:  # this process holds the lock already (a read or a write around this call)
                _copy(db, wal, folder)
            else:  # an open read-only connection keeps writers outside inflang (a notebook's) off the file too
                with _opened(db, False, _Wait(db, False)):
                    _copy(db, wal, folder)
        try:
            return duckdb.connect(str(folder / db.name), read_only=True,
                                  config={"temp_directory": tempfile.gettempdir()})
        except duckdb.Error as exc:
            raise UsageError(f"{db}: not a DuckDB database ({str(exc).splitlines()[0]})") from None
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def writable(path: str | Path) -> duckdb.DuckDBPyConnection:
    """A writing connection to the database itself, opened when no inflang process is using it (waiting as
    ``access`` does); it holds DuckDB's own lock until closed, and inflang processes wait for it meanwhile."""
    db = check_db_path(path)
    with _guard(_key(db)):
        if _key(db) in _HELD:
            raise RuntimeError(f"{db}: a writing connection opened inside an access of the same database")
        try:
            db.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"{db}: cannot create the folder {db.parent} for the database "
                             f"({exc.strerror or exc})") from None
        with _connected(db, True, _Wait(db, True)) as (con, _):
            return con


def _copy(db: Path, wal: Path, folder: Path) -> None:
    shutil.copyfile(db, folder / db.name)
    if wal.exists():
        shutil.copyfile(wal, folder / wal.name)


def _has_table(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    found = con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [name]).fetchone()
    return bool(found and found[0])


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
    if not _has_table(con, "tasks"):
        return {}
    rows = con.execute("SELECT task_hash, status, error, artifact_sha256 FROM tasks WHERE task_hash IN "
                       "(SELECT unnest(?::VARCHAR[]))", [list(hashes)]).fetchall()
    return {h: (s, e, a) for h, s, e, a in rows}


class Store:
    """One DuckDB database, opened for the length of each read or write only (``access``), so several
    processes share it. A writing Store creates or migrates the schema once, when constructed; a read-only
    one (queries, plans) writes nothing."""

    def __init__(self, path: str | Path, read_only: bool = False) -> None:
        self.path = check_db_path(path)
        self.read_only = read_only
        if read_only and not self.path.exists():
            raise UsageError(f"{self.path}: no such database; run a study first (inflang run STUDY.yaml)")
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
            return _has_table(con, name)

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
        """Replace a study's claim verdicts (``inflang.claims.Verdict``) in one transaction, each with when its
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
        """Sweep point (``inflang.validate.point_key``) -> seeds in all, where ``--until-settled`` added some."""
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
        """Replace a study's pooled rows (``inflang.pooling.Pooled``) in one transaction."""
        with self.transaction() as con:
            con.execute("DELETE FROM pooled_rows WHERE study = ?", [study])
            if rows:
                con.executemany("INSERT INTO pooled_rows VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                                [(study, r.params, r.estimator, r.metric, r.value, r.sd, r.ci_low, r.ci_high,
                                  r.seeds, r.test_points) for r in rows])

    def write_diagnostics(self, study: str, found: Sequence[Any]) -> None:
        """Replace a study's health checks (``inflang.diagnostics.Diagnostic``) in one transaction."""
        with self.transaction() as con:
            con.execute("DELETE FROM diagnostics WHERE study = ?", [study])
            if found:
                con.executemany("INSERT INTO diagnostics VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                                [(study, d.cell_id, d.subject, d.check, d.value if math.isfinite(d.value) else None,
                                  d.threshold, d.severity, d.message) for d in found])

    def write_aggregates(self, columns: Mapping[str, Sequence[Any]]) -> None:
        """Replace the aggregate rows (``inflang.pooling.task_aggregates``) of the tasks they name."""
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


_WRITE_WORDS = re.compile(
    r"\b(insert|update|delete|drop|create|alter|attach|detach|copy|install|load|pragma|set|export|import|"
    r"checkpoint|vacuum|call|truncate|begin|commit|rollback|use)\b", re.IGNORECASE)


def _strip_literals(sql: str) -> str:
    sql = re.sub(r"'(?:[^']|'')*'", "''", sql)
    sql = re.sub(r'"(?:[^"]|"")*"', '""', sql)
    sql = re.sub(r"--[^\n]*", " ", sql)
    return re.sub(r"/\*.*?\*/", " ", sql, flags=re.DOTALL)


def check_read_only(sql: str) -> None:
    """Refuse anything but one read-only statement (SELECT, WITH, DESCRIBE, ...); raises UsageError."""
    bare = _strip_literals(sql).strip().rstrip(";").strip()
    if not bare:
        raise UsageError("the query is empty")
    if ";" in bare:
        raise UsageError("one statement at a time, please")
    first = bare.split(None, 1)[0].lower()
    if first not in ("select", "with", "from", "describe", "show", "explain", "summarize", "values", "table"):
        raise UsageError(f"only read-only queries are allowed (SELECT, WITH, DESCRIBE, ...), not {first.upper()}")
    word = _WRITE_WORDS.search(bare)
    if word:
        raise UsageError(f"only read-only queries are allowed; '{word.group(0).upper()}' is refused")


def _read_only_result(path: str | Path, sql: str, fetch: Any) -> Any:
    """``fetch(cursor)`` of a checked query on a read-only connection with file access switched off."""
    check_read_only(sql)
    with Store(path, read_only=True).reading() as con:
        if not _nested(Path(path)):  # a connection of its own: file access goes off with it
            con.execute("SET enable_external_access = false")
        try:
            return fetch(con.execute(sql))
        except duckdb.Error as exc:
            raise UsageError(f"query failed: {str(exc).splitlines()[0]}") from None


def run_query(path: str | Path, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Run one read-only SELECT (or WITH/DESCRIBE/SHOW/EXPLAIN/SUMMARIZE) on the database."""
    return _read_only_result(path, sql, lambda cursor: ([d[0] for d in cursor.description or []],
                                                          cursor.fetchall()))


def write_parquet(path: str | Path, sql: str, target: str | Path) -> int:
    """Run a read-only query (checked as ``run_query`` checks it), write its result as a Parquet file and
    return how many rows it wrote."""
    result = _read_only_result(path, sql, lambda cursor: cursor.fetchnumpy())  # noqa: F841 -- DuckDB reads it by name
    writer = duckdb.connect()
    try:
        writer.execute(f"COPY (SELECT * FROM result) TO '{str(target).replace(chr(39), '')}' (FORMAT parquet)")
        (count,) = writer.execute("SELECT count(*) FROM result").fetchone() or (0,)
    finally:
        writer.close()
    return int(count)


# --- named queries: every read the CLI, the report, pooling and claims make ---------------------------------

Table = tuple[list[str], list[tuple[Any, ...]]]


def _read(path: str | Path, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> Table:
    """A trusted (named) query with parameters, on a read-only connection."""
    with Store(path, read_only=True).reading() as con:
        try:
            cursor = con.execute(sql, params if isinstance(params, dict) else list(params))
            return [d[0] for d in cursor.description or []], cursor.fetchall()
        except duckdb.Error as exc:
            raise UsageError(f"query failed: {str(exc).splitlines()[0]}") from None


def _dicts(table: Table) -> list[dict[str, Any]]:
    columns, rows = table
    return [dict(zip(columns, r, strict=True)) for r in rows]


def study_names(path: str | Path) -> list[str]:
    return [s for (s,) in _read(path, "SELECT study FROM studies ORDER BY study")[1]]


def missing_studies(path: str | Path, names: Sequence[str]) -> list[str]:
    """The names among ``names`` that the database has no study of."""
    known = {s for (s,) in _read(path, "SELECT study FROM studies WHERE study IN (SELECT unnest(?::VARCHAR[]))",
                                 [list(names)])[1]}
    return sorted(set(names) - known)


def studies_overview(path: str | Path) -> Table:
    """``inflang ls``: cells by status and the last run, per study."""
    return _read(path, """
        WITH last AS (SELECT study, max(ended_at) AS ended FROM runs GROUP BY study)
        SELECT s.study, count(c.cell_id) AS cells,
               count(c.cell_id) FILTER (WHERE c.status = 'done') AS done,
               count(c.cell_id) FILTER (WHERE c.status = 'failed') AS failed,
               count(c.cell_id) FILTER (WHERE c.status = 'pending') AS pending,
               strftime(any_value(last.ended), '%Y-%m-%d %H:%M') AS last_run, any_value(s.description) AS description
        FROM studies s LEFT JOIN cells c USING (study) LEFT JOIN last USING (study)
        GROUP BY s.study ORDER BY s.study""")


def cell_params(path: str | Path, study: str) -> list[tuple[str, dict[str, Any]]]:
    """(cell id, swept values) of every cell of a study."""
    return [(c, json.loads(p or "{}")) for c, p in
            _read(path, "SELECT cell_id, params FROM cells WHERE study = ?", [study])[1]]


def failed_cells(path: str | Path, study: str) -> list[tuple[str, dict[str, Any], str]]:
    """(cell id, swept values, message) of every failed cell."""
    rows = _read(path, "SELECT cell_id, params, error FROM cells WHERE study = ? AND status = 'failed' "
                       "ORDER BY params, cell_id", [study])[1]
    return [(c, json.loads(p or "{}"), e or "failed") for c, p, e in rows]


def has_pooled_metric(path: str | Path, study: str, metric: str) -> bool:
    found = _read(path, "SELECT count(*) FROM pooled_rows WHERE study = ? AND metric = ?", [study, metric])[1]
    return bool(found[0][0])


def summary(path: str | Path, study: str, first: str, second: str, ground: str) -> Table:
    """Per sweep point and estimator, pooled over seeds: two metrics of the estimators with their intervals,
    one of the ground truth, what they rest on, the fraction below resolution, and the cells' states."""
    return _read(path, """
        WITH points AS (
            SELECT coalesce(params::VARCHAR, '{}') AS params, count(*) AS cells,
                   count(*) FILTER (WHERE status = 'failed') AS failed,
                   count(*) FILTER (WHERE status = 'pending') AS pending
            FROM cells WHERE study = $study GROUP BY ALL),
        pooled AS (SELECT params::VARCHAR AS params, * EXCLUDE (params) FROM pooled_rows WHERE study = $study),
        ceiling AS (SELECT params, value, ci_low, ci_high FROM pooled WHERE estimator IS NULL AND metric = $ground),
        unresolved AS (SELECT params, value FROM pooled WHERE estimator IS NULL AND metric = 'below_resolution')
        SELECT p.params, e.estimator,
               s.value AS first, s.ci_low AS first_low, s.ci_high AS first_high,
               r.value AS second, r.ci_low AS second_low, r.ci_high AS second_high,
               ceiling.value AS ground, ceiling.ci_low AS ground_low, ceiling.ci_high AS ground_high,
               coalesce(s.seeds, r.seeds) AS seeds, coalesce(s.test_points, r.test_points) AS test_points,
               p.cells, p.failed, p.pending, unresolved.value AS below_resolution
        FROM points p
        LEFT JOIN (SELECT DISTINCT params, estimator FROM pooled WHERE estimator IS NOT NULL) e USING (params)
        LEFT JOIN pooled s ON s.params = p.params AND s.estimator = e.estimator AND s.metric = $first
        LEFT JOIN pooled r ON r.params = p.params AND r.estimator = e.estimator AND r.metric = $second
        LEFT JOIN ceiling ON ceiling.params = p.params
        LEFT JOIN unresolved ON unresolved.params = p.params
        ORDER BY p.params, e.estimator""", {"study": study, "first": first, "second": second, "ground": ground})


def claim_rows(path: str | Path, studies: Sequence[str]) -> list[dict[str, Any]]:
    """Every column of the studies' claims (a database written before a column was added lacks it: read it
    with ``.get``)."""
    return _dicts(_read(path, """SELECT * FROM claims WHERE study IN (SELECT unnest(?::VARCHAR[]))
                                 ORDER BY study, position""", [list(studies)]))


def trained_models(path: str | Path, study: str) -> Table:
    return _read(path, """
        SELECT c.cell_id, c."repeat", c.params, m.test_accuracy, m.hessian_top_eigenvalues[1] AS top_eigenvalue,
               m.hessian_min_eigenvalue AS min_eigenvalue
        FROM cells c JOIN models m USING (study, cell_id) WHERE c.study = ? ORDER BY c.params, 2""", [study])


def influence_of(path: str | Path, study: str) -> Table:
    return _read(path, "SELECT * FROM influence WHERE study = ? ORDER BY ALL", [study])


def referenced_tasks(path: str | Path) -> set[str]:
    return {h for (h,) in _read(path, "SELECT DISTINCT task_hash FROM cell_tasks")[1]}


def report_cells(path: str | Path, study: str) -> list[dict[str, Any]]:
    return _dicts(_read(path, 'SELECT cell_id, params, status, error, "repeat", seed FROM cells WHERE study = ? '
                              'ORDER BY params, "repeat"', [study]))


def estimator_names(path: str | Path, study: str) -> dict[str, tuple[str, bool]]:
    """Estimator label -> (estimator name, its ``ranks_only`` field: a custom estimator's) of a study's
    estimate tasks."""
    found = _read(path, """SELECT DISTINCT ct.estimator, json_extract_string(t.inputs, '$.estimator.name'),
                                  coalesce(TRY_CAST(json_extract(t.inputs, '$.estimator.ranks_only') AS BOOLEAN),
                                           false)
                           FROM cell_tasks ct JOIN tasks t USING (task_hash)
                           WHERE ct.study = ? AND ct.kind = 'estimate'""", [study])[1]
    return {label: (name, bool(flag)) for label, name, flag in found}


def scatter_test_points(path: str | Path, study: str) -> list[dict[str, Any]]:
    """Per cell, the highest-loss and the median-loss of its selected test points that were retrained."""
    return _dicts(_read(path, """
        WITH chosen AS (
            SELECT DISTINCT i.cell_id, i.test_index, s.loss FROM influence i
            JOIN splits s ON s.study = i.study AND s.cell_id = i.cell_id AND s."index" = i.test_index
            WHERE i.study = ? AND i.actual IS NOT NULL),
        ranked AS (
            SELECT cell_id, test_index, row_number() OVER (PARTITION BY cell_id ORDER BY loss DESC) AS r,
                   count(*) OVER (PARTITION BY cell_id) AS n FROM chosen)
        SELECT cell_id, test_index, CASE WHEN r = 1 THEN 'highest-loss' ELSE 'median-loss' END AS which FROM ranked
        WHERE r = 1 OR (n > 1 AND r = n // 2 + 1) ORDER BY cell_id, r""", [study]))


def measured_pairs(path: str | Path, study: str) -> list[dict[str, Any]]:
    return _dicts(_read(path, "SELECT cell_id, estimator, test_index, estimate, actual FROM influence "
                              "WHERE study = ? AND actual IS NOT NULL", [study]))


def cell_metric_results(path: str | Path, study: str) -> list[dict[str, Any]]:
    return _dicts(_read(path, "SELECT cell_id, params, estimator, metric, value, ci_low, ci_high FROM cell_results "
                              "WHERE study = ?", [study]))


def pooled_results(path: str | Path, study: str) -> list[dict[str, Any]]:
    """The study's sweep_results rows, with its own swept paths as columns (as sweep_results has them)."""
    found = _read(path, "SELECT DISTINCT params FROM cells WHERE study = ?", [study])[1]
    swept = sorted({k for (params,) in found for k in json.loads(params or "{}")})
    columns = "".join(f', "{_sql_key(k)}"' for k in swept)
    return _dicts(_read(path, f"SELECT params{columns}, estimator, metric, value, sd, ci_low, ci_high, seeds, "
                              "test_points FROM sweep_results WHERE study = ? ORDER BY params, estimator NULLS FIRST, "
                              "metric", [study]))


def top_eigenvalues(path: str | Path, study: str) -> dict[str, float | None]:
    return {c: v for c, v in _read(path, "SELECT cell_id, hessian_top_eigenvalues[1] FROM models WHERE study = ?",
                                   [study])[1]}


PER_TEST_POINT = """
SELECT c."repeat", coalesce(c.params::VARCHAR, '{}') AS params, ct.estimator, m.metric, m.test_index, m.value,
       r.replicates
FROM cells c
JOIN cell_tasks ct ON ct.study = c.study AND ct.cell_id = c.cell_id AND ct.kind IN ('metrics', 'ground_truth')
JOIN metric_rows m ON m.task_hash = ct.task_hash AND m.test_index IS NOT NULL
LEFT JOIN metric_replicates r ON r.task_hash = m.task_hash AND r.test_index = m.test_index AND r.metric = m.metric
WHERE c.study = ? AND (? IS NULL OR m.metric = ?)
ORDER BY params, ct.estimator, m.metric, c."repeat", m.test_index
"""


def per_test_point_rows(con: duckdb.DuckDBPyConnection, study: str, metric: str | None) -> list[tuple[Any, ...]]:
    """(repeat, swept values, estimator, metric, test index, value, replicates) of every per-test-point metric row
    of a study (of one metric, when given)."""
    return con.execute(PER_TEST_POINT, [study, metric, metric]).fetchall()


def tasks_without_aggregates(con: duckdb.DuckDBPyConnection, study: str) -> list[str]:
    """The study's tasks with per-test-point metric rows but no aggregate rows yet (new, or stored by an
    earlier version)."""
    return [h for (h,) in con.execute("""
        SELECT DISTINCT ct.task_hash FROM cell_tasks ct
        JOIN metric_rows m ON m.task_hash = ct.task_hash AND m.test_index IS NOT NULL
        WHERE ct.study = ? AND ct.kind IN ('metrics', 'ground_truth')
          AND NOT EXISTS (SELECT 1 FROM aggregate_rows a WHERE a.task_hash = ct.task_hash)
        ORDER BY 1""", [study]).fetchall()]


def task_test_point_rows(con: duckdb.DuckDBPyConnection, hashes: Sequence[str]) -> list[tuple[Any, ...]]:
    """(task hash, metric, test index, value, n_pairs) of the given tasks' per-test-point metric rows."""
    return con.execute("""SELECT task_hash, metric, test_index, value, n_pairs FROM metric_rows
                          WHERE task_hash IN (SELECT unnest(?::VARCHAR[])) AND test_index IS NOT NULL
                          ORDER BY task_hash, metric, test_index""", [list(hashes)]).fetchall()


def diagnostic_inputs(con: duckdb.DuckDBPyConnection, hashes: Sequence[str]) -> dict[str, dict[str, Any]]:
    """What the health checks read of the given tasks: ``diagnosis`` (diagnose tasks' rows), ``train_loss``
    (train tasks), ``notes`` (estimate tasks' notes), ``retrain_ratio`` (ground truths' median final / initial
    refit gradient norm), ``unconverged`` (ground truths' solved refits that missed their tolerance: how many,
    of how many, the largest final gradient norm), ``unsolved`` (ground truths' removals whose solved refit took no
    iteration, its starting gradient already within the tolerance: how many, of how many removals) and
    ``aggregates`` (ground truths' below_resolution and
    noise_ceiling_spearman)."""
    params = [list(hashes)]
    within = "task_hash IN (SELECT unnest(?::VARCHAR[]))"
    out: dict[str, dict[str, Any]] = {"diagnosis": {}, "train_loss": {}, "notes": defaultdict(dict),
                                      "retrain_ratio": {}, "unconverged": {}, "unsolved": {},
                                      "aggregates": defaultdict(dict)}
    for h, g, obj, top, low, trace in con.execute(
            f"SELECT task_hash, grad_norm, objective, top_eigenvalue, min_eigenvalue, trace FROM diagnosis_results "
            f"WHERE {within}", params).fetchall():
        out["diagnosis"][h] = {"grad_norm": g, "objective": obj, "top_eigenvalue": top, "min_eigenvalue": low,
                               "trace": trace}
    out["train_loss"] = dict(con.execute(f"SELECT task_hash, train_loss FROM train_results WHERE {within}",
                                         params).fetchall())
    for h, note, value in con.execute(f"SELECT task_hash, note, value FROM estimate_notes WHERE {within}",
                                      params).fetchall():
        out["notes"][h][note] = value
    out["retrain_ratio"] = dict(con.execute(
        f"SELECT task_hash, median(grad_norm / start_grad_norm) FROM solver_rows WHERE {within} "
        "AND start_grad_norm > 0 AND iterations IS NULL GROUP BY task_hash", params).fetchall())
    out["unconverged"] = {h: (int(bad), int(total), worst) for h, bad, total, worst in con.execute(
        f"SELECT task_hash, count(*) FILTER (WHERE NOT converged), count(*), max(grad_norm) FILTER (WHERE NOT "
        f"converged) FROM solver_rows WHERE {within} AND converged IS NOT NULL GROUP BY task_hash "
        "HAVING count(*) FILTER (WHERE NOT converged) > 0", params).fetchall()}
    out["unsolved"] = {h: (int(still), int(total)) for h, still, total in con.execute(
        f"SELECT task_hash, count(*) FILTER (WHERE iterations = 0), count(*) FROM solver_rows WHERE {within} "
        "AND converged IS NOT NULL AND train_index IS NOT NULL GROUP BY task_hash "
        "HAVING count(*) FILTER (WHERE iterations = 0) > 0", params).fetchall()}
    for h, metric, value in con.execute(
            f"SELECT task_hash, metric, value FROM aggregate_rows WHERE {within} "
            "AND metric IN ('below_resolution', 'noise_ceiling_spearman')", params).fetchall():
        out["aggregates"][h][metric] = value
    return out


def cells_of(con: duckdb.DuckDBPyConnection, study: str) -> list[tuple[str, dict[str, Any]]]:
    """(cell id, swept values) of every cell of a study."""
    return [(c, json.loads(p or "{}")) for c, p in
            con.execute("SELECT cell_id, params FROM cells WHERE study = ? ORDER BY cell_id", [study]).fetchall()]


def added_repeats(con: duckdb.DuckDBPyConnection, study: str) -> dict[str, int]:
    """Sweep point -> seeds in all, where ``--until-settled`` added seeds to the study."""
    if not _has_table(con, "seed_additions"):  # a database from before sequential runs, opened to read
        return {}
    return dict(con.execute("SELECT point, repeats FROM seed_additions WHERE study = ?", [study]).fetchall())


def sequential_designs(con: duckdb.DuckDBPyConnection, study: str
                       ) -> dict[tuple[str, str], tuple[int, int, int | None]]:
    """(claim, definition) -> (first, last, settled) seeds of the looks, for the study's claims judged
    sequentially (settled: the look it stopped at, or None)."""
    if not _has_table(con, "sequential_claims"):
        return {}
    return {(c, d): (f, la, st) for c, d, f, la, st in con.execute(
        "SELECT claim, definition, first_seeds, last_seeds, settled_seeds FROM sequential_claims WHERE study = ?",
        [study]).fetchall()}


def study_added_repeats(path: str | Path, study: str) -> dict[str, int]:
    """``added_repeats`` of a database file; {} when there is no database there yet."""
    if not Path(path).exists():
        return {}
    with Store(path, read_only=True).reading() as con:
        return added_repeats(con, study)


def seed_seconds(con: duckdb.DuckDBPyConnection, study: str, cell_ids: Sequence[str]) -> float | None:
    """The mean over seeds of the seconds one seed's tasks took in these cells (each task counted once per seed,
    however many of the cells share it); None when none was timed."""
    found = con.execute(
        'SELECT avg(seconds) FROM (SELECT c."repeat", sum(t.seconds) AS seconds FROM (SELECT DISTINCT c."repeat", '
        "ct.task_hash FROM cell_tasks ct JOIN cells c USING (study, cell_id) WHERE ct.study = ? AND ct.cell_id IN "
        "(SELECT unnest(?::VARCHAR[]))) c JOIN tasks t USING (task_hash) WHERE t.status = 'done' "
        'GROUP BY c."repeat")', [study, list(cell_ids)]).fetchone()
    return None if found is None or found[0] is None else float(found[0])


def added_seconds(con: duckdb.DuckDBPyConnection, study: str, cell_ids: Sequence[str], first: int, seeds: int
                  ) -> float | None:
    """The seconds of the finished tasks of these cells at repeats ``first`` .. ``seeds`` - 1 (each task once);
    None when there are none."""
    if seeds <= first:
        return None
    found = con.execute(
        "SELECT sum(t.seconds) FROM (SELECT DISTINCT ct.task_hash FROM cell_tasks ct JOIN cells c USING (study, "
        'cell_id) WHERE ct.study = ? AND c."repeat" >= ? AND c."repeat" < ? AND ct.cell_id IN '
        "(SELECT unnest(?::VARCHAR[]))) d JOIN tasks t USING (task_hash) WHERE t.status = 'done'",
        [study, first, seeds, list(cell_ids)]).fetchone()
    return None if found is None or found[0] is None else float(found[0])


def diagnostic_rows(con: duckdb.DuckDBPyConnection, study: str) -> list[dict[str, Any]]:
    cursor = con.execute('SELECT cell_id, subject, "check", value, threshold, severity, message FROM diagnostics '
                         'WHERE study = ? ORDER BY "check", subject, cell_id', [study])
    return [dict(zip([d[0] for d in cursor.description or []], r, strict=True)) for r in cursor.fetchall()]


def study_diagnostics(path: str | Path, study: str) -> list[dict[str, Any]]:
    """The diagnostics of a study, for the CLI and the report."""
    with Store(path, read_only=True).reading() as con:
        return diagnostic_rows(con, study) if _has_table(con, "diagnostics") else []


MODEL_QUANTITY = {"hessian_top_eigenvalue": "m.hessian_top_eigenvalues[1]", "test_accuracy": "m.test_accuracy",
                  "test_loss": "m.test_loss", "train_loss": "m.train_loss"}


def model_quantity_rows(con: duckdb.DuckDBPyConnection, study: str, quantity: str) -> list[tuple[Any, ...]]:
    """(swept values, repeat, value) of a model quantity, one row per cell."""
    return con.execute(f"""SELECT coalesce(c.params::VARCHAR, '{{}}'), c."repeat", {MODEL_QUANTITY[quantity]}
                           FROM cells c JOIN models m USING (study, cell_id) WHERE c.study = ?""", [study]).fetchall()
