"""The CLI end to end on a tiny study: run, resume, reuse, query, and bad input that changes nothing."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import duckdb
import pytest
from typer.testing import CliRunner

from inflang.cli import app

runner = CliRunner()

COUNTED = ("studies", "cells", "cell_tasks", "tasks", "train_results", "split_rows", "estimate_rows",
           "actual_rows", "metric_rows", "models", "influence", "metrics", "splits")


def counts(db: Path) -> dict[str, int]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in COUNTED}
    finally:
        con.close()


def invoke(*args: str):
    return runner.invoke(app, list(args))


@pytest.fixture
def finished(tiny_study: Path, tmp_path: Path) -> Path:
    db = tmp_path / "r.duckdb"
    result = invoke("run", str(tiny_study), "--db", str(db))
    assert result.exit_code == 0, result.output
    return db


def test_run_writes_every_table(finished: Path):
    c = counts(finished)
    assert c["cells"] == 1 and c["models"] == 1
    assert c["splits"] == 150
    assert c["influence"] == 2 * 120  # 2 test points x every training point
    con = duckdb.connect(str(finished), read_only=True)
    evaluated = con.execute("SELECT count(*) FROM influence WHERE actual IS NOT NULL").fetchone()[0]
    assert evaluated == 2 * 12
    per_point = con.execute("SELECT count(*) FROM metrics WHERE test_index IS NOT NULL AND estimator IS NOT NULL"
                            ).fetchone()[0]
    assert per_point == 2 * 2
    status, version = con.execute("SELECT c.status, s.inflang_version FROM cells c JOIN studies s USING (study)"
                                  ).fetchone()
    assert status == "done" and version
    test_ids = {r[0] for r in con.execute("SELECT DISTINCT test_index FROM influence").fetchall()}
    roles = dict(con.execute("SELECT \"index\", role FROM splits").fetchall())
    assert all(roles[i] == "test" for i in test_ids)
    con.close()


def test_rerun_computes_nothing_and_adds_no_rows(finished: Path, tiny_study: Path):
    before = counts(finished)
    result = invoke("run", str(tiny_study), "--db", str(finished))
    assert result.exit_code == 0
    assert "ran 0 tasks, reused 6" in result.output
    assert counts(finished) == before


def test_changed_damping_reruns_only_that_estimator(finished: Path, tiny_study: Path):
    tiny_study.write_text(tiny_study.read_text().replace("damping: 0.0", "damping: 0.5"))
    result = invoke("run", str(tiny_study), "--db", str(finished))
    assert result.exit_code == 0
    assert "ran 2 tasks, reused 4" in result.output
    plan = invoke("plan", str(tiny_study), "--db", str(finished))
    assert plan.exit_code == 0 and "to run: 0 model-steps" in plan.output


def test_resume_after_losing_an_artifact(finished: Path, tiny_study: Path):
    """A deleted artifact of a finished task is recomputed when a pending task needs it."""
    for f in (finished.parent / ".inflang").rglob("*.pt"):
        f.unlink()
    tiny_study.write_text(tiny_study.read_text().replace("count: 2", "count: 3"))
    result = invoke("run", str(tiny_study), "--db", str(finished))
    assert result.exit_code == 0, result.output
    con = duckdb.connect(str(finished), read_only=True)
    assert con.execute("SELECT count(DISTINCT test_index) FROM influence").fetchone()[0] == 3
    con.close()


def test_query_formats_and_read_only(finished: Path):
    result = invoke("query", "SELECT metric, count(*) AS n FROM metrics GROUP BY 1 ORDER BY 1", "--db", str(finished),
                    "--format", "json")
    assert result.exit_code == 0
    assert json.loads(result.output) == [{"metric": "below_resolution", "n": 3}, {"metric": "pearson", "n": 3},
                                         {"metric": "resolution", "n": 3}, {"metric": "spearman", "n": 3}]
    csv_out = invoke("query", "SELECT count(*) AS n FROM cells", "--db", str(finished), "--format", "csv")
    assert csv_out.output == "n\n1\n"
    digest = hashlib.sha256(finished.read_bytes()).hexdigest()
    for sql in ("DROP TABLE cells", "INSERT INTO cells VALUES (1)", "COPY cells TO 'x.csv'", "ATTACH 'x.db'",
                "INSTALL httpfs", "LOAD httpfs", "SELECT 1; DELETE FROM cells",
                "SELECT * FROM read_csv('/etc/hostname')"):
        result = invoke("query", sql, "--db", str(finished))
        assert result.exit_code == 2, sql
        assert result.output.startswith("error: ") and "Traceback" not in result.output
    assert hashlib.sha256(finished.read_bytes()).hexdigest() == digest


def test_bad_study_exits_2_and_leaves_the_database_alone(finished: Path, write):
    bad = write("bad.yaml", "study: tiny\ndataset: {name: iris}\nmodel: {arch: mlp, widht: 3}\n"
                            "estimators: [{name: exact}]\n")
    digest = hashlib.sha256(finished.read_bytes()).hexdigest()
    for command in ("validate", "plan", "run"):
        extra = ("--db", str(finished)) if command != "validate" else ()
        result = invoke(command, str(bad), *extra)
        assert result.exit_code == 2
        assert result.output.splitlines()[0] == f"{bad}:3:20: model.widht: unknown key 'widht'"
        assert result.output.splitlines()[1] == "  hint: did you mean 'width'?"
    assert hashlib.sha256(finished.read_bytes()).hexdigest() == digest


def test_failed_cell_is_recorded_and_others_finish(write, tmp_path: Path):
    study = write("f.yaml", """\
        study: f
        dataset: {name: iris}
        model: {arch: logreg}
        training: {optimizer: sgd, lr: 1.0, epochs: 50}
        estimators: [{name: exact}]
        test_points: {count: 2}
        ground_truth: {protocol: loo, steps: 5, removals: {select: random, k: 3}}
        sweep:
          training.lr: [0.5, 1.0e+300]
        """)
    db = tmp_path / "f.duckdb"
    result = invoke("run", str(study), "--db", str(db))
    assert result.exit_code == 1
    con = duckdb.connect(str(db), read_only=True)
    rows = dict(con.execute("SELECT status, error FROM cells").fetchall())
    assert set(rows) == {"done", "failed"}
    assert "lower training.lr" in rows["failed"]
    con.close()


def test_validate_plan_schema_report(tiny_study: Path, finished: Path, tmp_path: Path):
    result = invoke("validate", str(tiny_study))
    assert result.exit_code == 0 and "1 cells, 6 tasks" in result.output
    schema = invoke("schema")
    assert json.loads(schema.output)["title"] == "Study"
    report = invoke("report", "tiny", "--db", str(finished), "--out", str(tmp_path / "rep"))
    assert report.exit_code == 0
    assert (tmp_path / "rep" / "summary.csv").read_text().count("\n") == 2
    missing = invoke("report", "nope", "--db", str(finished))
    assert missing.exit_code == 2 and "no study 'nope'" in missing.output


def test_database_path_that_is_a_directory(tiny_study: Path, tmp_path: Path):
    result = invoke("run", str(tiny_study), "--db", str(tmp_path))
    assert result.exit_code == 2 and "is a directory" in result.output


def test_plan_chunks_match_the_run(tiny_study: Path, tmp_path: Path, monkeypatch):
    """`inflang plan --memory-budget` predicts the number of ensembles `run` trains under that budget."""
    import runners.protocols.common as loo
    from inflang.compiling.plan import compile_study
    from inflang.compiling.validate import load_study

    calls = []
    real = loo.train_ensemble
    monkeypatch.setattr(loo, "train_ensemble", lambda *a, **k: calls.append(1) or real(*a, **k))
    budget = 40_000
    (gt,) = [t for t in compile_study(load_study(tiny_study)).tasks.values() if t.kind == "ground_truth"]
    result = invoke("run", str(tiny_study), "--db", str(tmp_path / "c.duckdb"), "--memory-budget", str(budget))
    assert result.exit_code == 0
    assert gt.chunks(budget) == len(calls) > 1
    shown = invoke("plan", str(tiny_study), "--memory-budget", str(budget))
    (row,) = [line for line in shown.output.splitlines() if "ground_truth" in line]
    assert [c.strip() for c in row.split("│")][7] == str(len(calls))


def test_plan_lists_tasks_as_cached_or_pending(tiny_study: Path, finished: Path):
    result = invoke("plan", str(tiny_study), "--db", str(finished), "--tasks")
    assert result.exit_code == 0
    assert result.output.count("cached") >= 5 and "pending" not in result.output.split("┃ task")[1].split("plan")[0]
    tiny_study.write_text(tiny_study.read_text().replace("damping: 0.0", "damping: 0.3"))
    changed = invoke("plan", str(tiny_study), "--db", str(finished), "--tasks")
    assert changed.output.count("pending") == 2  # the estimate and its metrics


@pytest.mark.parametrize(("flags", "message"), [
    (["--executor", "slurm"], "error: --executor: 'slurm' is not one of local, ray"),
    (["--engine", "fast"], "error: --engine: 'fast' is not one of auto, compiled, eager"),
    (["--max-seeds", "5"], "error: --max-seeds goes with --until-settled"),
    (["--time-budget", "1h"], "error: --time-budget goes with --until-settled"),
    (["--until-settled", "--time-budget", "soon"],
     "error: --time-budget: 'soon' is not a duration (e.g. 90s, 30m, 2h)"),
    (["--until-settled", "--select", "seed=3"],
     "error: --until-settled judges the study's claims over all their cells: leave out --select"),
    (["--memory-budget", "lots"], "error: --memory-budget: 'lots' is not a size (e.g. 512MB, 4GB)"),
])
def test_run_names_the_flag_that_is_wrong(tiny_study: Path, tmp_path: Path, flags: list[str], message: str):
    """The run's options are checked (inflang.api.run_options) before anything is written."""
    db = tmp_path / "r.duckdb"
    result = invoke("run", str(tiny_study), "--db", str(db), *flags)
    assert result.exit_code == 2
    assert result.output.splitlines()[-1] == message and "Traceback" not in result.output
    assert not db.exists()


def test_a_study_error_comes_before_a_bad_memory_budget(tmp_path: Path):
    result = invoke("run", str(tmp_path / "missing.yaml"), "--memory-budget", "lots")
    assert result.exit_code == 2 and "missing.yaml" in result.output and "memory-budget" not in result.output


def test_plan_checks_the_engine_it_is_told_in_the_environment(tiny_study: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("INFLANG_ENGINE", "fast")
    result = invoke("plan", str(tiny_study))
    assert result.exit_code == 2
    assert result.output.splitlines()[-1] == "error: INFLANG_ENGINE: 'fast' is not one of auto, compiled, eager"
