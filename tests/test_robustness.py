"""Runs that go wrong: numeric failures, crashes between artifact and commit, determinism, nesting bounds."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from inflang.cli import app
from inflang.compiling.plan import compile_study
from inflang.compiling.validate import load_study
from inflang.errors import StudyError
from inflang.results.store import Store
from tests.helpers import rows

runner = CliRunner()
QUICKSTART = Path(__file__).parent.parent / "studies" / "quickstart.yaml"


def test_quickstart_is_bitwise_deterministic(write, tmp_path: Path):
    """The quickstart (shortened through `extends`) run twice into two databases gives identical tables."""
    small = write("small.yaml", f"""\
        extends: {QUICKSTART}
        study: quickstart-small
        training: {{epochs: 200}}
        test_points: {{count: 3}}
        repeats: 1
        ground_truth: {{protocol: loo, steps: 30, removals: {{select: random, k: 15}}}}
        sweep:
          model.depth: [1, 2]
        """)
    tables = []
    for name in ("a", "b"):
        db = tmp_path / name / "r.duckdb"
        assert runner.invoke(app, ["run", str(small), "--db", str(db)]).exit_code == 0
        tables.append((rows(db, "SELECT * FROM influence ORDER BY ALL"),
                       rows(db, "SELECT * FROM metrics ORDER BY ALL"),
                       rows(db, "SELECT n_params, train_loss, test_loss, hessian_top_eigenvalues FROM models "
                                "ORDER BY ALL")))
    assert tables[0] == tables[1]
    assert len(tables[0][0]) == 2 * 3 * 120


def test_crash_between_artifact_and_commit_is_repaired(tiny_study: Path, tmp_path: Path, monkeypatch):
    """A crash after a task's artifact is written but before its rows commit: the next run redoes the task,
    and the database ends as an uninterrupted run's, with no duplicate rows."""
    db = tmp_path / "crash.duckdb"
    reference = tmp_path / "ref.duckdb"
    assert runner.invoke(app, ["run", str(tiny_study), "--db", str(reference)]).exit_code == 0

    original = Store.write_task

    def crash_on_ground_truth(self, task_hash, kind, *args, **kwargs):
        if kind == "ground_truth":
            raise KeyboardInterrupt  # as abrupt as Ctrl-C; the transaction never commits
        return original(self, task_hash, kind, *args, **kwargs)

    monkeypatch.setattr(Store, "write_task", crash_on_ground_truth)
    result = runner.invoke(app, ["run", str(tiny_study), "--db", str(db)])
    assert result.exit_code == 130 and "run the same command again to resume" in result.output
    assert rows(db, "SELECT count(*) FROM actual_rows") == [(0,)]
    assert list((tmp_path / ".inflang").rglob("*.pt"))  # the artifact was written
    monkeypatch.setattr(Store, "write_task", original)
    result = runner.invoke(app, ["run", str(tiny_study), "--db", str(db)])
    assert result.exit_code == 0 and "ran 2 tasks, reused 4" in result.output
    for table in ("influence", "metrics", "models", "splits"):
        sql = f"SELECT * EXCLUDE (study) FROM {table} ORDER BY ALL"
        if table == "models":
            sql = "SELECT n_params, train_loss, test_loss FROM models ORDER BY ALL"
        assert rows(db, sql) == rows(reference, sql), table


def test_corrupt_artifact_is_recomputed(tiny_study: Path, tmp_path: Path):
    db = tmp_path / "c.duckdb"
    assert runner.invoke(app, ["run", str(tiny_study), "--db", str(db)]).exit_code == 0
    for f in (tmp_path / ".inflang").rglob("*.pt"):
        f.write_bytes(f.read_bytes()[:-10] + b"0123456789")
    tiny_study.write_text(tiny_study.read_text().replace("metrics: [pearson, spearman]", "metrics: [kendall]"))
    result = runner.invoke(app, ["run", str(tiny_study), "--db", str(db)])
    assert result.exit_code == 0, result.output
    assert rows(db, "SELECT DISTINCT metric FROM metrics WHERE estimator IS NOT NULL") == [("kendall",)]


@pytest.mark.parametrize(("estimator", "message"), [
    ("{name: exact, damping: 0.0}", "not positive definite"),
    ("{name: lissa, damping: 0.01, scale: 0.001, recursion_depth: 200}", "lissa diverged"),
])
def test_numeric_failures_fail_the_cell_with_a_fix(write, tmp_path: Path, estimator: str, message: str):
    study = write("n.yaml", f"""\
        study: numeric
        dataset: {{name: iris, test_size: 30}}
        model: {{arch: mlp, depth: 2, width: 6, activation: tanh}}
        training: {{optimizer: sgd, lr: 0.05, epochs: 3}}
        estimators: [{estimator}]
        test_points: {{count: 2}}
        ground_truth: {{protocol: loo, steps: 2, removals: {{select: random, k: 3}}}}
        """)
    db = tmp_path / "n.duckdb"
    result = runner.invoke(app, ["run", str(study), "--db", str(db)])
    assert result.exit_code == 1
    ((status, error),) = rows(db, "SELECT status, error FROM cells")
    assert status == "failed" and message in error and ("damping" in error or "scale" in error)
    # the message is printed in full below the table, on one line, not wrapped into a narrow column
    assert any(line.startswith("failed cell ") and line.endswith(error) for line in result.output.splitlines())
    again = runner.invoke(app, ["run", str(study), "--db", str(db)])
    assert again.exit_code == 1 and "--retry-failed" in again.output


def test_deep_nesting_is_bounded(write):
    path = write("deep.yaml", "study: deep\ndescription: " + "[" * 200 + "]" * 200 + "\n")
    with pytest.raises(StudyError, match="nested deeper than"):
        load_study(path)


def test_artifacts_stay_inside_dot_inflang(tiny_study: Path, tmp_path: Path):
    db = tmp_path / "sub" / "r.duckdb"
    assert runner.invoke(app, ["run", str(tiny_study), "--db", str(db)]).exit_code == 0
    written = {p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file()}
    assert all(str(p).startswith("sub/.inflang/") or p.name in ("r.duckdb", "r.duckdb.lock", "tiny.yaml")
               for p in written), written  # the lock file belongs to the database, as its WAL would
    plan = compile_study(load_study(tiny_study))
    assert all(set(h) <= set("0123456789abcdef") for h in plan.tasks)


def test_each_run_writes_a_log_with_tracebacks(write, tmp_path: Path):
    study = write("l.yaml", """\
        study: logged
        dataset: {name: iris, test_size: 30}
        model: {arch: mlp, depth: 1, width: 4}
        training: {optimizer: sgd, lr: 0.05, epochs: 3}
        estimators: [{name: exact, damping: 0.0}, {name: grad_dot}]
        test_points: {count: 2}
        ground_truth: {protocol: loo, steps: 2, removals: {select: random, k: 3}}
        """)
    db = tmp_path / "l.duckdb"
    result = runner.invoke(app, ["run", str(study), "--db", str(db)])
    assert result.exit_code == 1
    ((run_id,),) = rows(db, "SELECT run_id FROM runs")
    log = tmp_path / ".inflang" / "logs" / f"{run_id}.log"
    assert f"log: {log}" in result.output.replace("\n", "")
    text = log.read_text()
    assert "of study 'logged'" in text and "done train" in text and "end: ran" in text
    assert "failed estimate" in text and "Traceback (most recent call last)" in text
    assert "not positive definite" in text and "skipped metrics" in text
