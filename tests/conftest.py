from __future__ import annotations

import os
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

# The suite retrains on the eager engine: compiling costs seconds per shape on a cold cache, and most tests
# retrain tiny ensembles. tests/test_engine.py runs the compiled engine against it (--engine overrides this).
os.environ.setdefault("INFLANG_ENGINE", "eager")

if os.environ.get("PYTEST_XDIST_WORKER"):  # two workers share the two cores: one torch thread each, not two
    import torch

    torch.set_num_threads(1)

TINY = """\
study: tiny
seed: 3
dataset:
  name: iris
  test_size: 30
model:
  arch: logreg
training:
  optimizer: sgd
  lr: 0.5
  epochs: 200
  weight_decay: 0.01
  dtype: float64
estimators:
  - name: exact
    damping: 0.0
test_points:
  select: highest_loss
  count: 2
ground_truth:
  protocol: loo
  start: optimum
  steps: 100
  removals:
    select: random
    k: 12
metrics: [pearson, spearman]
"""


@pytest.fixture
def write(tmp_path: Path) -> Callable[[str, str], Path]:
    """Write a YAML file (dedented) into the test's temp directory and return its path."""

    def _write(name: str, text: str) -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text))
        return path

    return _write


@pytest.fixture
def tiny_study(write: Callable[[str, str], Path]) -> Path:
    return write("tiny.yaml", TINY)


@pytest.fixture(autouse=True, scope="session")
def _private_digest_cache(tmp_path_factory):
    """Data-file digests go to a cache of the test session's own, not the user's ~/.cache."""
    import os

    os.environ["INFLANG_CACHE"] = str(tmp_path_factory.mktemp("digest-cache"))
    yield


# Modules whose tests run long (real processes, Ray, compiles, calibration): handed out first, so that the two
# xdist workers end on short tests instead of one waiting for the other's last long one.
LONG_FIRST = ("test_resume", "test_custom", "test_concurrency", "test_engine", "test_pricing", "test_mnist1d",
              "test_diagnostics", "test_benchmarks", "test_run_behaviour", "test_resolution", "test_extending")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONG_FIRST)}
    def module(item: pytest.Item) -> str:
        found = getattr(item, "module", None)
        return found.__name__.rsplit(".", 1)[-1] if found is not None else ""

    items.sort(key=lambda item: rank.get(module(item), len(LONG_FIRST)))
