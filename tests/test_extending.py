"""Extending inflang the way docs/architecture.md says, in a copy of the code: a toy estimator is its spec class
(with its line in the union), its runner module and one registry line; a protocol with a new metric is its spec
class, its runner module, one registry line and the metric's catalogue entry. Each copy runs a study end to end
through the CLI, and its numbers are checked against a computation of their own."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pytest
import yaml
from scipy.stats import beta, t

from tests.conftest import TINY

ROOT = Path(__file__).resolve().parents[1]


def _copy(tmp_path: Path) -> Path:
    root = tmp_path / "code"
    for package in ("inflang", "runners"):
        shutil.copytree(ROOT / package, root / package, ignore=shutil.ignore_patterns("__pycache__"))
    (root / "tests").mkdir()
    shutil.copy(ROOT / "tests" / "test_structure.py", root / "tests" / "test_structure.py")
    return root


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert text.count(old) == 1, f"{path.name}: {old!r}"
    path.write_text(text.replace(old, new))


def _write(path: Path, text: str) -> None:
    path.write_text(textwrap.dedent(text).lstrip())


def _changed(root: Path) -> list[str]:
    """The files of the copy that differ from the project's own (or are new)."""
    found = []
    for file in sorted(root.rglob("*.py")):
        rel = file.relative_to(root)
        if rel.parts[0] != "tests" and "__pycache__" not in rel.parts and (
                not (ROOT / rel).exists() or (ROOT / rel).read_text() != file.read_text()):
            found.append(str(rel))
    return found


def _run(root: Path, *args: str, module: str = "inflang.cli") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(root), "INFLANG_ENGINE": "eager", "COLUMNS": "200",
           "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=root, env=env, capture_output=True, text=True,
                          timeout=600)


def _structure_holds(root: Path) -> None:
    """The copy's own structure tests pass: the registry matches the union, no other module names the new
    estimator, no import cycle, every metric a protocol declares is in the catalogue."""
    found = _run(root, "-q", "-p", "no:cacheprovider", "tests/test_structure.py", module="pytest")
    assert found.returncode == 0, found.stdout[-3000:] + found.stderr[-3000:]


def _study(name: str, estimators: list[dict[str, Any]], protocol: str = "loo", count: int = 2,
           claims: list[dict[str, Any]] | None = None, weight_decay: float = 0.01) -> str:
    """The suite's tiny Iris study (tests/conftest.py) with these estimators, protocol, test points and claims."""
    study = yaml.safe_load(TINY)
    study.update(study=name, estimators=estimators, claims=claims or [])
    study["training"]["weight_decay"] = weight_decay
    study["test_points"]["count"] = count
    study["ground_truth"]["protocol"] = protocol
    return yaml.safe_dump(study, sort_keys=False)


TOY_ESTIMATOR_SPEC = '''
class ToyEstimator(EstimatorBase):
    """A toy: scale x (1/n) g_test . g_i, gradient similarity scaled (ranks only)."""

    name: Literal["toy"]
    ranks_only: ClassVar[bool] = True
    scale: float = Field(1.0, gt=0, description="the factor the gradient products are multiplied by")

    def problems(self, facts: EstimatorFacts) -> list[Rule]:
        if facts.weight_decay <= 0:
            return [(("name",), "toy needs weight_decay > 0", "set training.weight_decay")]
        return []


AnyEstimator = ('''

TOY_ESTIMATOR_RUNNER = '''
"""The toy estimator: scale x (1/n) g_test . g_i."""

from torch import Tensor

from runners.estimators.common import EstimatorInputs


def toy_scores(spec, inputs: EstimatorInputs) -> Tensor:
    return spec.scale * (inputs.test_gradients() @ inputs.train_gradients().T).double() / inputs.n
'''


def test_a_toy_estimator_is_three_places(tmp_path: Path):
    root = _copy(tmp_path)
    spec = root / "inflang" / "spec" / "estimators.py"
    _edit(spec, "\n\nAnyEstimator = (", TOY_ESTIMATOR_SPEC)  # 1. its spec class ...
    _edit(spec, "| EkfacEstimator | TrakEstimator | CustomEstimator)",  # ... and its line in the union
          "| EkfacEstimator | TrakEstimator | CustomEstimator | ToyEstimator)")
    _write(root / "runners" / "estimators" / "toy.py", TOY_ESTIMATOR_RUNNER)  # 2. its runner module
    registry = root / "runners" / "estimators" / "__init__.py"  # 3. its registry entry (an import and a line)
    _edit(registry, "from runners.estimators.trak import trak_scores\n",
          "from runners.estimators.toy import toy_scores\nfrom runners.estimators.trak import trak_scores\n")
    _edit(registry, '    "custom": custom_scores,\n', '    "custom": custom_scores,\n    "toy": toy_scores,\n')
    assert _changed(root) == ["inflang/spec/estimators.py", "runners/estimators/__init__.py",
                              "runners/estimators/toy.py"]
    _structure_holds(root)

    _write(root / "toy.yaml", _study("toy_estimator", [{"name": "grad_dot"}, {"name": "toy", "scale": 2.0}]))
    done = _run(root, "run", "toy.yaml", "--db", "r.duckdb")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    con = duckdb.connect(str(root / "r.duckdb"), read_only=True)
    estimates = {e: np.array(v) for e, v in con.execute(
        "SELECT estimator, list(estimate ORDER BY test_index, train_index) FROM influence GROUP BY estimator"
    ).fetchall()}
    np.testing.assert_allclose(estimates["toy"], 2.0 * estimates["grad_dot"], rtol=1e-12)
    metrics = dict(con.execute("SELECT estimator, list(value ORDER BY metric, test_index) FROM metrics "
                               "WHERE test_index IS NOT NULL GROUP BY estimator").fetchall())
    assert len(metrics["toy"]) == 4  # two metrics at two test points
    np.testing.assert_allclose(metrics["toy"], metrics["grad_dot"], rtol=1e-12)  # scaling keeps correlations

    _write(root / "bad.yaml", _study("bad", [{"name": "toy", "scale": -1.0}]))
    refused = _run(root, "validate", "bad.yaml")
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "bad.yaml" in refused.stderr + refused.stdout and "scale" in refused.stderr + refused.stdout
    assert "Traceback" not in refused.stderr
    # its own rule against the rest of the study, reported where the study names it, with no central edit
    _write(root / "no_decay.yaml", _study("no_decay", [{"name": "toy"}], weight_decay=0.0))
    refused = _run(root, "validate", "no_decay.yaml")
    assert refused.returncode == 2, refused.stdout + refused.stderr
    first, hint = (refused.stdout + refused.stderr).splitlines()[:2]
    line = (root / "no_decay.yaml").read_text().splitlines().index("- name: toy") + 1
    assert first.endswith(f"no_decay.yaml:{line}:9: estimators.0.name: toy needs weight_decay > 0"), first
    assert hint == "  hint: set training.weight_decay"


TOY_PROTOCOL_SPEC = '''
class ToyProtocol(LooProtocol):
    """Leave-one-out that also asks whether an estimator's top item (largest |estimate|) is the measured one."""

    protocol: Literal["toy"]  # type: ignore[assignment]
    summary_metrics: ClassVar[tuple[str, str, str]] = ("top_1_match", "spearman", "noise_ceiling_spearman")

    def estimator_metrics(self, names: tuple[str, ...]) -> tuple[str, ...]:
        return super().estimator_metrics(names) + ("top_1_match", "top_1_rank")


AnyProtocol = '''

TOY_PROTOCOL_RUNNER = '''
"""The toy protocol: leave-one-out, plus per test point top_1_match (1 when the item with the largest |estimate|
is the one with the largest |actual|, else 0) and top_1_rank (that item's place among the items by |actual|,
1 the largest)."""

import numpy as np

from runners.metrics import MetricRow
from runners.protocols.common import Protocol, Scoring
from runners.protocols.loo import metrics as loo_metrics
from runners.protocols.loo import run


def metrics(spec, s: Scoring) -> list[MetricRow]:
    rows = loo_metrics(spec, s)
    actual = s.actual()
    for t in range(actual.shape[0]):
        kept = np.isfinite(actual[t])
        measured = np.abs(actual[t][kept])
        top = np.argmax(np.abs(s.scores[t][kept]))
        rows.append(MetricRow(t, "top_1_match", float(top == np.argmax(measured)), int(kept.sum())))
        rows.append(MetricRow(t, "top_1_rank", float(1 + np.sum(measured > measured[top])), int(kept.sum())))
    return rows


PROTOCOL = Protocol(run=run, metrics=metrics)
'''


def test_a_protocol_with_a_new_metric_is_four_files(tmp_path: Path):
    root = _copy(tmp_path)
    spec = root / "inflang" / "spec" / "protocols.py"
    _edit(spec, "\n\nAnyProtocol = ", TOY_PROTOCOL_SPEC)  # 1. its spec class and its line in the union
    _edit(spec, "| BrittlenessProtocol\n", "| BrittlenessProtocol | ToyProtocol\n")
    _write(root / "runners" / "protocols" / "toy.py", TOY_PROTOCOL_RUNNER)  # 2. its runner module
    registry = root / "runners" / "protocols" / "__init__.py"  # 3. its registry entry (an import and a line)
    _edit(registry, "from runners.protocols import brittleness, group, lds, loo, pbrf\n",
          "from runners.protocols import brittleness, group, lds, loo, pbrf, toy\n")
    _edit(registry, '    "brittleness": brittleness.PROTOCOL,\n',
          '    "brittleness": brittleness.PROTOCOL,\n    "toy": toy.PROTOCOL,\n')
    _edit(root / "inflang" / "metrics.py",  # 4. the new metrics' catalogue entries
          '    Metric("top_k_overlap", "fraction", "higher", "estimator", "top-k overlap"),\n',
          '    Metric("top_k_overlap", "fraction", "higher", "estimator", "top-k overlap"),\n'
          '    Metric("top_1_match", "proportion", "higher", "estimator", "top-1 match"),\n'
          '    Metric("top_1_rank", "count", "lower", "estimator", "rank of the top item"),\n')
    assert _changed(root) == ["inflang/metrics.py", "inflang/spec/protocols.py", "runners/protocols/__init__.py",
                              "runners/protocols/toy.py"]
    _structure_holds(root)

    _write(root / "toy.yaml", _study("toy_protocol", [{"name": "exact", "damping": 0.0}, {"name": "grad_dot"}],
                                     protocol="toy", count=6, claims=[
        {"name": "gradient similarity finds each test point's most influential removal", "metric": "top_1_match",
         "estimator": "grad_dot", "at_least": 0.2},
        {"name": "exact ranks its top removal higher than gradient similarity does", "metric": "top_1_rank",
         "compare": {"better": "exact", "than": "grad_dot"}}]))
    done = _run(root, "run", "toy.yaml", "--db", "r.duckdb")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "top-1 match" in done.stdout  # the summary's first column, labelled from the catalogue

    con = duckdb.connect(str(root / "r.duckdb"), read_only=True)
    pairs = con.execute("SELECT test_index, list(estimate ORDER BY train_index), list(actual ORDER BY train_index) "
                        "FROM influence WHERE estimator = 'grad_dot' AND actual IS NOT NULL GROUP BY test_index "
                        "ORDER BY test_index").fetchall()
    expected = [float(np.argmax(np.abs(e)) == np.argmax(np.abs(a))) for _, e, a in pairs]
    stored = [v for (v,) in con.execute("SELECT value FROM metrics WHERE estimator = 'grad_dot' AND metric = "
                                        "'top_1_match' AND test_index IS NOT NULL ORDER BY test_index").fetchall()]
    assert stored == expected and len(stored) == 6 and 0 < sum(expected) < 6  # a mixed count
    # a proportion's level: the t-interval over the test points widened to the exact (Clopper-Pearson) one and
    # clipped to [0, 1], so the catalogue's kind reaches the claim (docs/language.md, "Statistics")
    found = con.execute("SELECT estimate, ci_low, ci_high FROM claims WHERE position = 0").fetchone()
    assert found is not None
    ones, n = int(sum(expected)), len(expected)
    half = t.ppf(0.975, n - 1) * np.std(expected, ddof=1) / np.sqrt(n)
    low = max(0.0, min(ones / n - half, beta.ppf(0.025, ones, n - ones + 1)))
    high = min(1.0, max(ones / n + half, beta.ppf(0.975, ones + 1, n - ones)))
    assert found == pytest.approx((ones / n, low, high), abs=1e-9)
    # a lower-is-better metric: the comparison claims a negative difference, exact's mean rank minus grad_dot's
    ranks = dict(con.execute("SELECT estimator, list(value ORDER BY test_index) FROM metrics WHERE metric = "
                             "'top_1_rank' AND test_index IS NOT NULL GROUP BY estimator").fetchall())
    compared = con.execute("SELECT statistic, estimate, ci_low, ci_high FROM claims WHERE position = 1").fetchone()
    assert compared is not None and "lower is better" in compared[0], compared
    assert compared[1] == pytest.approx(np.mean(ranks["exact"]) - np.mean(ranks["grad_dot"]), abs=1e-12)
    assert compared[2] <= compared[1] <= compared[3]
