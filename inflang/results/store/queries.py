"""Read-only queries of the result database: the CLI's and the report's named queries, and the user's own
SQL (refused unless it is one read-only statement)."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import duckdb

from inflang.errors import UsageError
from inflang.results.store.connections import _nested, read
from inflang.results.store.schema import _sql_key, has_table

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
    with read(path) as con:
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
    with read(path) as con:
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


def study_protocols(path: str | Path, study: str) -> set[str]:
    """The protocols the study's finished ground truths ran."""
    return {p for (p,) in _read(path, "SELECT DISTINCT protocol FROM ground_truths WHERE study = ?", [study])[1]}


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
    if not has_table(con, "seed_additions"):  # a database from before sequential runs, opened to read
        return {}
    return dict(con.execute("SELECT point, repeats FROM seed_additions WHERE study = ?", [study]).fetchall())


def sequential_designs(con: duckdb.DuckDBPyConnection, study: str
                       ) -> dict[tuple[str, str], tuple[int, int, int | None]]:
    """(claim, definition) -> (first, last, settled) seeds of the looks, for the study's claims judged
    sequentially (settled: the look it stopped at, or None)."""
    if not has_table(con, "sequential_claims"):
        return {}
    return {(c, d): (f, la, st) for c, d, f, la, st in con.execute(
        "SELECT claim, definition, first_seeds, last_seeds, settled_seeds FROM sequential_claims WHERE study = ?",
        [study]).fetchall()}


def study_added_repeats(path: str | Path, study: str) -> dict[str, int]:
    """``added_repeats`` of a database file; {} when there is no database there yet."""
    if not Path(path).exists():
        return {}
    with read(path) as con:
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
    with read(path) as con:
        return diagnostic_rows(con, study) if has_table(con, "diagnostics") else []


MODEL_QUANTITY = {"hessian_top_eigenvalue": "m.hessian_top_eigenvalues[1]", "test_accuracy": "m.test_accuracy",
                  "test_loss": "m.test_loss", "train_loss": "m.train_loss"}


def model_quantity_rows(con: duckdb.DuckDBPyConnection, study: str, quantity: str) -> list[tuple[Any, ...]]:
    """(swept values, repeat, value) of a model quantity, one row per cell."""
    return con.execute(f"""SELECT coalesce(c.params::VARCHAR, '{{}}'), c."repeat", {MODEL_QUANTITY[quantity]}
                           FROM cells c JOIN models m USING (study, cell_id) WHERE c.study = ?""", [study]).fetchall()
