"""Property tests: mutated studies either load or fail with the clean positioned format, never otherwise."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from inflang.compiling.plan import compile_study
from inflang.compiling.validate import load_study
from inflang.errors import StudyError

STUDY = (Path(__file__).parent.parent / "studies" / "quickstart.yaml").read_text()
LINE = re.compile(r"^.+:\d+:\d+: ")


def check(path: Path) -> None:
    try:
        compile_study(load_study(path))
    except StudyError as exc:
        assert exc.problems
        for problem in exc.problems:
            first, *rest = problem.format().splitlines()
            assert LINE.match(first), first
            assert problem.position.line >= 1 and problem.position.col >= 1
            assert all(r.startswith("  hint: ") for r in rest)


SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@SETTINGS
@given(data=st.data())
def test_text_mutations(tmp_path: Path, data: st.DataObject) -> None:
    lines = STUDY.splitlines()
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(lines) - 1))
        action = data.draw(st.sampled_from(["delete", "duplicate", "indent", "dedent", "char", "insert"]))
        if action == "delete":
            del lines[i]
        elif action == "duplicate":
            lines.insert(i, lines[i])
        elif action == "indent":
            lines[i] = " " * data.draw(st.integers(1, 4)) + lines[i]
        elif action == "dedent":
            lines[i] = lines[i].lstrip()
        elif action == "char" and lines[i]:
            j = data.draw(st.integers(0, len(lines[i]) - 1))
            lines[i] = lines[i][:j] + data.draw(st.sampled_from(list(":-[]{}&*!|>'\"#%@`,?\t x0"))) + lines[i][j + 1:]
        else:
            lines.insert(i, data.draw(st.text(max_size=20)))
        if not lines:
            lines = [""]
    path = tmp_path / "mutant.yaml"
    path.write_text("\n".join(lines) + "\n")
    check(path)


LEAVES = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                   st.text(max_size=12), st.lists(st.integers(-5, 5), max_size=3),
                   st.dictionaries(st.text(max_size=5), st.integers(), max_size=2))


def paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += paths(v, prefix + (i,))
    return out


@SETTINGS
@given(data=st.data())
def test_value_mutations(tmp_path: Path, data: st.DataObject) -> None:
    doc = yaml.safe_load(STUDY)
    target = data.draw(st.sampled_from(paths(doc)))
    node = doc
    for part in target[:-1]:
        node = node[part]
    if data.draw(st.booleans()):
        node[target[-1]] = data.draw(LEAVES)
    elif isinstance(node, dict):
        del node[target[-1]]
    path = tmp_path / "mutant.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True))
    check(path)
