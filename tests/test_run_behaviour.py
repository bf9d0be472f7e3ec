"""Everyday use: --select, caches that survive a moved data folder, results that do not depend on the free
memory, clear failures where the CLI used to print tracebacks, and progress bars that end at their totals."""

from __future__ import annotations

import errno
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from inflang.cli import app
from inflang.compiling.plan import compile_study
from inflang.compiling.validate import load_study
from tests.helpers import rows
from tests.test_data import make_mnist, write_idx

runner = CliRunner()

SWEPT = """\
study: everyday
dataset: {name: iris, test_size: 30}
model: {arch: mlp, depth: 1, width: 4, dropout: 0.1}
training: {optimizer: adam, lr: 0.05, epochs: 60, weight_decay: 0.01}
estimators: [{name: exact, damping: 0.01, negative: abs}]
test_points: {count: 2}
ground_truth: {protocol: loo, steps: 20, removals: {select: random, k: 8}}
metrics: {names: [spearman], bootstrap: 50}
sweep:
  model.depth: [1, 2]
  training.weight_decay: [0.01, 0.001]
"""


def test_select_runs_and_reports_only_the_chosen_cells(write, tmp_path: Path):
    study = write("s.yaml", SWEPT)
    db = tmp_path / "s.duckdb"
    plan = runner.invoke(app, ["plan", str(study), "--db", str(db), "--select", "depth=2,weight_decay=0.001"])
    assert plan.exit_code == 0 and "1 cells of 4, selected" in plan.output
    result = runner.invoke(app, ["run", str(study), "--db", str(db), "--select", "model.depth=2"])
    assert result.exit_code == 0, result.output
    statuses = dict(rows(db, """SELECT json_extract_string(params, '$."model.depth"') || '/' ||
                                       json_extract_string(params, '$."training.weight_decay"'), status FROM cells"""))
    assert statuses == {"1/0.01": "pending", "1/0.001": "pending", "2/0.01": "done", "2/0.001": "done"}
    assert "depth=1" not in result.output
    assert sum(line.startswith("│ depth=2") for line in result.output.splitlines()) == 2  # the summary's two rows
    (cell_id,) = [c for (c,) in rows(db, "SELECT cell_id FROM cells WHERE status = 'pending'")][:1]
    prefix = runner.invoke(app, ["run", str(study), "--db", str(db), "--select", cell_id[:6]])
    assert prefix.exit_code == 0 and "ran 6 tasks" in prefix.output  # that cell's own six tasks, no other
    report = runner.invoke(app, ["report", "everyday", "--db", str(db), "--select", "depth=2"])
    assert report.exit_code == 0 and "depth=1" not in report.output
    unknown = runner.invoke(app, ["run", str(study), "--db", str(db), "--select", "depth=5"])
    assert unknown.exit_code == 2
    assert "model.depth in 1, 2; training.weight_decay in 0.01, 0.001" in unknown.output
    missing_axis = runner.invoke(app, ["plan", str(study), "--select", "width=4"])
    assert missing_axis.exit_code == 2 and "'width' is not swept" in missing_axis.output


def test_a_moved_data_folder_reuses_every_task(tmp_path: Path):
    """Task hashes cover what the files are, not where they lie; changing a file reruns what reads it."""
    make_mnist(tmp_path / "a" / "mnist", n_train=40, n_test=10)
    text = """\
study: moved
dataset: {name: mnist, root: mnist, test_size: 10}
model: {arch: logreg}
training: {optimizer: sgd, lr: 0.1, epochs: 5}
estimators: [{name: grad_dot}]
test_points: {count: 2}
ground_truth: {protocol: loo, steps: 3, removals: {select: random, k: 3}}
"""
    (tmp_path / "a" / "s.yaml").write_text(text)
    db = tmp_path / "r.duckdb"
    assert runner.invoke(app, ["run", str(tmp_path / "a" / "s.yaml"), "--db", str(db)]).exit_code == 0
    shutil.move(tmp_path / "a", tmp_path / "b")  # the project (study and data) moved
    again = runner.invoke(app, ["run", str(tmp_path / "b" / "s.yaml"), "--db", str(db)])
    assert again.exit_code == 0 and "ran 0 tasks" in again.output
    labels = np.arange(40) % 10
    labels[:4] = labels[:4][::-1]  # four training labels changed: same file names and sizes, other contents
    write_idx(tmp_path / "b" / "mnist" / "train-labels-idx1-ubyte", labels, gz=True)
    rerun = runner.invoke(app, ["run", str(tmp_path / "b" / "s.yaml"), "--db", str(db)])
    assert rerun.exit_code == 0 and "ran 0 tasks" not in rerun.output


def test_busy_and_idle_machines_give_the_same_rows(write, tmp_path: Path, monkeypatch):
    """The default memory budget is fixed, not read from the free memory: a machine with little free memory
    chunks the retraining as an idle one does and gives the same rows, bit for bit."""
    from inflang.compiling.cost import DEFAULT_BUDGET, default_budget

    study = write("s.yaml", SWEPT.replace("  model.depth: [1, 2]\n", ""))
    tables = []
    for free_pages in (None, 64):  # 64 pages: a machine with next to no free memory
        if free_pages is not None:
            real = os.sysconf

            def scarce(name: str, pages: int = free_pages, sysconf=real) -> int:
                return pages if name == "SC_AVPHYS_PAGES" else sysconf(name)

            monkeypatch.setattr(os, "sysconf", scarce)
        assert default_budget() == DEFAULT_BUDGET
        db = tmp_path / f"{free_pages}.duckdb"
        result = runner.invoke(app, ["run", str(study), "--db", str(db)])
        assert result.exit_code == 0, result.output
        tables.append((rows(db, "SELECT * EXCLUDE (study) FROM influence ORDER BY ALL"),
                       rows(db, "SELECT * EXCLUDE (study) FROM metrics ORDER BY ALL")))
    assert tables[0] == tables[1]


def test_another_budget_changes_the_rows_at_most_by_rounding(write, tmp_path: Path):
    """--memory-budget changes how many models train at once: the rows agree to rounding (batched kernels
    may sum in another order for another ensemble size)."""
    study = write("s.yaml", SWEPT.replace("  model.depth: [1, 2]\n", ""))
    values = []
    for budget in ("20000", "1GB"):
        db = tmp_path / f"{budget}.duckdb"
        result = runner.invoke(app, ["run", str(study), "--db", str(db), "--memory-budget", budget])
        assert result.exit_code == 0, result.output
        values.append(rows(db, "SELECT cell_id, test_index, train_index, actual FROM influence "
                               "WHERE actual IS NOT NULL ORDER BY ALL"))
    (gt,) = [t for t in compile_study(load_study(study)).tasks.values() if t.kind == "ground_truth"][:1]
    assert gt.chunks(20000) > 1 and gt.chunks(1 << 30) == 1
    assert [r[:3] for r in values[0]] == [r[:3] for r in values[1]]
    assert all(abs(a[3] - b[3]) <= 1e-12 * max(abs(a[3]), 1e-6) for a, b in zip(*values, strict=True))


def test_a_database_folder_that_cannot_be_created_is_one_line(tiny_study: Path, tmp_path: Path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = runner.invoke(app, ["run", str(tiny_study), "--db", str(blocker / "sub" / "r.duckdb")])
    assert result.exit_code == 2
    assert "cannot create the folder" in result.output and "Traceback" not in result.output


def test_a_full_disk_stops_the_run_cleanly_and_it_resumes(tiny_study: Path, tmp_path: Path, monkeypatch):
    import inflang.running.artifacts as artifacts

    real = artifacts.save
    calls = []

    def filling(root, task_hash, data):
        calls.append(task_hash)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(root, task_hash, data)

    monkeypatch.setattr(artifacts, "save", filling)
    db = tmp_path / "r.duckdb"
    result = runner.invoke(app, ["run", str(tiny_study), "--db", str(db)])
    assert result.exit_code == 1, result.output
    assert "No space left on device" in result.output and "Traceback" not in result.output
    done = rows(db, "SELECT count(*) FROM tasks WHERE status = 'done'")[0][0]
    assert done == 3  # the three tasks written before (the diagnose task has no artifact); nothing half-written
    monkeypatch.setattr(artifacts, "save", real)
    resumed = runner.invoke(app, ["run", str(tiny_study), "--db", str(db)])
    assert resumed.exit_code == 0 and "reused 3" in resumed.output
    reference = tmp_path / "ref.duckdb"
    assert runner.invoke(app, ["run", str(tiny_study), "--db", str(reference)]).exit_code == 0
    query = "SELECT * EXCLUDE (study) FROM influence ORDER BY ALL"
    assert rows(db, query) == rows(reference, query)


def test_ray_without_a_cluster_fails_fast_with_one_line(tiny_study: Path, tmp_path: Path):
    pytest.importorskip("ray")
    env = {**os.environ, "RAY_TMPDIR": str(tmp_path / "ray"), "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    for address in ("127.0.0.1:1", "auto"):
        start = time.time()
        done = subprocess.run([sys.executable, "-m", "inflang.cli", "run", str(tiny_study), "--db",
                               str(tmp_path / "r.duckdb"), "--executor", "ray", "--address", address],
                              capture_output=True, text=True, timeout=120, env=env)
        assert done.returncode == 2, done.stdout + done.stderr
        assert time.time() - start < 30
        assert f"--address {address}" in done.stderr and "Traceback" not in done.stdout + done.stderr


def test_the_models_bar_ends_at_its_total(write, tmp_path: Path):
    """With decompose: true the bar used to count past its total (363/242): totals come from the plan and
    the bar is trued up per finished task."""
    study = write("d.yaml", SWEPT.replace("dropout: 0.1", "dropout: 0.0").replace(
        "ground_truth: {protocol: loo, steps: 20, removals: {select: random, k: 8}}",
        "ground_truth: {protocol: loo, steps: 20, decompose: true, damping: 0.1, removals: {select: top_k, k: 4, "
        "by: exact}}").replace("  model.depth: [1, 2]\n", ""))
    result = runner.invoke(app, ["run", str(study), "--db", str(tmp_path / "d.duckdb")])
    assert result.exit_code == 0, result.output
    (line,) = [x for x in result.output.splitlines() if "models retrained" in x]
    done, total = re.search(r"(\d+)/(\d+)", line).groups()
    assert done == total


def test_integer_axes_get_integer_ticks():
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from inflang.results.report import _integer_ticks

    fig, ax = plt.subplots()
    ax.plot([1, 2, 3], [0.5, 0.6, 0.7])
    _integer_ticks(ax, [1, 2, 3])
    assert list(ax.get_xticks()) == [1, 2, 3]
    plt.close(fig)


def test_the_report_says_which_scatter_plots_it_draws(write, tmp_path: Path, monkeypatch):
    pytest.importorskip("matplotlib")
    import inflang.results.report as report

    study = write("s.yaml", SWEPT.replace("  training.weight_decay: [0.01, 0.001]\n", ""))
    db = tmp_path / "s.duckdb"
    assert runner.invoke(app, ["run", str(study), "--db", str(db)]).exit_code == 0
    monkeypatch.setattr(report, "MAX_SCATTERS", 1)
    result = runner.invoke(app, ["report", "everyday", "--db", str(db), "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    html = (tmp_path / "r" / "report.html").read_text()
    assert "first 1 of 2 cells" in html and "--select" in html and "selected test point" in html


def test_select_takes_a_mapping_value_with_commas():
    """A swept model is a mapping: model={arch: vgg, depth: 11} selects it (the commas inside the braces belong
    to the value), and it combines with another condition."""
    from inflang.compiling.selector import matching

    cells = [("a1", {"model": {"arch": "cnn", "depth": 2}, "seed": 1}),
             ("b2", {"model": {"arch": "vgg", "depth": 11}, "seed": 1}),
             ("c3", {"model": {"arch": "vgg", "depth": 11}, "seed": 2})]
    assert matching("model={arch: vgg, depth: 11}", cells) == {"b2", "c3"}
    assert matching("model={depth: 11, arch: vgg},seed=2", cells) == {"c3"}
    assert matching("model={arch: cnn, depth: 2}", cells) == {"a1"}
