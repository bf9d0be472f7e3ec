"""Where tasks compute: in this process, in a pool of worker processes, or on Ray. Every backend takes
(key, kind, inputs, dependencies' (inputs, artifact bytes)) and returns ``runners.entry.Done`` results; the
scheduler on the language side (``inflang.running.scheduler``) decides what to submit and alone writes the
database and the artifacts.

``open_backend`` also sets the process up for computing: torch threads, the device (resolved and configured:
TF32 off, deterministic kernels) and the data files a study needs (``download: true``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from inflang.spec import AnyDataset, FileDataset
from runners import engine as engines
from runners.data.download import ensure_files
from runners.device import configure, parse, resolve
from runners.entry import DepBytes, Done, run

Finished = tuple[str, Done | None, BaseException | None, float]  # key, result, failure, seconds


class InProcess:
    """Runs each task as it is submitted, in this process (the default)."""

    capacity = 1

    def __init__(self, memory_budget: int | None, device: str, progress: Callable[[int], None] | None,
                 engine: str | None = None) -> None:
        self.budget, self.device, self.progress, self.engine = memory_budget, device, progress, engine
        self.done: list[Finished] = []
        self.reports_progress = True  # models_retrained is reported while a task runs

    def submit(self, key: str, kind: str, inputs: dict[str, Any], deps: dict[str, DepBytes]) -> None:
        start = time.perf_counter()
        try:
            self.done.append((key, run(kind, inputs, deps, self.budget, self.device, self.progress, self.engine),
                              None, time.perf_counter() - start))
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # any failure of one task: the scheduler records it
            self.done.append((key, None, exc, time.perf_counter() - start))

    def wait(self) -> list[Finished]:
        done, self.done = self.done, []
        return done

    def close(self) -> None: ...


def open_backend(executor: str, workers: int, threads: int, memory_budget: int | None, device: str,
                 address: str | None, gpus_per_task: float, datasets: Sequence[AnyDataset],
                 progress: Callable[[int], None] | None = None, engine: str | None = None,
                 code_folder: str | None = None) -> Any:
    """A backend for ``executor`` (local, or ray) with ``workers`` processes, after setting this process up
    and fetching the datasets' missing files (``download: true``). Its ``device`` is the resolved device, its
    ``engine`` the retraining engine (``runners.engine``; None: INFLANG_ENGINE or auto). ``code_folder``: the
    folder a study's own modules are in; local workers import them from there, and a Ray cluster receives it
    as the tasks' working directory (``runners.custom``)."""
    engine = engines.parse(engine) if engine is not None else engines.default()
    torch.set_num_threads(threads)
    if executor == "ray":
        parse(device)  # resolved against the cluster's resources by the backend
    else:
        device = resolve(device)
        configure(device)
    for spec in {d.model_dump_json(): d for d in datasets}.values():
        if isinstance(spec, FileDataset):
            ensure_files(spec)  # download: true fetches missing files here, once, before any task
    backend: Any
    if executor == "ray":
        from runners.executors.ray import RayBackend

        backend = RayBackend(address, workers, memory_budget, device, gpus_per_task, engine, code_folder)
    elif workers > 1:
        from runners.executors.pool import ProcessPool

        backend = ProcessPool(workers, threads, memory_budget, device, engine)
    else:
        backend = InProcess(memory_budget, device, progress, engine)
    backend.device = getattr(backend, "device", device)
    backend.engine = engine
    backend.where = "ray" if executor == "ray" else f"local x{workers}"
    return backend


def compute_here(memory_budget: int | None, device: str,
                 engine: str | None = None) -> Callable[[str, dict[str, Any], dict[str, DepBytes]], Done]:
    """Compute one task in this process (the scheduler rebuilds a missing dependency this way)."""
    return lambda kind, inputs, deps: run(kind, inputs, deps, memory_budget, device, engine=engine)
