"""Exploring results: the HTML report, compare, ls, init, query extras, the Python API, the editor schema."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import jsonschema
import pytest
import yaml
from typer.testing import CliRunner

import inflang
from inflang.cli import app
from inflang.cli.examples import EXAMPLES

runner = CliRunner()
ROOT = Path(__file__).parent.parent


@pytest.fixture
def swept(write, tmp_path: Path) -> Path:
    study = write("swept.yaml", """\
        study: swept
        dataset: {name: iris, test_size: 30}
        model: {arch: mlp, depth: 1, width: 4}
        training: {optimizer: adam, lr: 0.05, epochs: 100, weight_decay: 0.01}
        estimators: [{name: exact, damping: 0.01, negative: abs}, {name: grad_dot}]
        test_points: {count: 3}
        ground_truth: {protocol: loo, steps: 20, repeats: 2, removals: {select: random, k: 10}}
        metrics: {names: [pearson, spearman], bootstrap: 20}
        hessian: {top_eigenvalues: 2}
        sweep:
          model.depth: [1, 2]
        """)
    db = tmp_path / "r.duckdb"
    assert runner.invoke(app, ["run", str(study), "--db", str(db)]).exit_code == 0
    return db


def test_report_help_names_the_plot_extra():
    result = runner.invoke(app, ["report", "--help"])
    assert "inflang[plot]" in result.output


def test_html_report_has_the_figures(swept: Path, tmp_path: Path):
    out = tmp_path / "report"
    result = runner.invoke(app, ["report", "swept", "--db", str(swept), "--out", str(out)])
    assert result.exit_code == 0, result.output
    html = (out / "report.html").read_text()
    figures = sorted(p.name for p in (out / "figures").glob("*.png"))
    # a scatter per cell, the correlation and the eigenvalue against depth
    assert len(figures) == 4 and "correlation-model.depth.png" in figures
    assert html.count("<img src='data:image/png;base64,") == 4
    assert "No cell failed." in html
    assert (out / "summary.csv").read_text().startswith("params,estimator,spearman,spearman_low,spearman_high,")


def test_run_summary_shows_the_ceiling(swept: Path, write):
    result = runner.invoke(app, ["report", "swept", "--db", str(swept)])
    assert "ceiling" in result.output


def test_compare_two_studies(swept: Path, write, tmp_path: Path):
    other = write("other.yaml", (tmp_path / "swept.yaml").read_text().replace("study: swept", "study: other")
                  .replace("weight_decay: 0.01", "weight_decay: 0.1"))
    assert runner.invoke(app, ["run", str(other), "--db", str(swept)]).exit_code == 0
    result = runner.invoke(app, ["compare", "swept", "other", "--db", str(swept)])
    assert result.exit_code == 0, result.output
    assert result.output.count("depth=") == 4  # 2 depths x 2 estimators
    assert result.output.count("resolved") == 4  # each difference says whether its interval excludes 0
    twin = write("twin.yaml", (tmp_path / "swept.yaml").read_text().replace("study: swept", "study: twin"))
    assert runner.invoke(app, ["run", str(twin), "--db", str(swept)]).exit_code == 0
    same = runner.invoke(app, ["compare", "swept", "twin", "--db", str(swept)])
    assert same.output.count("0.000 [0.00, 0.00] no spread") == 4, same.output  # the same tasks: no difference
    missing = runner.invoke(app, ["compare", "swept", "nope", "--db", str(swept)])
    assert missing.exit_code == 2 and "no study nope" in missing.output


def test_ls_lists_studies_with_counts(swept: Path):
    result = runner.invoke(app, ["ls", "--db", str(swept)])
    assert result.exit_code == 0 and "swept" in result.output
    con = duckdb.connect(str(swept), read_only=True)
    ((status, run, reused),) = con.execute("SELECT status, tasks_run, tasks_reused FROM runs").fetchall()
    assert status == "done" and run > 0 and reused >= 0
    con.close()


def test_cell_results_has_swept_columns(swept: Path):
    con = duckdb.connect(str(swept), read_only=True)
    rows = con.execute('SELECT "model.depth", estimator, value, ci_low, ci_high FROM cell_results '
                       "WHERE metric = 'spearman' ORDER BY 1, 2").fetchall()
    assert [(d, e) for d, e, *_ in rows] == [(1.0, "exact"), (1.0, "grad_dot"), (2.0, "exact"), (2.0, "grad_dot")]
    assert all(lo <= hi for *_, lo, hi in rows)
    flipped = con.execute("SELECT count(*) FROM influence_pairs WHERE label_flipped").fetchone()[0]
    assert flipped == 0
    con.close()


def test_query_examples_run(swept: Path):
    listing = runner.invoke(app, ["query", "--examples"])
    assert listing.exit_code == 0 and listing.output.count(";") == len(EXAMPLES) == 11
    for title, sql in EXAMPLES:
        result = runner.invoke(app, ["query", sql, "--db", str(swept), "--format", "csv"])
        assert result.exit_code == 0, (title, result.output)


def test_query_writes_files(swept: Path, tmp_path: Path):
    target = tmp_path / "m.parquet"
    result = runner.invoke(app, ["query", "SELECT * FROM metrics", "--db", str(swept), "--format", "parquet",
                                 "--out", str(target)])
    assert result.exit_code == 0, result.output
    con = duckdb.connect()
    count = con.execute(f"SELECT count(*) FROM read_parquet('{target}')").fetchone()[0]
    expected = duckdb.connect(str(swept), read_only=True).execute("SELECT count(*) FROM metrics").fetchone()[0]
    assert count == expected > 0
    as_json = tmp_path / "m.json"
    assert runner.invoke(app, ["query", "SELECT metric FROM metrics LIMIT 3", "--db", str(swept), "--format",
                               "json", "--out", str(as_json)]).exit_code == 0
    assert len(json.loads(as_json.read_text())) == 3
    refused = runner.invoke(app, ["query", "SELECT 1", "--db", str(swept), "--format", "parquet"])
    assert refused.exit_code == 2 and "--out" in refused.output


def test_init_writes_a_study_that_validates(tmp_path: Path):
    result = runner.invoke(app, ["init", "my-study", "--out", str(tmp_path)])
    assert result.exit_code == 0
    assert runner.invoke(app, ["validate", str(tmp_path / "my-study.yaml")]).exit_code == 0
    # the editor schema named on the first line exists beside the study, and the study satisfies it
    first = (tmp_path / "my-study.yaml").read_text().splitlines()[0]
    schema_path = tmp_path / first.split("$schema=", 1)[1]
    assert schema_path.is_file()
    jsonschema.validate(yaml.safe_load((tmp_path / "my-study.yaml").read_text()),
                        json.loads(schema_path.read_text()))
    again = runner.invoke(app, ["init", "my-study", "--out", str(tmp_path)])
    assert again.exit_code == 2 and "exists" in again.output
    assert runner.invoke(app, ["init", "Bad Name"]).exit_code == 2


def test_python_api(tiny_study: Path, tmp_path: Path):
    study = inflang.load(tiny_study)
    summary = inflang.run(study, db=tmp_path / "api.duckdb")
    assert summary.ran == 6 and not summary.failed
    con = inflang.connect(tmp_path / "api.duckdb")
    assert con.execute("SELECT count(*) FROM metrics WHERE test_index IS NULL AND estimator IS NOT NULL"
                       ).fetchone()[0] == 2
    with pytest.raises(duckdb.Error):
        con.execute("DELETE FROM cells")
    con.close()


@pytest.mark.parametrize("path", sorted((ROOT / "studies").rglob("*.yaml")), ids=lambda p: p.name)
def test_studies_match_the_emitted_schema(path: Path):
    schema = json.loads((ROOT / "docs" / "study.schema.json").read_text())
    data = yaml.safe_load(path.read_text())
    data.pop("extends", None)
    if "extends" in path.read_text():
        pytest.skip("a partial study that extends another")
    jsonschema.validate(data, schema)


def test_gc_removes_only_unreferenced_artifacts(tiny_study: Path, tmp_path: Path):
    db = tmp_path / "g.duckdb"
    assert runner.invoke(app, ["run", str(tiny_study), "--db", str(db)]).exit_code == 0
    folder = tmp_path / ".inflang" / "artifacts"
    kept = sorted(p.name for p in folder.rglob("*.pt"))
    stray = folder / "ab" / "ab0000000000000000000.pt"
    stray.parent.mkdir(parents=True, exist_ok=True)
    stray.write_bytes(b"old")
    (folder / "ab" / ".tmp-crash.pt").write_bytes(b"half")
    dry = runner.invoke(app, ["gc", "--db", str(db), "--dry-run"])
    assert "would remove 2 files" in dry.output and stray.exists()
    result = runner.invoke(app, ["gc", "--db", str(db)])
    assert result.exit_code == 0 and "removed 2 files" in result.output
    assert sorted(p.name for p in folder.rglob("*.pt")) == kept
    rerun = runner.invoke(app, ["run", str(tiny_study), "--db", str(db)])
    assert "ran 0 tasks" in rerun.output


def test_seeds_are_pooled_with_their_spread(write, tmp_path: Path):
    study = write("seeds.yaml", """\
        study: seeds
        dataset: {name: iris, test_size: 30}
        model: {arch: mlp, depth: 1, width: 4}
        training: {optimizer: adam, lr: 0.05, epochs: 60, weight_decay: 0.01}
        estimators: [{name: exact, damping: 0.01, negative: abs}]
        test_points: {count: 3}
        ground_truth: {protocol: loo, steps: 20, removals: {select: random, k: 10}}
        metrics: {names: [spearman], bootstrap: 200}
        repeats: 3
        sweep:
          model.depth: [1, 2]
        """)
    db = tmp_path / "s.duckdb"
    result = runner.invoke(app, ["run", str(study), "--db", str(db)])
    assert result.exit_code == 0, result.output
    assert result.output.count("3 x 3") == 2  # per depth: 3 seeds x 3 test points
    con = duckdb.connect(str(db), read_only=True)
    per_cell = con.execute("""SELECT "model.depth", list(value ORDER BY "repeat") FROM cell_results
                              WHERE metric = 'spearman' GROUP BY ALL ORDER BY 1""").fetchall()
    pooled = con.execute("""SELECT "model.depth", value, sd, ci_low, ci_high, seeds, test_points FROM sweep_results
                            WHERE metric = 'spearman' ORDER BY 1""").fetchall()
    con.close()
    import numpy as np

    for (depth, values), (depth_, value, sd, low, high, seeds, points) in zip(per_cell, pooled, strict=True):
        assert depth == depth_ and len(values) == 3 and seeds == 3 and points == 9
        assert value == pytest.approx(np.mean(values)) and sd == pytest.approx(np.std(values, ddof=1))
        assert low < value < high


def test_ls_counts_each_cell_once_across_reruns(swept: Path, tmp_path: Path):
    assert runner.invoke(app, ["run", str(tmp_path / "swept.yaml"), "--db", str(swept)]).exit_code == 0
    overview = duckdb.connect(str(swept), read_only=True)
    assert overview.execute("SELECT count(*) FROM runs").fetchone()[0] == 2
    overview.close()
    result = runner.invoke(app, ["ls", "--db", str(swept)])
    line = next(x for x in result.output.splitlines() if "swept" in x)
    assert [c.strip() for c in line.split("│")[2:6]] == ["2", "2", "0", "0"]  # cells, done, failed, pending


def test_a_cell_is_done_only_when_all_its_tasks_are(swept: Path, tmp_path: Path):
    """A new estimator run on one sweep point leaves the other point's cell pending (it has tasks to run)."""
    study = tmp_path / "swept.yaml"
    study.write_text(study.read_text().replace("{name: grad_dot}]", "{name: grad_dot}, {name: grad_cos}]"))
    result = runner.invoke(app, ["run", str(study), "--db", str(swept), "--select", "depth=2"])
    assert result.exit_code == 0, result.output
    con = duckdb.connect(str(swept), read_only=True)
    statuses = dict(con.execute("""SELECT json_extract_string(params, '$."model.depth"'), status FROM cells""")
                    .fetchall())
    con.close()
    assert statuses == {"1": "pending", "2": "done"}
    plan = runner.invoke(app, ["plan", str(study), "--db", str(swept)])
    assert plan.exit_code == 0 and "to run" in plan.output


def test_compare_says_what_it_paired_and_when_nothing_pairs(swept: Path, write, tmp_path: Path):
    other = write("other.yaml", (tmp_path / "swept.yaml").read_text().replace("study: swept", "study: deeper")
                  .replace("model.depth: [1, 2]", "model.depth: [3]"))
    assert runner.invoke(app, ["run", str(other), "--db", str(swept)]).exit_code == 0
    result = runner.invoke(app, ["compare", "swept", "deeper", "--db", str(swept)], terminal_width=200)
    assert result.exit_code == 0 and "nothing pairs" in result.output
    twin = write("twin.yaml", (tmp_path / "swept.yaml").read_text().replace("study: swept", "study: twin"))
    assert runner.invoke(app, ["run", str(twin), "--db", str(swept)]).exit_code == 0
    same = runner.invoke(app, ["compare", "swept", "twin", "--db", str(swept)], terminal_width=200)
    assert "(1 seed, 3 test points)" in same.output and "nothing pairs" not in same.output


def test_python_api_takes_select_and_workers_and_returns_results(tiny_study: Path, tmp_path: Path):
    results = inflang.run(tiny_study, db=tmp_path / "api.duckdb", select=None, workers=1)
    assert results.ran == 6 and not results.failed
    metrics = {(r["estimator"], r["metric"]) for r in results.table}
    assert any(m == "spearman" for _, m in metrics) and results.claims == []
    frame = results.df()
    assert len(frame) == len(results.table) and "value" in frame.columns
    with pytest.raises(inflang.errors.UsageError):
        inflang.run(tiny_study, db=tmp_path / "api.duckdb", select=["depth=9"])
