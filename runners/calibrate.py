"""Measured rates for pricing a plan (``inflang.compiling.pricing``): seconds per model-step of a task's step, and per
iteration of a Newton refit (with the seconds of its chord Hessian).

The task's model is built at its dtype on the requested device, its ensemble (``models`` copies) trained on
random inputs and labels of its shape and batch size with the engine the run would use: one step first
(compiling, where the engine compiles, and warming allocations), then ``steps`` timed steps. SGD with a small
learning rate keeps random data from diverging; the update costs the same for every optimizer to within a
few [M, P] operations.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import numpy as np
import torch
from pydantic import TypeAdapter

from inflang.spec import ModelSpec, TrainingSpec
from runners import engine as engines
from runners.curvature import objective_ggn
from runners.ensemble import UpdateRule, multiply_adds, stack, train_ensemble, weighted_cross_entropy
from runners.errors import TaskFailure
from runners.models import build
from runners.newton import chord_matrix, newton_refit
from runners.objective import FlatModel
from runners.protocols.common import Problem, RetrainSetup, default_tolerance
from runners.protocols.pbrf import newton_pbrf

_DTYPES = {"float32": torch.float32, "float64": torch.float64}
MIN_SECONDS = 0.25  # timed steps of a calibration take at least this long ...
MAX_STEPS = 256  # ... or this many steps


def _model_and_data(workload: dict[str, Any], rows: int, device: str) -> tuple[Any, torch.Tensor, torch.Tensor]:
    """The workload's model and ``rows`` random inputs and labels (targets for regression) of its shape, made on
    the CPU (a CPU generator cannot fill a CUDA tensor) and moved to ``device``."""
    dtype = _DTYPES[workload["dtype"]]
    shape = tuple(workload["shape"] or (workload["features"],))
    classes = int(workload["classes"])
    module = build(TypeAdapter(ModelSpec).validate_python(workload["model"]), shape, classes, 0, dtype).to(device)
    generator = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(rows, *shape, generator=generator, dtype=dtype, device="cpu").to(device)
    if workload.get("regression"):
        y = torch.randn(rows, classes, generator=generator, dtype=dtype, device="cpu").to(device)
    else:
        y = torch.randint(0, classes, (rows,), generator=generator, device="cpu").to(device)
    return module, x, y


def seconds_per_model_step(workload: dict[str, Any], models: int, engine: str, device: str = "cpu",
                           steps: int | None = None) -> tuple[float, str, float]:
    """(seconds one model-step takes, the engine that ran it, seconds its first call took beyond a later one:
    the compile, where the engine compiled) for ``models`` models trained together on the
    ``workload`` (``inflang.compiling.plan.Task.workload``) for ``steps`` timed steps (default: 3, or 1 when one step
    of the ensemble costs more than 1e10 FLOPs, doubled while the timed steps take under ``MIN_SECONDS``,
    up to ``MAX_STEPS``); the better of two such timings. ``auto`` compares the two engines' rates, so a rate
    from a few milliseconds of steps would decide by timer noise."""
    batch = int(workload["batch"])
    module, x, y = _model_and_data(workload, batch, device)
    dtype, shape = x.dtype, tuple(x.shape[1:])
    with torch.device(device):
        weights = torch.ones(models, batch, dtype=dtype)
        start = stack({k: v.detach() for k, v in module.named_parameters()}, models)
        chosen = engines.choose(module, models * int(workload["steps"]), engine)
        if steps is None:
            steps = 1 if 6 * batch * multiply_adds(module, shape) * models > 1e10 else 3
        rule = UpdateRule(optimizer="sgd", lr=1e-4, weight_decay=0.0, momentum=0.9)

        def train(count: int) -> float:
            began = time.perf_counter()
            train_ensemble(module, {k: v.clone() for k, v in start.items()}, x, rule, count, None,
                           [0] * models, weighted_cross_entropy(y, weights), engine=chosen)
            if x.device.type == "cuda":
                torch.cuda.synchronize(x.device)
            return time.perf_counter() - began

        first = train(1)  # builds (and compiles) everything once
        # each call also pays fixed costs (the compiled engine's one untimed step per batch shape before step
        # 0): the difference of two runs is ``steps`` steps alone
        one = min(train(1), train(1))
        seconds = max(train(steps + 1) - one, 1e-9)
        while seconds < MIN_SECONDS and steps < MAX_STEPS:
            steps = min(2 * steps, MAX_STEPS)
            seconds = max(train(steps + 1) - one, 1e-9)
        seconds = min(seconds, max(train(steps + 1) - one, 1e-9))
    return seconds / (steps * models), chosen, max(first - one, 0.0)


def seconds_per_newton_refit(workload: dict[str, Any], models: int, device: str = "cpu") -> tuple[float, float]:
    """(seconds one Newton refit takes, seconds of the chord matrix) for the workload's model on ``n_train``
    random points; a converged PBRF's (workload ``protocol: pbrf``) as ``_pbrf_refit_seconds`` says, else as a
    leave-one-out study runs them: the full objective is first solved to its optimum (not timed), its chord
    matrix taken there (``runners.newton.chord_matrix``, timed once), then ``models`` refits, each without one
    point, solved from that optimum to the study's tolerance (timed). Where the random problem has no positive
    definite optimum, the refits start from the initialisation and run 12 iterations instead."""
    n = int(workload["n_train"])
    module, x, y = _model_and_data(workload, n, device)
    dtype = x.dtype
    wd, tol = 0.01, default_tolerance(None, dtype)
    if workload.get("protocol") == "pbrf":
        with torch.device(device):
            return _pbrf_refit_seconds(module, x, y, wd, tol, models, float(workload["damping"]),
                                       int(workload["max_iter"]))
    params = {k: v.detach() for k, v in module.named_parameters()}
    with torch.device(device):
        flat = FlatModel(module, params)
        start, converged = flat.theta.detach(), False
        with contextlib.suppress(TaskFailure):  # the optimum of the full objective, by damped Newton
            H = chord_matrix(module, params, x, y, wd)
            start = newton_refit(module, params, x, y, torch.ones(1, n, dtype=dtype), wd, H, tol, 200,
                                 1.0).theta[0]
            converged = True
        optimum = flat.unflatten(start)
        began = time.perf_counter()
        H0 = chord_matrix(module, optimum, x, y, wd)
        hessian = time.perf_counter() - began
        weights = torch.ones(models, n, dtype=dtype)
        weights[torch.arange(models), torch.arange(models) % n] = 0.0
        began = time.perf_counter()
        with contextlib.suppress(TaskFailure):  # a refit that needs more than the iterations allowed
            newton_refit(module, optimum, x, y, weights, wd, H0, tol if converged else 0.0,
                         100 if converged else 12, 1e-3 if converged else 1.0)
        seconds = time.perf_counter() - began
    return seconds / models, hessian


def _pbrf_refit_seconds(module: Any, x: torch.Tensor, y: torch.Tensor, wd: float, tol: float, models: int,
                        damping: float, max_iter: int) -> tuple[float, float]:
    """(seconds one converged PBRF refit takes, seconds of its chord matrix, the Gauss-Newton matrix) on random
    data from the module's initialisation, which is the PBRF's theta_s (no optimum needed): ``models`` refits,
    the control among them, as ``runners.protocols.pbrf.newton_pbrf`` solves them with the study's damping and
    iteration limit."""
    params = {k: v.detach() for k, v in module.named_parameters()}
    training = TrainingSpec(optimizer="sgd", lr=0.1, epochs=1, weight_decay=wd)
    problem = Problem(module, RetrainSetup(params, [params], [0]), training, x, y, x[:2], y[:2])
    began = time.perf_counter()
    ggn = objective_ggn(module, params, x, y, wd)
    chord = time.perf_counter() - began
    began = time.perf_counter()
    newton_pbrf(problem, np.arange(max(models - 1, 1)) % x.shape[0], damping, tol, max_iter, "test_loss",
                strict=False, ggn=ggn)
    return (time.perf_counter() - began) / max(models, 2), chord
