"""Local parallelism: independent tasks in worker processes on this machine.

Each worker runs ``threads // workers`` torch threads (at least one), so workers never oversubscribe the
cores; each gets an equal share of the memory budget. Workers only compute: they receive a task's inputs
and its dependencies' artifacts (bytes) and send back rows and an artifact; the driver writes artifacts and
the database.
"""

from __future__ import annotations

import multiprocessing as mp
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any

from runners.device import configure
from runners.entry import DepBytes, Done, run


def _initialise(threads: int, device: str) -> None:
    import torch

    torch.set_num_threads(threads)
    configure(device)


def run_in_worker(kind: str, inputs: dict[str, Any], deps: dict[str, DepBytes], memory_budget: int | None,
                  device: str = "cpu", engine: str | None = None) -> Done:
    return run(kind, inputs, deps, memory_budget, device, engine=engine)


class ProcessPool:
    reports_progress = False  # the scheduler counts a retraining task's models when it finishes

    def __init__(self, workers: int, threads: int, memory_budget: int | None, device: str = "cpu",
                 engine: str | None = None) -> None:
        self.capacity = workers
        share = None if memory_budget is None else max(1, memory_budget // workers)
        self.budget = share
        self.device, self.engine = device, engine
        self.pool = ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"),
                                        initializer=_initialise, initargs=(max(1, threads // workers), device))
        self.futures: dict[Future[Done], str] = {}

    def submit(self, key: str, kind: str, inputs: dict[str, Any], deps: dict[str, DepBytes]) -> None:
        self.futures[self.pool.submit(run_in_worker, kind, inputs, deps, self.budget, self.device,
                                       self.engine)] = key

    def wait(self) -> list[tuple[str, Done | None, BaseException | None, float]]:
        done, _ = wait(list(self.futures), return_when=FIRST_COMPLETED)
        finished: list[tuple[str, Done | None, BaseException | None, float]] = []
        for future in done:
            key = self.futures.pop(future)
            exc = future.exception()
            if exc is not None:
                finished.append((key, None, exc, 0.0))
            else:
                result = future.result()
                finished.append((key, result, None, result.seconds))
        return finished

    def close(self) -> None:
        for future in self.futures:
            future.cancel()
        self.pool.shutdown(wait=True, cancel_futures=True)
