"""Crashes and concurrency with real processes: SIGKILL at several points, then resume; two runs at once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

# dropout and scratch retraining with repeats: every random draw (masks, orders, initialisations) must be
# seeded by the task, so a killed, resumed, multi-process or Ray run gives the same rows
STUDY = """\
study: killed
dataset: {name: iris, test_size: 30}
model: {arch: mlp, depth: 1, width: 6, dropout: 0.1}
training: {optimizer: adam, lr: 0.02, epochs: 80, weight_decay: 0.01}
estimators: [{name: exact, damping: 0.01, negative: abs}, {name: grad_dot}]
test_points: {count: 2}
ground_truth: {protocol: loo, start: scratch, repeats: 2, removals: {select: random, k: 10}}
sweep:
  model.width: [4, 6, 8]
"""

TABLES = {
    "influence": "SELECT * EXCLUDE (study) FROM influence ORDER BY ALL",
    "metrics": "SELECT * EXCLUDE (study) FROM metrics ORDER BY ALL",
    "models": "SELECT cell_id, n_params, train_loss, test_loss, hessian_top_eigenvalues FROM models ORDER BY ALL",
    "splits": "SELECT * EXCLUDE (study) FROM splits ORDER BY ALL",
    "cells": "SELECT cell_id, status, params FROM cells ORDER BY ALL",
    "tasks": "SELECT task_hash, kind, status FROM tasks ORDER BY ALL",
    "sweep_results": "SELECT * EXCLUDE (study) FROM sweep_results ORDER BY ALL",
}


def inflang(*args: str, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "inflang.cli", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def snapshot(db: Path) -> dict[str, list[tuple]]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return {name: con.execute(sql).fetchall() for name, sql in TABLES.items()}
    finally:
        con.close()


def artifacts(folder: Path) -> int:
    return len(list((folder / ".inflang").rglob("*.pt")))


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, list[tuple]]:
    folder = tmp_path_factory.mktemp("reference")
    (folder / "s.yaml").write_text(STUDY)
    proc = inflang("run", "s.yaml", "--db", "r.duckdb", cwd=folder)
    assert proc.wait(timeout=300) == 0, proc.stdout.read() if proc.stdout else ""
    return snapshot(folder / "r.duckdb")


def test_sigkill_then_resume_gives_the_same_database(tmp_path: Path, reference):
    """Killed after 1, then 5, then 9 saved artifacts (each resumed run killed again), then resumed to the end:
    the database equals an uninterrupted run's, and a rerun computes nothing."""
    (tmp_path / "s.yaml").write_text(STUDY)
    for kill_after in (1, 5, 9):
        proc = inflang("run", "s.yaml", "--db", "r.duckdb", cwd=tmp_path)
        deadline = time.time() + 240
        while artifacts(tmp_path) < kill_after and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        assert proc.poll() is None, f"the run ended before {kill_after} artifacts were saved"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    resumed = inflang("run", "s.yaml", "--db", "r.duckdb", cwd=tmp_path)
    output = resumed.stdout.read() if resumed.stdout else ""
    assert resumed.wait(timeout=300) == 0, output
    assert snapshot(tmp_path / "r.duckdb") == reference
    again = inflang("run", "s.yaml", "--db", "r.duckdb", cwd=tmp_path)
    text = again.stdout.read() if again.stdout else ""
    assert again.wait(timeout=120) == 0 and "ran 0 tasks" in text


def test_a_second_run_of_the_same_study_at_once_gives_the_same_database(tmp_path: Path, reference):
    """Two runs share the database: each task's rows land once, whichever run finished it."""
    (tmp_path / "s.yaml").write_text(STUDY)
    first = inflang("run", "s.yaml", "--db", "r.duckdb", cwd=tmp_path)
    deadline = time.time() + 120
    while artifacts(tmp_path) < 1 and first.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    second = inflang("run", "s.yaml", "--db", "r.duckdb", cwd=tmp_path)
    text = second.stdout.read() if second.stdout else ""
    assert second.wait(timeout=300) == 0, text
    assert "Traceback" not in text
    assert first.wait(timeout=300) == 0
    assert snapshot(tmp_path / "r.duckdb") == reference


def test_workers_give_the_same_database_as_one_process(tmp_path: Path, reference):
    (tmp_path / "s.yaml").write_text(STUDY)
    proc = inflang("run", "s.yaml", "--db", "r.duckdb", "--workers", "2", "--threads", "2", cwd=tmp_path)
    output = proc.stdout.read() if proc.stdout else ""
    assert proc.wait(timeout=300) == 0, output
    assert snapshot(tmp_path / "r.duckdb") == reference
    con = duckdb.connect(str(tmp_path / "r.duckdb"), read_only=True)
    assert con.execute("SELECT executor FROM runs").fetchone()[0] == "local x2"
    con.close()


def test_ray_gives_the_same_database_as_the_local_executor(tmp_path: Path, reference):
    pytest.importorskip("ray")
    (tmp_path / "s.yaml").write_text(STUDY)
    proc = inflang("run", "s.yaml", "--db", "r.duckdb", "--executor", "ray", "--workers", "2", "--device", "auto",
                   cwd=tmp_path)
    output = proc.stdout.read() if proc.stdout else ""
    assert proc.wait(timeout=300) == 0, output
    import torch

    expected = "cuda" if torch.cuda.is_available() else "cpu"  # auto follows the cluster's GPUs
    if expected == "cpu":  # GPU results differ from CPU ones in the last bits
        assert snapshot(tmp_path / "r.duckdb") == reference
    con = duckdb.connect(str(tmp_path / "r.duckdb"), read_only=True)
    assert con.execute("SELECT executor, device FROM runs").fetchone() == ("ray", expected)
    con.close()
