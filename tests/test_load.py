"""The loader and validator: every error lands on the line and column a user wrote."""

from __future__ import annotations

from pathlib import Path

import pytest

from inflang.compiling.validate import load_study
from inflang.errors import StudyError

BASE = """\
study: s
dataset:
  name: iris
model:
  arch: mlp
  depth: 2
estimators:
  - name: exact
"""


def errors(path: Path) -> list[str]:
    with pytest.raises(StudyError) as info:
        load_study(path)
    return [p.format() for p in info.value.problems]


def test_valid_study_loads_with_defaults(write):
    loaded = load_study(write("ok.yaml", BASE))
    assert loaded.study.model.arch == "mlp"
    assert loaded.study.training.dtype == "float64"
    assert len(loaded.cells) == 1


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (BASE.replace("depth: 2", "dept: 2"), ":6:3: model.dept: unknown key 'dept'\n  hint: did you mean 'depth'?"),
        (BASE.replace("name: iris", "name: irsi"), ":3:9: dataset.name: unknown name 'irsi'; expected one of"),
        (BASE.replace("arch: mlp", "arch: mpl"), ":5:9: model.arch: unknown arch 'mpl'; expected one of: logreg, mlp"),
        (BASE.replace("- name: exact", "- name: exakt"), ":8:11: estimators.0.name: unknown name 'exakt'"),
        (BASE.replace("depth: 2", "depth: -1"), ":6:10: model.depth: Input should be greater than or equal to 1"),
        (BASE.replace("depth: 2", "depth: two"), ":6:10: model.depth: Input should be a valid integer"),
        (BASE.replace("study: s", "study: S s"), ":1:8: study: 'S s' is not a study name"),
        (BASE.replace("study: s\n", ""), ":1:1: study: is required"),
        (BASE + "training:\n  lr: 0\n", ":10:7: training.lr: Input should be greater than 0"),
        (BASE + "repeats: 0\n", ":9:10: repeats: Input should be greater than or equal to 1"),
        (BASE + "dataset_size: 3\n", ":9:1: dataset_size: unknown key 'dataset_size'"),
        (BASE.replace("name: iris", "name: iris\n  test_size: 1.5"), ":4:14: dataset.test_size: must be a count"),
        (BASE + "test_points:\n  count: 31\n", ":10:10: test_points.count: 31 test points asked, the split has 30"),
        (BASE + "ground_truth:\n  protocol: loo\n  removals: {select: top_k, by: lissa}\n",
         ":11:33: ground_truth.removals.by: no estimator labelled 'lissa' in this study"),
        (BASE + "ground_truth:\n  protocol: loo\n  removals: {select: random, k: 500}\n",
         ":11:33: ground_truth.removals.k: k = 500 is larger than the training set (120 points)"),
        (BASE + "training:\n  optimizer: lbfgs\n", ":10:14: training.optimizer: lbfgs has no batched retraining rule"),
    ],
)
def test_error_position_and_message(write, text, expected):
    path = write("bad.yaml", text)
    found = errors(path)
    assert any(e.startswith(str(path) + expected) for e in found), found


def test_duplicate_key(write):
    path = write("dup.yaml", BASE + "model:\n  arch: logreg\n")
    assert errors(path) == [f"{path}:9:1: model: duplicate key 'model' (first defined at line 4)"]


def test_python_tags_refused(write):
    path = write("tag.yaml", "study: !!python/object/apply:os.system ['echo hi']\n")
    (message,) = errors(path)
    assert message.startswith(f"{path}:1:8: study: tag 'tag:yaml.org,2002:python/object/apply:os.system'")


def test_alias_bomb_bounded(write):
    lines = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    for i, name in enumerate("bcdefgh"):
        prev = "abcdefgh"[i]
        lines.append(f"{name}: &{name} [" + ", ".join([f"*{prev}"] * 10) + "]")
    path = write("bomb.yaml", "\n".join(lines) + "\n")
    (message,) = errors(path)
    assert "document expands to more than" in message


def test_tabs_and_broken_yaml(write):
    path = write("tab.yaml", "study: s\n\tdataset: {}\n")
    (message,) = errors(path)
    assert message.startswith(f"{path}:2:1: invalid YAML") and "hint: indent with spaces" in message


def test_empty_directory_and_non_utf8(tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert errors(empty) == [f"{empty}:1:1: the file is empty\n  hint: a study needs at least 'study:', "
                             "'dataset:' and 'model:'"]
    assert errors(tmp_path) == [f"{tmp_path}:1:1: is a directory, not a study file"]
    raw = tmp_path / "latin.yaml"
    raw.write_bytes(b"study: s\ndescription: caf\xe9\n")
    assert errors(raw) == [f"{raw}:2:17: file is not valid UTF-8"]


def test_extends_merges_and_points_into_the_right_file(write):
    write("base.yaml", BASE + "training:\n  lr: 0.1\n  epochs: 10\n")
    child = write("child.yaml", "extends: base.yaml\nstudy: child\ntraining:\n  lr: 0.2\n")
    loaded = load_study(child)
    assert loaded.study.study == "child"
    assert loaded.study.training.lr == 0.2 and loaded.study.training.epochs == 10
    bad = write("bad_child.yaml", "extends: base.yaml\nmodel:\n  width: 0\n")
    (message,) = errors(bad)
    assert message.startswith(f"{bad}:3:10: model.width: Input should be greater than or equal to 1")


def test_extends_cycle_and_missing_base(write):
    write("a.yaml", "extends: b.yaml\nstudy: a\n")
    write("b.yaml", "extends: a.yaml\nstudy: b\n")
    (message,) = errors(write("c.yaml", "extends: a.yaml\n"))
    assert "extends cycle" in message
    missing = write("m.yaml", "extends: nowhere.yaml\nstudy: m\n")
    (message,) = errors(missing)
    assert message.startswith(f"{missing}:1:1: extends: base file 'nowhere.yaml' not found")
