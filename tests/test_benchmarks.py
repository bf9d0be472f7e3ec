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


def test_estimator_benchmark_images_resnet_tiny():
    """The ResNet problem at its testing size (16x16 images, a quarter of the width) on --device cpu; exact,
    which would form the Hessian, is left out with its reason."""
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "estimators.py"), "--problem", "images-resnet",
                           "--tiny", "--device", "cpu", "--only", "ekfac,exact", "--json"],
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert "left out on images-resnet: exact (it forms the Hessian" in done.stderr
    assert "17142 parameters" in done.stderr
    rows = json.loads(done.stdout)
    assert [(r["estimator"], r["implementation"]) for r in rows] == [("ekfac", "inflang")]
    assert rows[0]["seconds"] > 0
