"""The estimator benchmark runs without the peer libraries (their rows need --peers-python)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_estimator_benchmark_runs_inflang_alone():
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "estimators.py"), "--only", "grad_dot,kfac",
                           "--json"], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    assert [(r["estimator"], r["implementation"]) for r in rows] == [("grad_dot", "inflang"), ("kfac", "inflang")]
    assert all(r["seconds"] > 0 for r in rows)
