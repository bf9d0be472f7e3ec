"""Pricing a plan: FLOPs from the specs (against the built modules), measured rates, and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import TypeAdapter

from inflang.compiling.pricing import Rates, Workload
from inflang.spec import ModelSpec
from inflang.spec.dataset import BUNDLED, DatasetInfo
from inflang.units import duration, flops_text
from runners.calibrate import seconds_per_model_step
from runners.ensemble import multiply_adds
from runners.models import build

ROOT = Path(__file__).resolve().parents[1]
CIFAR = DatasetInfo(rows=60000, features=3 * 32 * 32, classes=10, shape=(3, 32, 32))
MNIST = DatasetInfo(rows=70000, features=784, classes=10, shape=(1, 28, 28))


@pytest.mark.parametrize(("model", "info"), [
    ({"arch": "logreg"}, BUNDLED["iris"]),
    ({"arch": "mlp", "depth": 3, "width": 7}, BUNDLED["iris"]),
    ({"arch": "mlp", "depth": 1, "width": 5}, BUNDLED["digits"]),
    ({"arch": "cnn", "depth": 2, "channels": 8}, BUNDLED["digits"]),
    ({"arch": "cnn", "depth": 3, "channels": 4}, MNIST),
    ({"arch": "lenet"}, MNIST),
    ({"arch": "vgg", "depth": 11, "width_multiplier": 0.125}, CIFAR),
    ({"arch": "resnet", "depth": 20, "width_multiplier": 0.5, "norm": "none"}, CIFAR),
    ({"arch": "resnet", "depth": 18, "width_multiplier": 0.125, "norm": "group"}, CIFAR),
])
def test_spec_multiply_adds_match_the_built_model(model: dict, info: DatasetInfo):
    """The analytic count the plan prices with equals the count of the module runners build (hooks on every
    Linear, Conv1d and Conv2d layer)."""
    spec = TypeAdapter(ModelSpec).validate_python(model)
    shape = info.shape or (info.features,)
    module = build(spec, shape, info.classes, 0, __import__("torch").float32)
    assert spec.multiply_adds(info) == multiply_adds(module, tuple(shape))


def test_rates_are_kept_by_workload_and_machine(tmp_path: Path):
    spec = {"model": {"arch": "mlp", "depth": 1, "width": 4}, "shape": None, "features": 4, "classes": 3,
            "regression": False, "dtype": "float64", "batch": 16, "steps": 10}
    seconds, engine, compile_seconds = seconds_per_model_step(spec, 5, "eager", steps=2)
    assert seconds > 0 and engine == "eager" and compile_seconds >= 0
    work = Workload(spec, 5, "eager")
    rates = Rates(tmp_path / "rates.json")
    rates.put(work.key("cpu", 1), seconds)
    rates.save()
    again = Rates(tmp_path / "rates.json")
    assert again.get(work.key("cpu", 1)) == seconds
    assert again.get(work.key("cpu", 2)) is None  # other threads, other rate
    assert again.get(Workload({**spec, "steps": 99}, 5, "eager").key("cpu", 1)) == seconds  # steps do not matter
    assert again.get(Workload(spec, 6, "eager").key("cpu", 1)) is None
    assert json.loads(Workload(spec, 5, "compiled").key("cpu", 1))["engine"] == "compiled"


def test_units_read_well():
    assert [duration(s) for s in (42, 600, 7200, 3 * 86400)] == ["42 s", "10.0 min", "2.0 h", "3.0 days"]
    assert [flops_text(f) for f in (2e9, 3.5e12, 2.8e15)] == ["2.0 GFLOP", "3.5 TFLOP", "2.8 PFLOP"]


def _plan(*args: str, cache: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "inflang.cli", "plan", *args], capture_output=True, text=True,
                          env={**__import__("os").environ, "INFLANG_CACHE": str(cache), "COLUMNS": "200"})


def test_full_size_study_is_priced_without_its_files(tmp_path: Path):
    """small_mnist_cnn_full needs MNIST files that are not here: plan still prints its models, FLOPs and,
    after --calibrate (here on a --select'ed cell, to stay short), a time estimate."""
    study = str(ROOT / "studies" / "paper" / "small_mnist_cnn_full.yaml")
    db = str(tmp_path / "x.duckdb")
    first = _plan(study, "--db", db, cache=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "PFLOP" in first.stdout and "--calibrate measures them" in first.stdout
    assert "the small_mnist files are not in" in first.stdout
    cell = ["--select", "training.weight_decay=0.001", "--select", "ground_truth.removals.select=top_k",
            "--memory-budget", "64MB"]  # small ensembles: quick to calibrate
    priced = _plan(study, "--db", db, "--calibrate", "--engine", "eager", *cell, cache=tmp_path)
    assert priced.returncode == 0, priced.stderr
    assert "calibrating" in priced.stderr
    line = next(ln for ln in priced.stdout.splitlines() if ln.startswith("time: about"))
    assert "on cpu with 1 thread(s) and the eager engine" in line
    assert (tmp_path / "rates.json").is_file()
    again = _plan(study, "--db", db, "--engine", "eager", *cell, cache=tmp_path)  # priced from the cache
    assert "calibrating" not in again.stderr and "time: about" in again.stdout
    assert not Path(db).exists()  # plan writes no database


def test_plan_rejects_a_bad_engine(tmp_path: Path):
    done = _plan(str(ROOT / "studies" / "quickstart.yaml"), "--engine", "fast", cache=tmp_path)
    assert done.returncode == 2 and done.stderr.strip() == "error: --engine: 'fast' is not one of auto, compiled, eager"


def test_every_ensemble_chunk_is_priced_with_its_own_control():
    """A retraining task split into chunks trains one control per chunk, not one per repeat: 5 removals in
    ensembles of 3 are chunks (2 removals + control) x 2 and (1 + control), 8 models per repeat, not 6."""
    from inflang.compiling.plan import Task

    task = Task("ground_truth", "h", {}, (), cost_steps=10 * 6 * 2, models=12, member_bytes=100, chunk=3,
                repeats=2, items=5, flops=1200.0)
    assert task.model_steps() == 10 * 8 * 2 and task.trained_models() == 16 and task.model_flops() == 1600.0
    probed = Task("ground_truth", "h", {}, (), cost_steps=10 * 10, models=10, member_bytes=100, chunk=3,
                  repeats=1, probes=4, items=5, flops=100.0)
    assert probed.model_steps() == 10 * (3 + 3 + 3 + 3 + 2)  # the probes' own two ensembles, then the removals'
    assert task.typical_chunk() == 3 and probed.typical_chunk() == 3  # priced at what most chunks hold
    whole = Task("ground_truth", "h", {}, (), cost_steps=10 * 6, models=6, member_bytes=100, chunk=None,
                 repeats=1, items=5, flops=60.0)
    assert whole.model_steps() == whole.cost_steps and whole.trained_models() == 6  # one chunk: as counted
    train = Task("train", "t", {}, (), cost_steps=500, models=1)
    assert train.model_steps() == 500 and train.model_flops() == 0.0


def test_pricing_picks_the_engine_the_run_would():
    """auto's rule is shared with the engine: MLPs compile in long ensembles, float32 CNNs and models with
    dropout or BatchNorm retrain eagerly."""
    from inflang.compiling.plan import Task
    from inflang.compiling.pricing import workload_of

    def task(model: dict, dtype: str = "float32") -> Task:
        work = {"model": model, "shape": None, "features": 4, "classes": 3, "regression": False, "dtype": dtype,
                "batch": 120, "steps": 1000}
        return Task("ground_truth", "h", {}, (), cost_steps=1000 * 121, models=121, member_bytes=1000, items=120,
                    flops=1.0, workload=work)

    mlp = {"arch": "mlp", "depth": 2, "width": 16}
    cnn = {"arch": "cnn", "depth": 2, "channels": 8}
    assert workload_of(task(mlp), None, "auto").engine == "eager"  # a plain stack: the stack engine
    assert workload_of(task(mlp), None, "auto", "cuda:0").engine == "compiled"  # which a GPU does not run
    assert workload_of(task({**mlp, "dropout": 0.1}), None, "auto").engine == "eager"
    assert workload_of(task({**mlp, "dropout": 0.1}), None, "compiled").engine == "eager"
    assert workload_of(task(cnn), None, "auto").engine == "eager"
    assert workload_of(task(cnn, "float64"), None, "auto").engine == "eager"  # the convolution engine
    resnet = {"arch": "resnet", "depth": 20, "norm": "none"}
    assert workload_of(task(resnet, "float64"), None, "auto").engine == "compiled"
    assert workload_of(task({"arch": "vgg", "depth": 11}, "float64"), None, "auto").engine == "eager"
    # on a GPU the convolution engine does not run: compiled grouped convolutions in float64, as for resnet
    assert workload_of(task(cnn, "float64"), None, "auto", "cuda:0").engine == "compiled"
    # a study's own model: the probed facts travel in the workload (a dump of the spec leaves them out)
    own = {"arch": "custom", "factory": "nets:conv_stack"}
    custom = task(own)
    custom.workload["facts"] = {"convolutional": True, "stacked": True, "fixed": True}
    assert workload_of(custom, None, "auto").engine == "eager"
    custom.workload["facts"] = {"convolutional": False, "stacked": False, "fixed": True}
    assert workload_of(custom, None, "auto").engine == "compiled"
    custom.workload["facts"] = {"convolutional": False, "stacked": False, "fixed": False}  # dropout inside
    assert workload_of(custom, None, "auto").engine == "eager"
    assert workload_of(task({"arch": "vgg", "depth": 11, "norm": "batch"}, "float64"), None, "auto").engine == "eager"


def test_newton_refits_are_priced_from_a_measured_refit(tmp_path: Path):
    """A solver: newton task takes no optimizer steps: its price is the chord Hessian's seconds plus its refits
    at the seconds one refit takes, both measured (random data of the task's size), and no step rate."""
    from inflang.compiling.plan import compile_study
    from inflang.compiling.pricing import newton_workload_of, price, workload_of
    from inflang.compiling.validate import load_study
    from runners.calibrate import seconds_per_newton_refit

    study = tmp_path / "n.yaml"
    study.write_text("study: newton\ndataset: {name: iris, test_size: 30}\nmodel: {arch: logreg}\n"
                     "training: {optimizer: lbfgs, lr: 1.0, epochs: 50, weight_decay: 0.01, dtype: float64}\n"
                     "estimators: [{name: exact}]\ntest_points: {count: 2}\n"
                     "ground_truth: {protocol: loo, solver: newton, removals: {select: random, k: 10}}\n")
    plan = compile_study(load_study(study))
    (task,) = [t for t in plan.tasks.values() if t.kind == "ground_truth"]
    assert task.cost_steps == 0 and workload_of(task, None, "eager") is None
    work = newton_workload_of(task)
    assert work is not None and task.workload is not None and task.workload["newton_refits"] == 11 + 4  # + probes
    per_refit, hessian = seconds_per_newton_refit(work.spec, work.models)
    assert per_refit > 0 and hessian > 0
    rates = Rates(tmp_path / "rates.json")
    rates.put(work.key("cpu", 1), per_refit)
    rates.put(work.key("cpu", 1) + "/hessian", hessian)
    priced = price([task], None, "eager", "cpu", 1, rates)[task.hash].seconds
    assert priced == pytest.approx(hessian + 15 * per_refit)


def test_auto_decides_by_the_measured_compile_and_rates(tmp_path: Path):
    """With both engines' rates and the compile measured here, auto compiles a task exactly when the seconds the
    compiled steps save over its model-steps exceed the compile's; without them, by the count of model-steps;
    never where compiling cannot speed the step up (a plain stack on the CPU: the stack engine). Every
    candidate's two steps and the compile are what --calibrate measures."""
    from inflang.compiling.plan import Task
    from inflang.compiling.pricing import COMPILE, auto_engine, engine_choices, price, unmeasured

    work = {"model": {"arch": "mlp", "depth": 2, "width": 16}, "shape": None, "features": 4, "classes": 3,
            "regression": False, "dtype": "float32", "batch": 120, "steps": 1000}

    def task(models: int, name: str = "h") -> Task:
        return Task("ground_truth", name, {}, (), cost_steps=1000 * models, models=models, member_bytes=1000,
                    items=models - 1, flops=1.0, workload=dict(work))

    short, long = task(121, "short"), task(1021, "long")  # 121,000 and 1,021,000 model-steps
    rates = Rates(tmp_path / "rates.json")
    gpu = "cuda:0"  # where the stack engine does not run
    assert auto_engine(long, None, "cpu", rates) == "eager"  # unmeasured: a plain stack on the CPU
    assert auto_engine(short, None, gpu, rates) == "compiled"  # unmeasured: 121,000 >= 100,000 model-steps
    missing = unmeasured(None, [short], None, "auto", gpu, 1, rates)  # type: ignore[arg-type]
    assert sorted(json.loads(k)["engine"] for k in missing) == ["compiled", "eager"]
    eager = Workload({k: v for k, v in work.items()}, 32, "eager").key(gpu, 1)
    compiled = Workload(dict(work), 32, "compiled").key(gpu, 1)
    rates.put(eager, 40e-6)
    rates.put(compiled, 20e-6)
    rates.put(compiled + COMPILE, 4.0)  # saves 20 us a model-step: pays from 200,000 model-steps
    assert unmeasured(None, [short], None, "auto", gpu, 1, rates) == {}  # type: ignore[arg-type]
    assert auto_engine(short, None, gpu, rates) == "eager"  # 2.42 s saved < 4 s of compile
    assert auto_engine(long, None, gpu, rates) == "compiled"  # 20.4 s saved
    assert engine_choices([short, long], None, gpu, 1, rates) == {"short": "eager", "long": "compiled"}
    priced = price([short, long], None, "auto", gpu, 1, rates)
    assert priced["short"].seconds == pytest.approx(121_000 * 40e-6)
    assert priced["long"].seconds == pytest.approx(1_021_000 * 20e-6 + 4.0)  # the compile is priced
    rates.put(Workload(dict(work), 32, "eager").key("cpu", 1), 40e-6)  # measured on the CPU too: the same rule
    rates.put(Workload(dict(work), 32, "compiled").key("cpu", 1), 20e-6)
    rates.put(Workload(dict(work), 32, "compiled").key("cpu", 1) + COMPILE, 4.0)
    assert engine_choices([short, long], None, "cpu", 1, rates) == {"short": "eager", "long": "compiled"}
    dropout = task(1021, "dropout")
    dropout.workload["model"] = {**work["model"], "dropout": 0.1}  # type: ignore[index]
    assert auto_engine(dropout, None, gpu, rates) == "eager"  # masks come from the eager engine


def test_a_task_runs_with_the_engine_the_run_handed_it(monkeypatch: pytest.MonkeyPatch):
    from inflang.compiling.cost import ENGINE_INPUT
    from runners import engine as engines
    from runners import entry
    from runners.tasks import Output

    seen: dict = {}

    def fake(kind: str, inputs: dict, deps: dict, ctx: object) -> tuple[Output, float]:
        seen.update(engine=engines.current(), inputs=inputs)
        return Output({}, {}), 0.0

    monkeypatch.setattr(entry, "run_task", fake)
    entry.run("metrics", {"a": 1, ENGINE_INPUT: "eager"}, {}, engine="compiled")
    assert seen == {"engine": "eager", "inputs": {"a": 1}}  # the handed engine, not part of the task's inputs
    entry.run("metrics", {"a": 1}, {}, engine="compiled")
    assert seen["engine"] == "compiled"


def test_keys_and_handoffs_agree_between_plan_and_run(tmp_path: Path):
    """--device cuda and the resolved cuda:0 read the same rates; a compile that failed where it was measured
    keeps auto eager for good; a dependency the driver rebuilds is handed the engine the run chose for it."""
    from inflang.compiling.cost import ENGINE_INPUT
    from inflang.compiling.plan import Task
    from inflang.compiling.pricing import COMPILE, COMPILE_FAILED, auto_engine
    from inflang.running.scheduler import _Artifacts

    work = {"model": {"arch": "mlp", "depth": 2, "width": 16}, "shape": None, "features": 4, "classes": 3,
            "regression": False, "dtype": "float32", "batch": 120, "steps": 1000}
    assert Workload(work, 32, "eager").key("cuda", 1) == Workload(work, 32, "eager").key("cuda:0", 1)
    task = Task("ground_truth", "t", {"a": 1}, (), cost_steps=10**7, models=10**4, member_bytes=1000, items=120,
                flops=1.0, workload=dict(work))
    rates = Rates(tmp_path / "rates.json")
    rates.put(Workload(work, 32, "eager").key("cuda", 1), 40e-6)
    rates.put(Workload(work, 32, "compiled").key("cuda", 1), 20e-6)
    rates.put(Workload(work, 32, "compiled").key("cuda", 1) + COMPILE, COMPILE_FAILED)
    assert auto_engine(task, None, "cuda:0", rates) == "eager"  # 10^7 model-steps save 200 s: not 10^9

    class Plan:  # what _Artifacts reads of a plan
        tasks = {"t": task}

    class Store:
        artifacts = tmp_path

        def task_status(self, hashes: list[str]) -> dict:
            return {}

    runner = _Artifacts(Plan(), Store(), lambda kind, inputs, deps: None, {"t": "compiled"})  # type: ignore[arg-type]
    assert runner.inputs(task) == {"a": 1, ENGINE_INPUT: "compiled"}
    assert _Artifacts(Plan(), Store(), lambda kind, inputs, deps: None).inputs(task) == {"a": 1}  # type: ignore[arg-type]


def test_converged_pbrf_refits_are_priced_by_their_own_measured_rate(tmp_path: Path):
    """solver: newton under protocol: pbrf solves another objective than leave-one-out, with the Gauss-Newton
    chord: its workload says so, so its rate is its own (measured on PBRF refits) and keyed apart."""
    from inflang.compiling.plan import compile_study
    from inflang.compiling.pricing import newton_workload_of
    from inflang.compiling.validate import load_study
    from runners.calibrate import seconds_per_newton_refit

    keys = {}
    for protocol in ("loo", "pbrf"):
        study = tmp_path / f"{protocol}.yaml"
        study.write_text(f"study: {protocol}\ndataset: {{name: iris, test_size: 30}}\n"
                         "model: {arch: mlp, depth: 1, width: 4, activation: tanh}\n"
                         "training: {optimizer: lbfgs, lr: 1.0, epochs: 50, weight_decay: 0.01, dtype: float64}\n"
                         "estimators: [{name: exact}]\ntest_points: {count: 2}\n"
                         f"ground_truth: {{protocol: {protocol}, solver: newton,\n"
                         "               removals: {select: random, k: 4}}\n")
        (task,) = [t for t in compile_study(load_study(study)).tasks.values() if t.kind == "ground_truth"]
        work = newton_workload_of(task)
        assert work is not None
        keys[protocol] = work.key("cpu", 1)
        if protocol == "pbrf":
            assert work.spec["protocol"] == "pbrf"
            per_refit, chord = seconds_per_newton_refit(work.spec, work.models)
            assert per_refit > 0 and chord > 0
    assert keys["loo"] != keys["pbrf"]
