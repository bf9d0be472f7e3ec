"""Access to the result database by several processes: each opens it for one read or one write only
(``access``), under the lock file ``<db>.lock`` (shared to read, exclusive to write), so queries answer while
runs write and several runs write at once; ``snapshot`` gives a long-lived reader a private copy."""

from __future__ import annotations

import fcntl
import math
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from inflang.errors import UsageError


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
    db = existing_database(path)
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


def existing_database(path: str | Path) -> Path:
    """The database file at ``path``; UsageError when there is none yet."""
    found = check_db_path(path)
    if not found.exists():
        raise UsageError(f"{found}: no such database; run a study first (inflang run STUDY.yaml)")
    return found


@contextmanager
def read(path: str | Path) -> Iterator[duckdb.DuckDBPyConnection]:
    """A connection for the reads of one block of an existing database, under the shared lock."""
    with access(existing_database(path), write=False) as con:
        yield con
