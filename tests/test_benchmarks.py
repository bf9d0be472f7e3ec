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


def test_targets_and_agreement_of_a_row():
    """targets() applies the issue's three targets, and a NaN correlation or failed inflang run misses them."""
    import numpy as np

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import estimators
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    row = {"estimator": "ekfac", "implementation": "kronfluence", "peer_over_inflang": 1.2, "inflang_mb": 150.0,
           "peak_mb": 100.0, "pearson": 0.995}
    assert estimators.targets(row) == []
    assert estimators.targets({**row, "peer_over_inflang": 0.9, "inflang_mb": 151.0, "pearson": 0.98}) == [
        "time", "memory", "pearson"]
    assert estimators.targets({**row, "pearson": float("nan")}) == ["pearson"]
    assert estimators.targets({**row, "peak_mb": 0.0}) == []  # a peer whose peak did not grow: not judged
    assert estimators.targets({**row, "implementation": "dattri", "pearson": 0.5}) == []  # no Pearson target there
    reference = np.array([[1.0, -2.0], [3.0, 4.0]])
    pearson, rel = estimators.agreement(reference * 2, reference)
    assert abs(pearson - 1.0) < 1e-12
    assert rel == 1.0  # the largest difference (4) over the largest |score| (4)
