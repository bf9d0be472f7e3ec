"""The compiled retraining engine against the eager one, the engine choice, the fallback, and its record."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
import torch
from torch import nn

from runners import compiled, engine
from runners.ensemble import UpdateRule, multiply_adds, stack, train_ensemble, weighted_cross_entropy


def _problem(conv: bool = False) -> tuple[nn.Module, dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    if conv:
        x = torch.randn(24, 1, 6, 6, dtype=torch.float64)
        module = nn.Sequential(nn.Conv2d(1, 3, 3), nn.Tanh(), nn.Flatten(), nn.Linear(48, 3))
    else:
        x = torch.randn(24, 4, dtype=torch.float64)
        module = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 3))
    module = module.double()
    y = torch.randint(0, 3, (24,))
    start = {k: v.detach().clone() for k, v in module.named_parameters()}
    return module, start, x, y


class ResidualConv(nn.Module):
    """A convolution with a skip connection: not a plain layer stack."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.head = nn.Conv2d(1, 1, 3, padding=1), nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head((x + self.conv(x)).flatten(1))


def _removals(n: int, models: int) -> torch.Tensor:
    weights = torch.ones(models, n, dtype=torch.float64)
    rows = torch.arange(1, models)
    weights[rows, rows - 1] = 0.0
    return weights


@pytest.mark.parametrize(("conv", "optimizer", "batch"), [(False, "sgd", None), (False, "adam", 8), (True, "sgd", 8)])
def test_compiled_agrees_with_eager_in_float64(conv: bool, optimizer: str, batch: int | None):
    """Same function, other rounding: the compiled step's models end within 1e-10 of the eager ones after 200
    steps (SGD with momentum, full batch; Adam and a CNN with minibatches) with weight decay and proximity."""
    module, start, x, y = _problem(conv)
    models = 7
    weights = _removals(x.shape[0], models)
    rule = UpdateRule(optimizer=optimizer, lr=0.05 if optimizer == "sgd" else 0.01, weight_decay=0.01,
                      momentum=0.9 if optimizer == "sgd" else 0.0)
    anchor = stack(start, models)
    out = {name: train_ensemble(module, stack(start, models), x, rule, 200, batch, [0] * models,
                                weighted_cross_entropy(y, weights), anchor=anchor, proximity=0.1, engine=name)
           for name in ("eager", "compiled")}
    moved = max(float((out["eager"][k] - anchor[k]).abs().max()) for k in start)
    assert moved > 1e-3  # training did something
    for k in start:
        assert torch.allclose(out["compiled"][k], out["eager"][k], rtol=0, atol=1e-10), k


def test_compiled_per_model_batches_and_repeat():
    """Models with their own batch orders (a [M, b] batch) compile too, and the compiled engine repeats bit for
    bit (the same shapes give the same kernels)."""
    module, start, x, y = _problem()
    weights = _removals(x.shape[0], 4)
    rule = UpdateRule(optimizer="sgd", lr=0.05, weight_decay=0.01, momentum=0.9)
    seeds = [0, 1, 0, 2]
    runs = [train_ensemble(module, stack(start, 4), x, rule, 50, 8, seeds, weighted_cross_entropy(y, weights),
                           engine=e) for e in ("compiled", "compiled", "eager")]
    for k in start:
        assert torch.equal(runs[0][k], runs[1][k])
        assert torch.allclose(runs[0][k], runs[2][k], rtol=0, atol=1e-10)


def test_choice_follows_the_model_and_the_work():
    mlp, _, _, _ = _problem()
    dropout = nn.Sequential(nn.Linear(4, 6), nn.Dropout(0.1), nn.Linear(6, 3))
    batchnorm = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Linear(6, 3))
    assert engine.choose(mlp, 1, "eager") == "eager"
    assert engine.choose(mlp, 1, "compiled") == "compiled"
    assert engine.choose(dropout, 10**9, "compiled") == "eager"  # masks come from the eager generator
    assert engine.choose(batchnorm, 10**9, "auto") == "eager"
    assert engine.choose(mlp, 10**9, "auto") == "eager"  # a plain stack: the stack engine, eager
    normed = nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6), nn.Linear(6, 3))  # not a plain stack: vmap
    assert engine.choose(normed, 100 * 1000, "auto") == "compiled"
    assert engine.choose(normed, 100 * 999, "auto") == "eager"
    conv32 = nn.Sequential(nn.Conv2d(1, 3, 3), nn.Flatten(), nn.Linear(48, 3))
    assert engine.choose(conv32, 10**9, "auto") == "eager"  # the convolution engine: faster eager
    assert engine.choose(conv32.double(), 10**9, "auto") == "eager"
    assert engine.choose(conv32, 10**9, "compiled") == "compiled"  # asked for explicitly
    residual = ResidualConv()  # not a plain stack: vmap's grouped convolutions, compiled in float64 (1.3x)
    assert engine.choose(residual, 10**9, "auto") == "eager"
    assert engine.choose(residual.double(), 10**9, "auto") == "compiled"
    with torch.device("meta"):  # a device the convolution engine does not cover: as any convolutional model
        assert engine.choose(conv32.double(), 10**9, "auto") == "compiled"
    from inflang.compiling.cost import STACKED_DEVICES
    from runners.stacked import STRATEGY

    assert set(STACKED_DEVICES) == {device for device, _ in STRATEGY}
    # multiply-adds of one example's forward pass (the benchmark's and the plan's FLOP count), by hand
    assert multiply_adds(mlp, (4,)) == 4 * 6 + 6 * 6 + 6 * 3
    conv, _, _, _ = _problem(conv=True)
    assert multiply_adds(conv, (1, 6, 6)) == 3 * 16 * 9 + 48 * 3
    with pytest.raises(engine.EngineError, match="--engine: 'fast' is not one of auto, compiled, eager"):
        engine.parse("fast")


def test_failed_compile_falls_back_to_eager_with_one_line(monkeypatch, capsys):
    module, start, x, y = _problem()
    weights = _removals(x.shape[0], 3)
    rule = UpdateRule(optimizer="sgd", lr=0.05, weight_decay=0.01)

    def broken(*args: object, **kwargs: object) -> object:
        def gradient(*a: object) -> object:
            raise compiled.CompileUnavailable("InvalidCxxCompiler: no working C++ compiler found")
        return gradient

    monkeypatch.setattr("runners.ensemble.compiled_gradient", broken)
    monkeypatch.setattr(engine, "_unavailable", None)
    with engine.selected("compiled") as used:
        out = train_ensemble(module, stack(start, 3), x, rule, 30, None, [0] * 3, weighted_cross_entropy(y, weights))
        again = train_ensemble(module, stack(start, 3), x, rule, 30, None, [0] * 3,
                               weighted_cross_entropy(y, weights))
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["inflang: compiled engine unavailable (InvalidCxxCompiler: no working C++ compiler found); "
                   "using the eager engine"]  # said once per process
    assert used == {"eager"}
    eager = train_ensemble(module, stack(start, 3), x, rule, 30, None, [0] * 3, weighted_cross_entropy(y, weights),
                           engine="eager")
    for k in start:
        assert torch.equal(out[k], eager[k]) and torch.equal(again[k], eager[k])
    monkeypatch.setattr(engine, "_unavailable", None)


def test_short_last_batch_compiles_before_the_first_step(monkeypatch, capsys):
    """24 points in batches of 10 end each epoch with a batch of 4: a second graph. It is compiled before step 0,
    so compiled agrees with eager there too, and a compile failing on it falls back before any step: a
    monitor (early stopping) sees each step once, never a replay."""
    module, start, x, y = _problem()
    weights = _removals(x.shape[0], 3)
    rule = UpdateRule(optimizer="sgd", lr=0.05, weight_decay=0.01, momentum=0.9)
    runs = {e: train_ensemble(module, stack(start, 3), x, rule, 40, 10, s, weighted_cross_entropy(y, weights),
                              engine=e) for e in ("compiled", "eager") for s in ([0, 1, 2],)}
    for k in start:
        assert torch.allclose(runs["compiled"][k], runs["eager"][k], rtol=0, atol=1e-10)

    real = compiled.compiled_gradient

    def short_batch_fails(*args: object, **kwargs: object) -> object:
        inner = real(*args, **kwargs)  # type: ignore[arg-type]

        def gradient(flat: torch.Tensor, xb: torch.Tensor, batch: object, per_model: bool) -> object:
            if xb.shape[-2] == 4:
                raise compiled.CompileUnavailable("CppCompileError: the short batch")
            return inner(flat, xb, batch, per_model)
        return gradient

    monkeypatch.setattr("runners.ensemble.compiled_gradient", short_batch_fails)
    monkeypatch.setattr(engine, "_unavailable", None)
    seen: list[int] = []
    out = train_ensemble(module, stack(start, 3), x, rule, 40, 10, [0] * 3, weighted_cross_entropy(y, weights),
                         on_step=lambda step, _: seen.append(step), engine="compiled")
    assert seen == list(range(40))
    assert "the short batch" in capsys.readouterr().err
    eager = train_ensemble(module, stack(start, 3), x, rule, 40, 10, [0] * 3, weighted_cross_entropy(y, weights),
                           engine="eager")
    for k in start:
        assert torch.equal(out[k], eager[k])
    monkeypatch.setattr(engine, "_unavailable", None)


STUDY = """\
study: engines
seed: 1
dataset: {name: iris, test_size: 30}
model: {arch: mlp, depth: 1, width: 5, activation: tanh}
training: {optimizer: sgd, lr: 0.1, epochs: 100, weight_decay: 0.01, dtype: float64}
estimators: [{name: exact, damping: 0.001, negative: abs}]
test_points: {select: highest_loss, count: 2}
ground_truth: {protocol: loo, start: optimum, steps: 60, removals: {select: random, k: 10}}
metrics: [spearman]
"""


def _run(study: Path, db: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "inflang.cli", "run", str(study), "--db", str(db), *extra],
                          capture_output=True, text=True)


def test_engine_is_recorded_and_rows_agree(write, tmp_path: Path):
    """--engine compiled from the CLI: runs.engine and tasks.engine say so, and the influence rows' actual
    effects agree with an eager run to rounding."""
    from typer.testing import CliRunner

    from inflang.cli import app

    study = write("engines.yaml", STUDY)
    for name in ("compiled", "eager"):  # in this process: the CLI's engine option is what is under test
        done = CliRunner().invoke(app, ["run", str(study), "--db", str(tmp_path / f"{name}.duckdb"), "--engine", name])
        assert done.exit_code == 0, done.output
    rows = {}
    for name in ("compiled", "eager"):
        with duckdb.connect(str(tmp_path / f"{name}.duckdb"), read_only=True) as con:
            assert con.execute("SELECT engine FROM runs").fetchall() == [(name,)]
            engines = dict(con.execute("SELECT kind, string_agg(DISTINCT engine, ',') FROM tasks GROUP BY kind")
                           .fetchall())
            assert engines["ground_truth"] == name and engines["train"] == "eager"  # base training runs eager
            rows[name] = con.execute("SELECT test_index, train_index, actual FROM influence WHERE estimator = "
                                     "'exact' AND actual IS NOT NULL ORDER BY ALL").fetchall()
    assert len(rows["compiled"]) == 20
    for a, b in zip(rows["compiled"], rows["eager"], strict=True):
        assert a[:2] == b[:2] and abs(a[2] - b[2]) <= 1e-12


def test_bad_engine_is_a_one_line_error(write, tmp_path: Path):
    study = write("engines.yaml", STUDY)
    done = _run(study, tmp_path / "x.duckdb", "--engine", "fast")
    assert done.returncode == 2
    assert done.stderr.strip() == "error: --engine: 'fast' is not one of auto, compiled, eager"
    assert not (tmp_path / "x.duckdb").exists()
