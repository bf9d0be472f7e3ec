"""Which retraining engine computes an ensemble's steps: ``--engine eager | compiled | auto``.

``eager`` runs every operation as its own kernel (``runners.ensemble``; a plain layer stack without vmap,
``runners.stacked``); ``compiled`` fuses each step's gradient with torch.compile (``runners.compiled``).
``auto`` (the default) is decided by the run, once, before its first task, and handed to each task with its
inputs (``inflang.compiling.pricing.auto_engine``): where ``inflang plan --calibrate`` measured both engines' steps and
the compile on this machine, compiled when the seconds saved over the task's model-steps exceed the
compile's; otherwise by the model and the count (``inflang.compiling.cost.auto_compiles``: not for plain stacks on
the CPU, not for other convolutional models in float32, from ``AUTO_MIN_MODEL_STEPS`` models x steps).
Models with dropout or BatchNorm always run eagerly (the eager engine's per-step random masks and running
statistics are what make dropout runs repeat and scratch replays match). A dependency rebuilt in the driver
gets the engine its run handed it; a task computed without one (a calibration) applies the count rule to
each ensemble. A rerun or resume hands the same engines, and so computes the same bits, as long as the
machine's rates file, ``--threads`` and ``--device`` are the same: a run before and one after ``plan
--calibrate`` can choose differently (``tasks.engine`` records each task's). Every graph a task needs is
compiled before its first step; where compiling fails (no C compiler, an operation inductor cannot lower)
the task runs eagerly from the start and one line says so, once per process.

Base training (one model) always runs eager. The engine that retrained each task is reported with its rows
(``runs.engine`` names those of a run).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

from inflang.compiling.cost import ENGINES, auto_compiles
from runners import stacked
from runners.device import current as current_device
from runners.errors import SetupError

_current = os.environ.get("INFLANG_ENGINE", "auto")
_used: set[str] = set()
_looped: dict[str, str] = {}  # what the current task ran one at a time (vmap could not batch it) -> the sentence
_unavailable: str | None = None  # why compiling failed in this process, once it has


class EngineError(SetupError):
    """An --engine that is not one of ENGINES."""


def parse(name: str) -> str:
    if name not in ENGINES:
        raise EngineError(f"--engine: '{name}' is not one of {', '.join(ENGINES)}")
    return name


def current() -> str:
    return _current


@contextmanager
def selected(name: str | None) -> Iterator[set[str]]:
    """Compute under engine ``name`` (None: the process default, INFLANG_ENGINE or auto); yields the set of
    engines that trained ensembles inside, filled as they run."""
    global _current, _used, _looped
    before, used_before, looped_before = _current, _used, _looped
    _current, _used, _looped = (parse(name) if name is not None else _current), set(), {}
    try:
        yield _used
    finally:
        _current, _used, _looped = before, used_before, looped_before


def default() -> str:
    """The engine a run uses when --engine is not given: INFLANG_ENGINE, else auto."""
    name = os.environ.get("INFLANG_ENGINE", "auto")
    if name not in ENGINES:
        raise EngineError(f"INFLANG_ENGINE: '{name}' is not one of {', '.join(ENGINES)}")
    return name


def fixed_structure(module: nn.Module) -> bool:
    """No dropout and no buffers (BatchNorm statistics): the step is a pure function of the parameters."""
    stochastic = any(isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0 for m in module.modules())
    return not stochastic and not any(True for _ in module.buffers())


def choose(module: nn.Module, model_steps: int, requested: str | None = None) -> str:
    """'compiled' or 'eager' for an ensemble of ``module`` trained for ``model_steps`` models x steps."""
    name = requested or _current
    if name == "eager" or _unavailable is not None or not fixed_structure(module):
        return "eager"
    if name == "compiled":
        return "compiled"
    convolutional = any(isinstance(m, nn.modules.conv._ConvNd) for m in module.modules())
    dtype = str(next(module.parameters()).dtype).removeprefix("torch.")
    device = current_device().type  # the task's device context
    compiles = auto_compiles(model_steps, convolutional, dtype, stacked.supports(module), device)
    return "compiled" if compiles else "eager"


def record(name: str) -> None:
    _used.add(name)


def unavailable(reason: str) -> None:
    """Compiling failed in this process: say so once, compute eagerly from here on."""
    global _unavailable
    if _unavailable is None:
        _unavailable = reason
        print(f"inflang: compiled engine unavailable ({reason}); using the eager engine", file=sys.stderr)


def looped(what: str, module: nn.Module, exc: BaseException | str, then: str) -> None:
    """Record that the current task computes ``what`` (models, examples, Hessian rows) one at a time because vmap
    cannot batch ``module``: why (the error's first line, whole) and what happens instead (``then``). The task's
    rows, the run's log and one line on the terminal per run say so (``loops``; the driver prints)."""
    reason = exc if isinstance(exc, str) else first_line(exc)
    _looped.setdefault(what, f"{type(module).__name__} cannot be batched over {what} ({reason}); {then}")


def loops() -> tuple[str, ...]:
    """What the current task ran one at a time and why, one sentence per part (empty: everything was batched)."""
    return tuple(_looped.values())


def first_line(exc: BaseException) -> str:
    """An error's first line, whole (its type where it has no text)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
