"""Local parallelism: independent tasks in worker processes on this machine.

Each worker runs ``threads // workers`` torch threads (at least one), so workers never oversubscribe the
cores; each gets an equal share of the memory budget. Workers only compute: they receive a task's inputs
and its dependencies' arrays and send back arrays and rows; the driver writes artifacts and the database.
"""

from __future__ import annotations

import multiprocessing as mp
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any

from inflang.plan import Task
from runners.device import configure
from runners.tasks import Context, Dep, Output, run_task


def _initialise(threads: int, device: str) -> None:
    import torch

    torch.set_num_threads(threads)
    configure(device)


def run_in_worker(kind: str, inputs: dict[str, Any], deps: dict[str, Dep],
                  memory_budget: int | None, device: str = "cpu") -> tuple[Output, float]:
    return run_task(kind, inputs, deps, Context(memory_budget=memory_budget, device=device))


class ProcessPool:
    def __init__(self, workers: int, threads: int, memory_budget: int | None, device: str = "cpu") -> None:
        self.capacity = workers
        share = None if memory_budget is None else max(1, memory_budget // workers)
        self.budget = share
        self.device = device
        self.pool = ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"),
                                        initializer=_initialise, initargs=(max(1, threads // workers), device))
        self.futures: dict[Future[tuple[Output, float]], Task] = {}

    def submit(self, task: Task, deps: dict[str, Dep]) -> None:
        self.futures[self.pool.submit(run_in_worker, task.kind, task.inputs, deps, self.budget, self.device)] = task

    def wait(self) -> list[tuple[Task, Output | None, BaseException | None, float]]:
        done, _ = wait(list(self.futures), return_when=FIRST_COMPLETED)
        finished: list[tuple[Task, Output | None, BaseException | None, float]] = []
        for future in done:
            task = self.futures.pop(future)
            exc = future.exception()
            if exc is not None:
                finished.append((task, None, exc, 0.0))
            else:
                out, seconds = future.result()
                finished.append((task, out, None, seconds))
        return finished

    def close(self) -> None:
        for future in self.futures:
            future.cancel()
        self.pool.shutdown(wait=True, cancel_futures=True)
