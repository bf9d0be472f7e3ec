"""Pricing a plan before running it: FLOPs from the model specs, seconds from engine rates measured here.

A training or retraining task trains ``Task.model_steps(budget)`` model-steps (every ensemble chunk with a
control of its own), each about 6 b multiply_adds FLOPs (the model spec's count for a batch of b;
``inflang.spec.model``). Its time is that count times the seconds one model-step takes on this machine,
measured by ``inflang plan --calibrate`` (``runners.calibrate``): a few steps of the task's own ensemble (its
model, batch and dtype, on random data of its shape, with its chunk's models up to ``CALIBRATION_MODELS`` and
``CALIBRATION_FLOPS`` per step) on the requested device, threads and engine. Measured rates are kept in
``rates.json`` beside the data digests (``~/.cache/inflang`` or ``INFLANG_CACHE``), keyed by the workload
(for a study's own model also its code's digest and whether vmap batches it: an edit is measured again),
the device (and for CUDA the GPU's model), the thread count, the engine, torch's version and this machine's
processor, so a plan prices itself from then on without running anything.

Newton refits (``solver: newton``, and the decomposition's converged refits) take no optimizer steps: a task
with ``newton_refits`` is priced as the seconds of its chord matrix plus the seconds of one refit times its
refits, both measured by ``--calibrate`` on the task's model and training-set size with random data, each
refit leaving one point out of a solved optimum as a study's do, or, for a converged PBRF (whose workload
says ``protocol: pbrf``, with its damping and iteration limit), solving PBRF refits from the initialisation
with the Gauss-Newton chord (``runners.calibrate``); real data can take more or fewer iterations than random
data.

With ``--engine auto`` calibration measures both engines' steps of a task that may compile and the compile
itself (the first call's seconds beyond a later call's), and the run compiles exactly the tasks whose
saved seconds exceed the compile's (``auto_engine``); a compiled task is priced with its compile.

How far to trust it: curvature, estimates and metrics are left out (the estimate errs short by them;
retraining is the cost that matters), and so is a compile nobody measured. A task is timed at the ensemble
size most of its chunks have (``Task.typical_chunk``), capped for the calibration: a model-step costs about as
much or less in a larger ensemble, so a cap errs long, while a short last chunk or the probes' own chunk is
priced at the typical chunk's rate (errs either way, by a chunk's share).
"""

from __future__ import annotations

import functools
import json
import os
import platform
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

from inflang.compiling.cost import auto_compiles, compile_pays
from inflang.compiling.datadigest import cache_file
from inflang.compiling.plan import Plan, Task
from inflang.spec import ModelSpec

CALIBRATION_MODELS = 32
COMPILE = "/compile"  # a compiled workload's key + this: the seconds its compile took here
COMPILE_FAILED = 1e9  # stored as the compile's seconds where compiling failed here: never worth it
NEWTON_CALIBRATION_MODELS = 8
_MODELS: TypeAdapter[Any] = TypeAdapter(ModelSpec)
CALIBRATION_FLOPS = 5e10  # per calibration step (all its models): about a second of a large CNN's step here


@functools.cache
def _processor(device: str = "cpu") -> str:
    """The CPU's model name, or for a CUDA device the GPU's (read from the NVIDIA driver; no torch here)."""
    if device.startswith("cuda"):
        index = int(device.partition(":")[2] or 0)
        boards = sorted(Path("/proc/driver/nvidia/gpus").glob("*/information"))
        try:
            for line in boards[index].read_text().splitlines():
                if line.startswith("Model:"):
                    return line.split(":", 1)[1].strip()
        except (OSError, IndexError):
            pass
        return "an unnamed CUDA device"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@functools.cache
def _torch_version() -> str:
    try:
        return metadata.version("torch")
    except metadata.PackageNotFoundError:
        return "none"


@dataclass(frozen=True)
class Workload:
    """One training step to time: a task's ``workload`` with the ensemble size it runs at."""

    spec: dict[str, Any]  # Task.workload: model, shape, features, classes, regression, dtype, batch, steps
    models: int
    engine: str  # compiled | eager: what the run would use (auto decided for the task's whole chunk)

    def key(self, device: str, threads: int) -> str:
        """What a measured rate depends on (not the step count)."""
        body = {k: v for k, v in self.spec.items() if k != "steps"}
        device = "cuda:0" if device == "cuda" else device  # --device cuda is the first GPU
        return json.dumps({"workload": body, "models": self.models, "engine": self.engine, "device": device,
                           "threads": threads, "torch": _torch_version(), "processor": _processor(device)},
                          sort_keys=True)


def rates_file() -> Path:
    return cache_file().parent / "rates.json"


class Rates:
    """Measured seconds per model-step, by Workload.key; read once, written back when something was added."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or rates_file()
        try:
            self.entries: dict[str, float] = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.entries = {}
        self.changed = False

    def get(self, key: str) -> float | None:
        return self.entries.get(key)

    def put(self, key: str, seconds: float) -> None:
        self.entries[key] = seconds
        self.changed = True

    def save(self) -> None:
        if not self.changed:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(self.entries, indent=1, sort_keys=True))
            tmp.replace(self.path)
        except OSError:
            pass  # a read-only cache only costs a re-measurement next time
        self.changed = False


CHORD = "hessian, gauss-newton above 3000 parameters"  # in the rate key: rates timed with another chord are not reused


def newton_workload_of(task: Task) -> Workload | None:
    """The Newton refits of a ground-truth task (their model and training-set size); None without any."""
    if task.workload is None or not task.workload.get("newton_refits"):
        return None
    spec = {k: v for k, v in task.workload.items() if k not in ("engine", "steps", "newton_refits", "batch")}
    return Workload({**spec, "solver": "newton", "chord": CHORD}, min(NEWTON_CALIBRATION_MODELS,
                                                                      task.workload["newton_refits"]), "newton")


def newton_seconds(task: Task, work: Workload, device: str, threads: int, rates: Rates) -> float | None:
    """The chord matrix once plus each of the task's refits at the measured seconds per refit."""
    per_refit = rates.get(work.key(device, threads))
    hessian = rates.get(work.key(device, threads) + "/hessian")
    if per_refit is None or hessian is None or task.workload is None:
        return None
    return hessian + per_refit * int(task.workload["newton_refits"])


def workload_of(task: Task, budget: int | None, engine: str, device: str = "cpu", rates: Rates | None = None,
                threads: int = 1) -> Workload | None:
    """The step a training or retraining task repeats, at its largest ensemble, with the engine the run would
    use (``--engine auto``: ``auto_engine``); None for other tasks."""
    if task.workload is None or not task.cost_steps:
        return None
    requested = task.workload.get("engine", engine)
    work = _workload(task, budget, "eager")
    if not _fixed(work.spec):
        requested = "eager"
    elif requested == "auto":
        requested = auto_engine(task, budget, device, rates, threads)
    return Workload(work.spec, work.models, requested)


def _workload(task: Task, budget: int | None, engine: str) -> Workload:
    assert task.workload is not None
    step_flops = task.flops / task.cost_steps  # one model-step
    chunk = task.typical_chunk(budget)
    models = max(1, min(chunk, CALIBRATION_MODELS, int(CALIBRATION_FLOPS // max(step_flops, 1))))
    spec = {k: v for k, v in task.workload.items() if k not in ("engine", "newton_refits", "n_train")}
    return Workload(spec, models, engine)


def _facts(spec: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """The workload's model spec and, for a study's own model, what probing its module found."""
    return _MODELS.validate_python(spec["model"]), spec.get("facts") or {}


def _fixed(spec: dict[str, Any]) -> bool:
    """The engine's own exclusions (runners.engine.fixed_structure): dropout masks and BatchNorm statistics."""
    model, facts = _facts(spec)
    return bool(facts.get("fixed", not getattr(model, "dropout", 0.0) and getattr(model, "norm", "none") != "batch"))


def measured_engines(task: Task, budget: int | None, device: str, threads: int,
                     rates: Rates) -> tuple[float, float, float] | None:
    """(eager and compiled seconds per model-step, seconds of the compile) of the task's step as measured here
    by ``inflang plan --calibrate``; None until all three are."""
    eager = rates.get(_workload(task, budget, "eager").key(device, threads))
    compiled_key = _workload(task, budget, "compiled").key(device, threads)
    compiled, compile_seconds = rates.get(compiled_key), rates.get(compiled_key + COMPILE)
    return None if eager is None or compiled is None or compile_seconds is None else (eager, compiled,
                                                                                      compile_seconds)


def auto_engine(task: Task, budget: int | None, device: str = "cpu", rates: Rates | None = None,
                threads: int = 1) -> str:
    """What ``--engine auto`` runs a training or retraining task with. Where both engines' steps and the compile
    were measured on this machine (``inflang plan --calibrate``): compiled when the seconds it saves over the
    task's model-steps exceed the compile's (``inflang.compiling.cost.compile_pays``). Otherwise by the model and the
    count (``inflang.compiling.cost.auto_compiles``): compiled where compiling was measured faster, from
    ``AUTO_MIN_MODEL_STEPS`` model-steps in its typical chunk. Always eager with dropout or BatchNorm. The run
    decides once, before its first task, and hands each task its engine (``inflang.api.execute_plan``)."""
    assert task.workload is not None
    spec = _workload(task, budget, "eager").spec
    if not _fixed(spec):
        return "eager"
    found = None if rates is None else measured_engines(task, budget, device, threads, rates)
    if found is not None:
        eager, compiled, compile_seconds = found
        return "compiled" if compile_pays(task.model_steps(budget), eager, compiled,
                                          compile_seconds * task.ensemble_sizes(budget)) else "eager"
    model, facts = _facts(spec)
    compiles = auto_compiles(task.typical_chunk(budget) * int(spec["steps"]),
                             facts.get("convolutional", model.convolutional), spec["dtype"],
                             facts.get("stacked", model.stacked), device)
    return "compiled" if compiles else "eager"


def engine_choices(tasks: list[Task], budget: int | None, device: str, threads: int, rates: Rates) -> dict[str, str]:
    """``auto_engine`` of every training and retraining task among ``tasks``, by hash."""
    return {t.hash: auto_engine(t, budget, device, rates, threads) for t in tasks if _left_to_auto(t, "auto")}


def _left_to_auto(task: Task, engine: str) -> bool:
    """Whether ``--engine auto`` picks this task's engine: the run's engine is auto, and the task trains or
    retrains without an engine of its own (base training is always eager)."""
    return (engine == "auto" and task.workload is not None and bool(task.cost_steps)
            and task.workload.get("engine", engine) == "auto")


@dataclass
class Price:
    """A task's FLOPs and its estimated seconds (None where no rate was measured)."""

    flops: float
    seconds: float | None


def price(tasks: list[Task], budget: int | None, engine: str, device: str, threads: int,
          rates: Rates) -> dict[str, Price]:
    out = {}
    for task in tasks:
        parts: list[float | None] = []
        work = workload_of(task, budget, engine, device, rates, threads)
        if work is not None:
            key = work.key(device, threads)
            rate = rates.get(key)
            compile_seconds = (rates.get(key + COMPILE) or 0.0) if work.engine == "compiled" else 0.0
            if compile_seconds >= COMPILE_FAILED:
                compile_seconds = 0.0  # compiling failed here: the run computes eagerly
            compiles = compile_seconds * task.ensemble_sizes(budget)
            parts.append(None if rate is None else rate * task.model_steps(budget) + compiles)
        refits = newton_workload_of(task)
        if refits is not None:
            parts.append(newton_seconds(task, refits, device, threads, rates))
        seconds = None if not parts or any(p is None for p in parts) else sum(p for p in parts if p is not None)
        out[task.hash] = Price(task.model_flops(budget), seconds)
    return out


def timed(task: Task) -> bool:
    """Whether pricing gives the task a time: it trains (steps) or refits by Newton."""
    return bool(task.cost_steps) or bool(task.workload and task.workload.get("newton_refits"))


def unmeasured(plan: Plan, tasks: list[Task], budget: int | None, engine: str, device: str, threads: int,
               rates: Rates) -> dict[str, Workload]:
    """The distinct workloads of ``tasks`` that have no measured rate yet, by key: for ``--engine auto``, both
    engines' steps of a task that may compile (and the compile, with the compiled one)."""
    missing: dict[str, Workload] = {}
    for task in tasks:
        works = [workload_of(task, budget, engine, device, rates, threads), newton_workload_of(task)]
        if _left_to_auto(task, engine) and _fixed(_workload(task, budget, "eager").spec):
            works += [_workload(task, budget, "eager"), _workload(task, budget, "compiled")]
        for work in works:
            if work is not None:
                key = work.key(device, threads)
                if rates.get(key) is None or (work.engine == "compiled" and rates.get(key + COMPILE) is None):
                    missing.setdefault(key, work)
    return missing


