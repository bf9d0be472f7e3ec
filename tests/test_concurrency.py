"""One database, several processes: runs at once, readers beside a writer, a long-lived ``inflang.connect()``,
``kill -9`` of one writer; and the lock itself (nesting in one process, the waiting line, the time limit)."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

import inflang
from inflang.errors import UsageError
from inflang.results.store import Store, access, lock_path, run_query, studies_overview, study_names
from inflang.results.store import connections as store_module
from tests.conftest import TINY
from tests.helpers import rows

ROOT = Path(__file__).resolve().parents[1]

# three tiny studies: b has tasks of its own (another seed); c is a under another name (every task shared)
STUDIES = {"tiny-a": TINY.replace("study: tiny", "study: tiny-a"),
           "tiny-b": TINY.replace("study: tiny", "study: tiny-b").replace("seed: 3", "seed: 4"),
           "tiny-c": TINY.replace("study: tiny", "study: tiny-c")}

# what each study's rows are, compared between databases (timestamps and run records left out)
VIEWS = {"influence": "SELECT * FROM influence WHERE study = ? ORDER BY ALL",
         "metrics": "SELECT * FROM metrics WHERE study = ? ORDER BY ALL",
         "models": "SELECT * EXCLUDE (train_seconds) FROM models WHERE study = ? ORDER BY ALL",
         "cells": "SELECT cell_id, status FROM cells WHERE study = ? ORDER BY ALL",
         "sweep_results": "SELECT * FROM sweep_results WHERE study = ? ORDER BY ALL"}
DUPLICATES = """SELECT count(*) FROM (
    SELECT task_hash, test_index, train_index FROM estimate_rows GROUP BY ALL HAVING count(*) > 1
    UNION ALL SELECT task_hash, test_index, train_index FROM actual_rows GROUP BY ALL HAVING count(*) > 1
    UNION ALL SELECT task_hash, 0, 0 FROM train_results GROUP BY ALL HAVING count(*) > 1)"""


def contents(db: Path, studies: tuple[str, ...] = tuple(STUDIES)) -> dict[tuple[str, str], list[tuple]]:
    con = inflang.connect(db)
    try:
        return {(study, view): con.execute(sql, [study]).fetchall() for study in studies for view, sql in VIEWS.items()}
    finally:
        con.close()


def cli(*args: str, cwd: Path, **env: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "inflang.cli", *args], cwd=cwd, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", **env},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def finish(proc: subprocess.Popen, timeout: float = 240) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[tuple[str, str], list[tuple]]:
    """The three studies run one after another into one database, in this process."""
    folder = tmp_path_factory.mktemp("sequential")
    for name, text in STUDIES.items():
        (folder / f"{name}.yaml").write_text(text)
        inflang.run(folder / f"{name}.yaml", db=folder / "seq.duckdb")
    return contents(folder / "seq.duckdb")


def files(tmp_path: Path) -> list[Path]:
    for name, text in STUDIES.items():
        (tmp_path / f"{name}.yaml").write_text(text)
    return [tmp_path / f"{name}.yaml" for name in STUDIES]


def test_three_runs_at_once_land_every_row_once_while_readers_read(tmp_path: Path, reference):
    db = tmp_path / "one.duckdb"
    runs = [cli("run", str(f), "--db", str(db), cwd=tmp_path) for f in files(tmp_path)]
    counts: list[int] = []
    while any(p.poll() is None for p in runs):  # queries and ls answer all along (from what has landed)
        if db.exists():
            counts.append(run_query(db, "SELECT count(*) FROM tasks WHERE status = 'done'")[1][0][0])
            assert {name for name, *_ in studies_overview(db)[1]} <= set(STUDIES)
        time.sleep(0.2)
    reads = len(counts)
    assert counts == sorted(counts)  # what has landed stays landed
    for proc in runs:
        code, out = finish(proc)
        assert code == 0, out
        assert "Traceback" not in out
    assert reads > 0
    assert contents(db) == reference
    assert rows(db, DUPLICATES) == [(0,)]
    assert rows(db, "SELECT count(*), count(DISTINCT study) FROM runs WHERE status = 'done'") == [(3, 3)]


def test_kill_9_of_one_of_two_runs_then_rerun_lands_every_row_once(tmp_path: Path, reference):
    db = tmp_path / "one.duckdb"
    a, b, _ = files(tmp_path)
    victim = cli("run", str(b), "--db", str(db), cwd=tmp_path)
    deadline = time.time() + 120
    while not db.exists() or run_query(db, "SELECT count(*) FROM tasks WHERE status = 'done'")[1][0][0] < 1:
        assert time.time() < deadline and victim.poll() is None
        time.sleep(0.02)
    other = cli("run", str(a), "--db", str(db), cwd=tmp_path)
    victim.send_signal(signal.SIGKILL)  # mid-run: its lock goes with it; DuckDB keeps what it committed
    victim.wait(timeout=30)
    code, out = finish(other)
    assert code == 0, out
    assert inflang.run(b, db=db).ran < 6  # resumed: what the killed run finished is reused
    studies = ("tiny-a", "tiny-b")
    assert contents(db, studies) == {k: v for k, v in reference.items() if k[0] in studies}
    assert rows(db, DUPLICATES) == [(0,)]


def test_a_long_lived_connect_does_not_stall_a_run_and_keeps_its_snapshot(tmp_path: Path):
    a, b, _ = files(tmp_path)
    db = tmp_path / "one.duckdb"
    inflang.run(a, db=db)
    before = set(Path(tempfile.gettempdir()).glob("inflang-snapshot-*"))
    con = inflang.connect(db)  # held open across the whole run below
    assert set(Path(tempfile.gettempdir()).glob("inflang-snapshot-*")) == before  # nothing left on disk
    seen = con.execute("SELECT count(*) FROM influence").fetchone()
    code, out = finish(cli("run", str(b), "--db", str(db), cwd=tmp_path, INFLANG_DB_WAIT="30"), timeout=120)
    assert code == 0, out
    assert "waiting for the database" not in out
    assert con.execute("SELECT study FROM studies").fetchall() == [("tiny-a",)]  # the snapshot, as of connect
    assert con.execute("SELECT count(*) FROM influence").fetchone() == seen
    con.close()
    fresh = inflang.connect(db)
    assert sorted(fresh.execute("SELECT study FROM studies").fetchall()) == [("tiny-a",), ("tiny-b",)]
    fresh.close()


# --- the lock -----------------------------------------------------------------------------------------------

@pytest.fixture
def small_db(tmp_path: Path) -> Path:
    db = tmp_path / "s.duckdb"
    store = Store(db)
    store.record_study("s", "h", "", "", [("c0", 0, 0, {})], [])
    return db


def hold(db: Path, mode: int) -> int:
    """Take the lock file as another process would (another open file description)."""
    fd = os.open(lock_path(db), os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, mode)
    return fd


def test_nested_accesses_share_one_connection(small_db: Path):
    with access(small_db, write=True) as writer, access(small_db, write=False) as reader:
        assert reader is writer  # a read inside a write reads through the writer (its own writes too)
        writer.execute("CREATE TABLE scratch (x INTEGER)")
        assert reader.execute("SELECT count(*) FROM scratch").fetchone() == (0,)
    with (access(small_db, write=False), pytest.raises(RuntimeError, match="nested inside a read"),
          access(small_db, write=True)):
        pass
    store = Store(small_db)
    with pytest.raises(ZeroDivisionError), store.transaction() as con:  # an inner write joins the outer one
        store.set_cell_status("s", {"c0": ("done", None)})
        assert con.execute("SELECT status FROM cells").fetchone() == ("done",)
        raise ZeroDivisionError
    assert rows(small_db, "SELECT status FROM cells") == [("pending",)]  # rolled back together


def test_readers_share_the_lock_and_a_writer_waits_for_them(small_db: Path, monkeypatch):
    monkeypatch.setenv("INFLANG_DB_WAIT", "0.3")
    fd = hold(small_db, fcntl.LOCK_SH)  # a reader elsewhere
    try:
        assert study_names(small_db) == ["s"]  # readers go together
        with pytest.raises(UsageError, match=r"still in use by another inflang process .* INFLANG_DB_WAIT"):
            Store(small_db).set_cell_status("s", {"c0": ("done", None)})
    finally:
        os.close(fd)
    Store(small_db).set_cell_status("s", {"c0": ("done", None)})
    assert rows(small_db, "SELECT status FROM cells") == [("done",)]


def test_a_reader_waits_for_a_writer_saying_so_once(small_db: Path, monkeypatch, capsys):
    monkeypatch.setattr(store_module, "NOTICE_AFTER", 0.1)
    fd = hold(small_db, fcntl.LOCK_EX)  # a writer elsewhere, done in 0.6 s
    threading.Timer(0.6, os.close, [fd]).start()
    started = time.monotonic()
    assert run_query(small_db, "SELECT study FROM studies")[1] == [("s",)]
    assert time.monotonic() - started >= 0.5
    lines = capsys.readouterr().err.splitlines()
    assert lines == [f"waiting for the database {small_db}: another inflang process is using it"]


def test_a_foreign_duckdb_writer_is_waited_for(small_db: Path, capsys, monkeypatch):
    """A process outside inflang's lock (the duckdb CLI, a notebook's writing connection) holding the file."""
    monkeypatch.setattr(store_module, "NOTICE_AFTER", 0.1)
    holder = subprocess.Popen([sys.executable, "-c", "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); "
                               "print('held', flush=True); time.sleep(1.0)", str(small_db)],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    assert study_names(small_db) == ["s"]
    holder.wait(timeout=30)
    assert "another process is using it" in capsys.readouterr().err


def test_the_cli_gives_up_with_one_line_and_exit_2(small_db: Path, monkeypatch):
    from typer.testing import CliRunner

    from inflang.cli import app

    monkeypatch.setenv("INFLANG_DB_WAIT", "0.2")
    fd = hold(small_db, fcntl.LOCK_EX)
    try:
        result = CliRunner().invoke(app, ["query", "SELECT 1", "--db", str(small_db)])
    finally:
        os.close(fd)
    assert result.exit_code == 2
    assert "still in use by another inflang process" in result.output and "Traceback" not in result.output


def test_a_run_notices_only_what_others_wrote(small_db: Path):
    store = Store(small_db)
    assert store.finished_elsewhere(["t"]) == {}  # its own write (the schema) is not news
    code = ("import sys; from inflang.results.store import Store; "
            "Store(sys.argv[1]).write_task('t', 'train', {}, {}, 0.0, None)")
    subprocess.run([sys.executable, "-c", code, str(small_db)], check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert store.finished_elsewhere(["t"]) == {"t": ("done", None, None)}
    assert store.finished_elsewhere(["t"]) == {}  # seen
    # another run's write between two of this run's writes is news after this run's own write too
    code_v = code.replace("write_task('t'", "write_task('v'")
    subprocess.run([sys.executable, "-c", code_v, str(small_db)], check=True,
                   env={**os.environ, "PYTHONPATH": str(ROOT)})
    store.write_task("u", "train", {}, {}, 0.0, None)
    assert store.finished_elsewhere(["v"]) == {"v": ("done", None, None)}
    store.fail_task("t", "train", {}, "boom", 0.0)  # another run's finished task is kept
    assert store.task_status(["t"]) == {"t": ("done", None, None)}


def test_snapshot_of_a_missing_database_is_a_usage_error(tmp_path: Path):
    with pytest.raises(UsageError, match="no such database"):
        inflang.connect(tmp_path / "none.duckdb")




def test_a_writing_connect_is_the_database_itself(small_db: Path):
    con = inflang.connect(small_db, read_only=False)
    con.execute("CREATE TABLE notes (note VARCHAR)")
    assert study_names(small_db) == ["s"]  # a read in the same process shares its instance
    con.close()
    assert rows(small_db, "SELECT count(*) FROM notes") == [(0,)]


def test_a_cell_another_run_finished_meanwhile_is_done(tmp_path: Path):
    """Two runs of one study with other --select at once: each marks the other's cells from the task states at
    its end, not at its start (the other's cells were left pending)."""
    from inflang.api import execute_plan, plan
    from inflang.running.scheduler import Events

    study = tmp_path / "s.yaml"
    study.write_text(TINY + "sweep:\n  training.weight_decay: [0.01, 0.1]\n")
    db = tmp_path / "one.duckdb"

    class OtherRunMeanwhile(Events):
        def start(self, plan_, pending) -> None:  # this run has read the task states: the other runs now
            code, out = finish(cli("run", str(study), "--db", str(db), "--select", "weight_decay=0.1", cwd=tmp_path))
            assert code == 0, out

    compiled = plan(study)
    chosen = compiled.select([c.cell.cell_id for c in compiled.cells if c.cell.params["training.weight_decay"] == 0.01])
    with Store(db) as store:
        execute_plan(chosen, store, events=OtherRunMeanwhile())
    assert rows(db, "SELECT status, count(*) FROM cells GROUP BY ALL") == [("done", 2)]


def test_writers_wait_without_limit_unless_told_and_readers_ten_minutes(small_db: Path, monkeypatch):
    import math

    monkeypatch.delenv("INFLANG_DB_WAIT", raising=False)
    assert store_module._Wait(small_db, True).limit == math.inf  # a run hours in is not aborted by a long read
    assert store_module._Wait(small_db, False).limit == 600.0
    monkeypatch.setenv("INFLANG_DB_WAIT", "5")
    assert store_module._Wait(small_db, True).limit == 5.0


def test_a_query_leaves_this_processs_own_writing_connection_as_it_was(small_db: Path, tmp_path: Path):
    con = inflang.connect(small_db, read_only=False)
    try:
        assert run_query(small_db, "SELECT 1")[1] == [(1,)]  # shares con's instance: no settings of its own
        con.execute(f"COPY (SELECT 1 AS x) TO '{tmp_path / 'x.csv'}'")  # file access still on
    finally:
        con.close()
    assert (tmp_path / "x.csv").is_file()


def test_a_writer_waiting_for_a_foreign_connection_lets_go_of_the_lock_file(small_db: Path):
    """Another process's run waits while a notebook here holds a writing connection; meanwhile this process's
    own reads answer at once (the waiting writer does not sit on the lock file)."""
    con = inflang.connect(small_db, read_only=False)
    try:
        code = ("import sys; from inflang.results.store import Store; "
                "Store(sys.argv[1]).write_task('w', 'train', {}, {}, 0, None)")
        writer = subprocess.Popen([sys.executable, "-c", code, str(small_db)], env={**os.environ,
                                  "PYTHONPATH": str(ROOT)}, stderr=subprocess.PIPE, text=True)
        time.sleep(2.5)
        start = time.monotonic()
        study_names(small_db)
        assert time.monotonic() - start < 1.0
        assert writer.poll() is None  # still waiting for this process's connection
    finally:
        con.close()
    assert writer.wait(timeout=60) == 0
    assert "waiting for the database" in (writer.stderr.read() if writer.stderr else "")
