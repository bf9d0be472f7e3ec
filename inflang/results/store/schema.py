"""The result database's schema: its tables, migrations and views (LANGUAGE.md's tables are views over
the task outputs keyed by task hash), and the types of a task's rows."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import duckdb

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


def has_table(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    found = con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [name]).fetchone()
    return bool(found and found[0])
