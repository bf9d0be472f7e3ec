"""What a new user hit (issue 31): each rough edge of a first study, checked where it was found."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import duckdb
import pytest
import yaml
from typer.testing import CliRunner

from inflang.cli import app
from tests.conftest import TINY

runner = CliRunner()
ROOT = Path(__file__).parent.parent


def test_the_readme_shows_the_quickstart_file_as_it_is():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## A study"):]
    block = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert block is not None
    shown = yaml.safe_load(block.group(1))
    assert shown == yaml.safe_load((ROOT / "studies" / "quickstart.yaml").read_text())


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small 'quickstart': depth swept over integers, two seeds of two test points, one claim."""
    folder = tmp_path_factory.mktemp("quick")
    (folder / "q.yaml").write_text(textwrap.dedent("""\
        study: quickstart
        dataset: {name: iris, test_size: 30}
        model: {arch: mlp, depth: 1, width: 4}
        training: {optimizer: adam, lr: 0.05, epochs: 60, weight_decay: 0.01, dtype: float64}
        estimators: [{name: exact, damping: 0.01, negative: abs}]
        test_points: {count: 2}
        ground_truth: {protocol: loo, steps: 10, removals: {select: random, k: 6}}
        metrics: [spearman, pearson]
        repeats: 2
        sweep:
          model.depth: [1, 2]
        claims:
          - {name: ranks well, metric: spearman, estimator: exact, at_least: 0.5}
        """))
    db = folder / "r.duckdb"
    result = runner.invoke(app, ["run", str(folder / "q.yaml"), "--db", str(db)])
    assert result.exit_code == 0, result.output
    return db


def test_the_terminal_and_the_report_say_seeds_x_test_points_alike(quick: Path, tmp_path: Path):
    terminal = runner.invoke(app, ["report", "quickstart", "--db", str(quick)])
    assert terminal.exit_code == 0, terminal.output
    assert "2 x 2" in terminal.output and "2 x 4" not in terminal.output
    pytest.importorskip("matplotlib")
    assert runner.invoke(app, ["report", "quickstart", "--db", str(quick), "--out", str(tmp_path)]).exit_code == 0
    page = (tmp_path / "report.html").read_text()
    assert "<td>2 x 2</td>" in page and "<td>2 x 4</td>" not in page


def test_claims_of_studies_some_of_which_are_missing(quick: Path):
    some = runner.invoke(app, ["claims", "quickstart", "paper-iris-depth", "--db", str(quick)])
    assert some.exit_code == 0, some.output
    assert "no study paper-iris-depth" in some.output and "ranks well" in some.output
    none = runner.invoke(app, ["claims", "paper-iris-depth", "--db", str(quick)])
    assert none.exit_code == 2 and "no study paper-iris-depth" in none.output and "quickstart" in none.output


def test_an_integer_sweep_stays_integer_in_sweep_results(quick: Path):
    con = duckdb.connect(str(quick), read_only=True)
    try:
        depths = con.execute('SELECT DISTINCT "model.depth" FROM sweep_results ORDER BY 1').fetchall()
        kind = con.execute('SELECT typeof("model.depth") FROM cell_results LIMIT 1').fetchone()
    finally:
        con.close()
    assert depths == [(1,), (2,)] and all(isinstance(d, int) for (d,) in depths) and kind == ("BIGINT",)


def test_swept_type_widens_from_integers_to_numbers_to_text():
    from inflang.results.store.schema import _swept_type

    assert _swept_type(None, 3) == "BIGINT" and _swept_type("BIGINT", 0.5) == "DOUBLE"
    assert _swept_type("DOUBLE", 2) == "DOUBLE" and _swept_type("BIGINT", "relu") == "VARCHAR"
    assert _swept_type(None, True) == "VARCHAR" and _swept_type("VARCHAR", 1) == "VARCHAR"


def test_results_table_has_the_swept_paths_as_columns(quick: Path):
    from inflang.results import store

    table = store.pooled_results(quick, "quickstart")
    assert table and all(r["model.depth"] in (1, 2) for r in table)
    assert {"params", "estimator", "metric", "value", "ci_low", "ci_high", "seeds", "test_points"} <= set(table[0])


def test_every_influence_example_query_is_per_study(quick: Path):
    from inflang.cli.examples import EXAMPLES

    for title, sql in EXAMPLES:
        if "FROM influence" in sql:
            assert "study = 'quickstart'" in sql, title
    (one,) = [sql for title, sql in EXAMPLES if "one test point" in title]
    result = runner.invoke(app, ["query", one, "--db", str(quick), "--format", "json"])
    assert result.exit_code == 0, result.output
    found = json.loads(result.output)
    assert found and len({(r["cell_id"], r["test_index"]) for r in found}) == 1


def test_status_is_ls(quick: Path):
    listed = runner.invoke(app, ["ls", "--db", str(quick)])
    status = runner.invoke(app, ["status", "--db", str(quick)])
    assert status.exit_code == 0 and status.output == listed.output and "quickstart" in status.output


def test_the_price_hint_at_run_counts_training_and_retraining_and_names_the_file(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("INFLANG_CACHE", str(tmp_path / "cache"))
    study = tmp_path / "a folder" / "tiny.yaml"
    study.parent.mkdir()
    study.write_text(TINY.replace("epochs: 200", "epochs: 20").replace("steps: 100", "steps: 10")
                     + "repeats: 3\n")
    result = runner.invoke(app, ["run", str(study), "--db", str(tmp_path / "r.duckdb"), "--engine", "eager"])
    assert result.exit_code == 0, result.output
    (line,) = [x for x in result.output.splitlines() if "have no rate measured" in x]
    assert line == (f"3 training tasks and 3 retraining tasks have no rate measured here; inflang plan "
                    f"'{study}' --calibrate --engine eager prices them")


def test_init_says_how_to_bring_your_own_model_data_and_method(tmp_path: Path):
    result = runner.invoke(app, ["init", "mine", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    text = (tmp_path / "mine.yaml").read_text()
    for words in ("arch: custom", "factory:", "name: custom, loader:", "name: custom, scorer:"):
        assert words in text, words
    assert runner.invoke(app, ["validate", str(tmp_path / "mine.yaml")]).exit_code == 0


def _commands() -> dict[str, str]:
    import typer

    group = typer.main.get_command(app)
    return {name: command.help or "" for name, command in group.commands.items()}  # type: ignore[attr-defined]


@pytest.mark.parametrize("width", ["80", "120"])
def test_help_texts_break_only_between_words(width: str):
    """Every help, at 80 and 120 columns: nothing cut with an ellipsis, and each command's description flows as
    whole paragraphs (a docstring's own line breaks would fall mid-phrase)."""
    top = runner.invoke(app, ["--help"], env={"COLUMNS": width, "TERM": "dumb"})
    assert top.exit_code == 0 and "…" not in top.output
    for name, text in _commands().items():
        shown = runner.invoke(app, [name, "--help"], env={"COLUMNS": width, "TERM": "dumb"})
        assert shown.exit_code == 0 and "…" not in shown.output, (name, shown.output)
        lines = [line.strip() for line in shown.output.splitlines() if line.strip() and line.strip()[0] not in "│╭╰"]
        flowing = " ".join(" ".join(lines).split())
        for paragraph in text.split("\n\n"):
            assert " ".join(paragraph.replace("\\[", "[").split()) in flowing, (name, paragraph)
        assert all("\n" not in p for p in text.split("\n\n")), name


def test_a_dataset_whose_package_is_missing_says_how_to_install_it(write, monkeypatch: pytest.MonkeyPatch):
    """A dataset a package makes (its spec class's ``made_by``) is checked at load time, by name."""
    import importlib.util

    found = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mnist1d" else found(name, *a))
    study = write("m.yaml", TINY.replace("  name: iris\n", "  name: mnist1d\n"))
    result = runner.invoke(app, ["validate", str(study)])
    assert result.exit_code == 2
    lines = result.output.splitlines()
    assert lines[0] == f"{study}:4:9: dataset.name: mnist1d is made by the mnist1d package, which is not installed"
    assert lines[1] == "  hint: pip install 'inflang[mnist1d]'"
