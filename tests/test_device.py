"""--device: names checked, CUDA refused clearly where there is none, the device recorded in runs; with a GPU,
a study runs there, repeats itself exactly and agrees with the CPU run (skipped without CUDA)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from inflang.cli import app
from runners.device import DeviceError, generator, parse, resolve
from tests.helpers import rows

runner = CliRunner()
GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

STUDY = """\
study: dev
dataset: {name: iris, test_size: 30}
model: {arch: mlp, depth: 1, width: 8}
training: {optimizer: adam, lr: 0.02, epochs: 200, weight_decay: 0.01, dtype: float64}
estimators: [{name: exact, damping: 0.01, negative: abs}, {name: lissa, damping: 0.05, scale: 20,
             recursion_depth: 50, batch_size: 16}, {name: kfac}]
test_points: {count: 2}
ground_truth: {protocol: loo, steps: 20, removals: {select: random, k: 6}}
"""


def test_device_names():
    assert resolve("cpu") == "cpu"
    assert resolve("auto") == ("cuda:0" if torch.cuda.is_available() else "cpu")
    for bad in ("gpu", "cuda:x", "cuda0", ""):
        with pytest.raises(DeviceError, match="not one of cpu, cuda, cuda:N, auto"):
            parse(bad)
    assert generator(3).device.type == "cpu"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message where there is no CUDA")
def test_cuda_where_there_is_none_is_a_clear_error_and_writes_nothing(write, tmp_path: Path):
    db = tmp_path / "d.duckdb"
    result = runner.invoke(app, ["run", str(write("s.yaml", STUDY)), "--db", str(db), "--device", "cuda"])
    assert result.exit_code == 2
    assert "no CUDA device is available" in result.output and "Traceback" not in result.output
    assert rows(db, "SELECT count(*) FROM runs") == [(0,)]
    assert rows(db, "SELECT count(*) FROM tasks") == [(0,)]


def test_bad_device_name_exits_2(write, tmp_path: Path):
    result = runner.invoke(app, ["run", str(write("s.yaml", STUDY)), "--db", str(tmp_path / "d.duckdb"),
                                 "--device", "tpu"])
    assert result.exit_code == 2 and "--device: 'tpu'" in result.output


def test_the_device_is_recorded(write, tmp_path: Path):
    db = tmp_path / "d.duckdb"
    result = runner.invoke(app, ["run", str(write("s.yaml", STUDY)), "--db", str(db), "--device", "auto"])
    assert result.exit_code == 0, result.output
    assert rows(db, "SELECT device FROM runs") == [(resolve("auto"),)]


@GPU
def test_a_study_on_the_gpu_repeats_and_agrees_with_the_cpu(write, tmp_path: Path):
    study = write("s.yaml", STUDY)
    dbs = {name: tmp_path / f"{name}.duckdb" for name in ("cpu", "gpu1", "gpu2")}
    for name, db in dbs.items():
        result = runner.invoke(app, ["run", str(study), "--db", str(db), "--device",
                                     "cpu" if name == "cpu" else "cuda"])
        assert result.exit_code == 0, result.output
    query = ("SELECT estimator, test_index, train_index, estimate, actual FROM influence "
             "ORDER BY estimator, test_index, train_index")
    gpu1, gpu2, cpu = rows(dbs["gpu1"], query), rows(dbs["gpu2"], query), rows(dbs["cpu"], query)
    assert gpu1 == gpu2  # deterministic on one GPU
    assert len(gpu1) == len(cpu)
    scale = max(abs(r[3]) for r in cpu)
    for g, c in zip(gpu1, cpu, strict=True):
        assert g[:3] == c[:3]
        assert abs(g[3] - c[3]) <= 1e-6 * scale  # same initialisation and draws; rounding differs
    assert rows(dbs["gpu1"], "SELECT device FROM runs") == [("cuda:0",)]


@GPU
def test_plan_calibrates_on_the_gpu(write, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("INFLANG_CACHE", str(tmp_path / "cache"))
    result = runner.invoke(app, ["plan", str(write("s.yaml", STUDY)), "--db", str(tmp_path / "d.duckdb"),
                                 "--calibrate", "--device", "cuda"])
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output


def test_chunks_on_a_gpu_are_sized_by_its_memory(monkeypatch: pytest.MonkeyPatch):
    """On the CPU a chunk keeps its fixed budget; on a GPU it may take a quarter of the device's total memory
    (fixed per device, so a rerun chunks alike), never less than the CPU's."""
    from types import SimpleNamespace

    from runners import device as devices

    assert devices.chunk_bytes(torch.device("cpu"), 1 << 30) == 1 << 30
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: SimpleNamespace(total_memory=80 << 30))
    assert devices.chunk_bytes(torch.device("cuda", 0), 1 << 30) == 20 << 30
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: SimpleNamespace(total_memory=2 << 30))
    assert devices.chunk_bytes(torch.device("cuda", 0), 1 << 30) == 1 << 30
