"""The runner's entry point: one call computes one task of any kind.

``run`` takes a task's kind and inputs and its dependencies' (inputs, artifact bytes), deserialises the
artifacts into tensors, computes on the requested device, and returns the task's rows and its own artifact
as bytes. The language side (``inflang.running.scheduler``) decides what runs when, stores the bytes and writes the
rows; nothing here touches the database or the plan.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from inflang.compiling.cost import ENGINE_INPUT
from runners import engine as engines
from runners.tasks import Context, Dep, run_task

DepBytes = tuple[dict[str, Any], bytes | None]  # a finished dependency: its inputs and its artifact


@dataclass
class Done:
    """A computed task: its rows (table -> column -> values), its artifact as bytes (None without arrays)."""

    rows: dict[str, dict[str, list[Any]]] = field(default_factory=dict)
    artifact: bytes | None = None
    seconds: float = 0.0
    engine: str | None = None  # the engines that retrained its ensembles ('compiled', 'eager', both joined by +),
    # followed by '(looped: ...)' where a part ran one at a time
    looped: tuple[str, ...] = ()  # what ran one at a time because vmap could not batch the module, and why


def serialise(arrays: dict[str, Tensor]) -> bytes:
    """A flat dict of CPU tensors as bytes (``torch.save``; never modules)."""
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu().contiguous() for k, v in arrays.items()}, buffer)
    return buffer.getvalue()


def deserialise(data: bytes | None) -> dict[str, Tensor]:
    """The tensors of an artifact (loaded with ``weights_only=True``)."""
    return {} if data is None else dict(torch.load(io.BytesIO(data), weights_only=True))


def run(kind: str, inputs: dict[str, Any], deps: dict[str, DepBytes], memory_budget: int | None = None,
        device: str = "cpu", progress: Callable[[int], None] | None = None, engine: str | None = None) -> Done:
    """Compute one task (see the module docstring) with retraining engine ``engine`` (eager | compiled | auto;
    None: INFLANG_ENGINE or auto), or the one the run handed the task in its inputs (``ENGINE_INPUT``)."""
    start = time.perf_counter()
    if ENGINE_INPUT in inputs:  # the engine the run chose for this task (--engine auto, inflang.compiling.pricing)
        engine = str(inputs[ENGINE_INPUT])
        inputs = {k: v for k, v in inputs.items() if k != ENGINE_INPUT}
    ready = {h: Dep(dep_inputs, deserialise(data)) for h, (dep_inputs, data) in deps.items()}
    with engines.selected(engine) as used:
        out, _ = run_task(kind, inputs, ready, Context(memory_budget=memory_budget, progress=progress,
                                                       device=device))
        looped = engines.loops()
    artifact = serialise(out.arrays) if out.arrays else None
    name = "+".join(sorted(used)) or None
    if looped:  # tasks.engine says so: the loops ran eagerly
        name = f"{name or 'eager'} (looped: {'; '.join(looped)})"
    return Done(out.rows, artifact, time.perf_counter() - start, name, looped)
