"""The malformed-study corpus: every file fails with exit code 2, one positioned line, no traceback,
and the database is left byte for byte as it was."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from inflang.cli import app
from inflang.results.store import Store

CORPUS = Path(__file__).parent / "bad_studies"
INDEX = [line.split("\t") for line in (CORPUS / "index.tsv").read_text().splitlines() if not line.startswith("#")]
runner = CliRunner()


def test_corpus_is_complete():
    assert len(INDEX) >= 50
    assert {row[0] for row in INDEX} == {p.name for p in CORPUS.glob("*.yaml")}


@pytest.fixture(scope="module")
def database(tmp_path_factory) -> Path:
    db = tmp_path_factory.mktemp("db") / "r.duckdb"
    Store(db).close()
    return db


@pytest.mark.parametrize(("name", "position", "fragment"), INDEX, ids=[row[0] for row in INDEX])
def test_bad_study(name: str, position: str, fragment: str, database: Path):
    path = CORPUS / name
    before = hashlib.sha256(database.read_bytes()).hexdigest()
    for command in (["validate", str(path)], ["run", str(path), "--db", str(database)]):
        result = runner.invoke(app, command)
        assert result.exit_code == 2, result.output
        first = result.output.splitlines()[0]
        assert first.startswith(f"{path}:{position}: {fragment}"), first
        assert "Traceback" not in result.output
        lines = result.output.splitlines()
        assert all(line.startswith((str(path), "  hint: ")) for line in lines), lines
    assert hashlib.sha256(database.read_bytes()).hexdigest() == before


def test_directory_and_huge_file(tmp_path: Path):
    result = runner.invoke(app, ["validate", str(tmp_path)])
    assert result.exit_code == 2 and result.output == f"{tmp_path}:1:1: is a directory, not a study file\n"
    huge = tmp_path / "huge.yaml"
    huge.write_text("study: huge\ndescription: " + "x" * 2_000_000 + "\n")
    result = runner.invoke(app, ["validate", str(huge)])
    assert result.exit_code == 2 and "a study file is at most" in result.output
    missing = runner.invoke(app, ["validate", str(tmp_path / "nope.yaml")])
    assert missing.exit_code == 2 and missing.output == f"{tmp_path / 'nope.yaml'}:1:1: no such file\n"
