"""The local executor: runs a plan's tasks in this process, in dependency order.

A task whose record says 'done' is not run again; its artifact is loaded only if a pending task needs it,
and recomputed (deterministically) if it is missing or its bytes do not match the recorded hash.
A task that raises is recorded as 'failed' with its message; tasks depending on it are skipped, and every
other task goes on. Failed tasks are retried only with ``retry_failed``.
"""

from __future__ import annotations

import subprocess
import time
import traceback
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import duckdb
import torch

from inflang.claims import evaluate
from inflang.plan import Plan, Task
from inflang.pooling import pool_study
from inflang.spec import FileDataset
from inflang.store import Store
from runners import artifacts
from runners.data.download import ensure_files
from runners.device import configure, parse, resolve
from runners.errors import StorageError
from runners.tasks import Context, Dep, Output, run_task


class Events:
    """Progress callbacks; the CLI draws progress bars from them. The defaults do nothing."""

    def start(self, plan: Plan, pending: list[Task]) -> None: ...

    def task_started(self, task: Task) -> None: ...

    def task_finished(self, task: Task, status: str) -> None: ...

    def models_retrained(self, count: int) -> None: ...


class RunLog:
    """``.inflang/logs/RUN_ID.log``: one timestamped line per task event, and the full traceback of every
    failure (the terminal shows one line); written line by line, so an interrupted run keeps its log."""

    def __init__(self, folder: Path, run_id: str) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / f"{run_id}.log"
        self.file = open(self.path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115 - closed by close()

    def line(self, text: str) -> None:
        self.file.write(f"{datetime.now(timezone.utc).isoformat(timespec='milliseconds')} {text}\n")

    def failure(self, task: Task, exc: BaseException) -> None:
        self.line(f"failed {task.kind} {task.hash}: {_message(exc)}")
        self.file.write("".join(traceback.format_exception(exc)))

    def close(self) -> None:
        self.file.close()


@dataclass
class RunSummary:
    ran: int = 0
    cached: int = 0
    failed: dict[str, str] = field(default_factory=dict)  # task hash -> error
    skipped: dict[str, str] = field(default_factory=dict)  # task hash -> the failed dependency's hash
    log: str | None = None  # the run's log file
    cell_status: dict[str, tuple[str, str | None]] = field(default_factory=dict)


class _Runner:
    """Artifacts of finished tasks: in memory, on disk, or recomputed; the driver's side of every task."""

    def __init__(self, plan: Plan, store: Store, ctx: Context) -> None:
        self.plan = plan
        self.store = store
        self.ctx = ctx
        self.status = store.task_status(list(plan.tasks))
        self.cache: OrderedDict[str, dict[str, torch.Tensor]] = OrderedDict()

    def arrays(self, task_hash: str) -> dict[str, torch.Tensor]:
        """A finished task's artifact: from memory, from disk, or recomputed when missing or corrupt."""
        if task_hash in self.cache:
            self.cache.move_to_end(task_hash)
            return self.cache[task_hash]
        sha = self.status.get(task_hash, ("", None, None))[2]
        loaded = artifacts.load(self.store.artifacts, task_hash, sha)
        if loaded is None:
            task = self.plan.tasks[task_hash]
            out, seconds = run_task(task.kind, task.inputs, self.deps(task), self.ctx)
            loaded = self.finish(task, out, seconds)
        self._remember(task_hash, loaded)
        return loaded

    def deps(self, task: Task) -> dict[str, Dep]:
        return {h: Dep(self.plan.tasks[h].inputs, self.arrays(h)) for h in task.deps}

    def _remember(self, task_hash: str, arrays: dict[str, torch.Tensor]) -> None:
        self.cache[task_hash] = arrays
        while len(self.cache) > 32:
            self.cache.popitem(last=False)

    def finish(self, task: Task, out: Output, seconds: float) -> dict[str, torch.Tensor]:
        """Save a finished task's artifact, then its rows and 'done' record in one transaction."""
        try:
            sha = artifacts.save(self.store.artifacts, task.hash, out.arrays) if out.arrays else None
            self.store.write_task(task.hash, task.kind, task.inputs, out.rows, seconds, sha)
        except (OSError, duckdb.Error) as exc:
            reason = getattr(exc, "strerror", None) or str(exc).splitlines()[0]
            raise StorageError(f"cannot write the results of {task.kind} task {task.hash} under "
                               f"{self.store.artifacts.parent} ({reason}); the tasks finished before are saved: "
                               "free space (or fix the folder) and run the same command again") from None
        self.status[task.hash] = ("done", None, sha)
        # downstream tasks read the saved copy, exactly as a resumed run would (BLAS results can depend on
        # how a tensor sits in memory, and an interrupted run must end with the same bits)
        reloaded = artifacts.load(self.store.artifacts, task.hash, sha) if out.arrays else None
        result = reloaded if reloaded is not None else out.arrays
        self._remember(task.hash, result)
        return result


Finished = tuple[Task, Output | None, BaseException | None, float]


class InProcess:
    """Runs each task as it is submitted, in this process (the default executor)."""

    capacity = 1

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.done: list[Finished] = []

    def submit(self, task: Task, deps: dict[str, Dep]) -> None:
        start = time.perf_counter()
        try:
            out, seconds = run_task(task.kind, task.inputs, deps, self.ctx)
            self.done.append((task, out, None, seconds))
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # any failure of one task: recorded by the scheduler
            self.done.append((task, None, exc, time.perf_counter() - start))

    def wait(self) -> list[Finished]:
        done, self.done = self.done, []
        return done

    def close(self) -> None: ...


def execute(plan: Plan, store: Store, *, memory_budget: int | None = None, threads: int = 1,
            retry_failed: bool = False, events: Events | None = None, workers: int = 1,
            executor: str = "local", address: str | None = None, device: str = "cpu",
            gpus_per_task: float = 1.0) -> RunSummary:
    """Run every task of ``plan`` that is not already done; returns what ran, what was cached, what failed.

    ``workers`` > 1 runs independent tasks in that many processes (``threads`` torch threads in all,
    shared among them); ``executor="ray"`` submits them to a Ray cluster (``address``, or a local one).
    ``device`` is a name ``runners.device.resolve`` accepts (cpu, cuda, cuda:N, auto).
    Only this process writes the database and the artifacts.
    """
    events = events or Events()
    torch.set_num_threads(threads)
    if executor == "ray":
        parse(device)  # resolved against the cluster's resources by the backend
    else:
        device = resolve(device)
        configure(device)
    loaded = plan.study
    for spec in {c.cell.study.dataset.model_dump_json(): c.cell.study.dataset
                 for c in plan.selected_cells()}.values():
        if isinstance(spec, FileDataset):
            ensure_files(spec)  # download: true fetches missing files here, once, before any task
    run_id = uuid.uuid4().hex[:12]
    ctx = Context(memory_budget=memory_budget, progress=events.models_retrained, device=device)
    backend: Any
    if executor == "ray":
        from runners.executors.ray import RayBackend

        backend = RayBackend(address, workers, memory_budget, device, gpus_per_task)
    elif workers > 1:
        from runners.executors.pool import ProcessPool

        backend = ProcessPool(workers, threads, memory_budget, device)
    else:
        backend = InProcess(ctx)
    where = executor if executor == "ray" else f"local x{workers}"
    device = getattr(backend, "device", device)  # Ray resolves 'auto' against the cluster
    store.start_run(run_id, loaded.study.study, where, device, git_commit(Path(loaded.path).parent))
    log = RunLog(store.artifacts / "logs", run_id)
    log.line(f"run {run_id} of study '{loaded.study.study}' ({loaded.path}): {len(plan.selected_tasks())} tasks, "
             f"executor {where}, device {device}, {threads} thread(s)")
    try:
        summary = _schedule(plan, store, backend, _Runner(plan, store, ctx), retry_failed, events, log)
    except BaseException as exc:
        store.end_run(run_id, "interrupted", 0, 0, 0)
        log.line(f"interrupted: {type(exc).__name__}")
        log.close()
        raise
    finally:
        backend.close()
    failed = sum(1 for s, _ in summary.cell_status.values() if s == "failed")
    store.end_run(run_id, "failed" if failed else "done", summary.ran, summary.cached, len(summary.failed))
    log.line(f"end: ran {summary.ran}, reused {summary.cached}, failed {len(summary.failed)}, skipped "
             f"{len(summary.skipped)}; {failed} of {len(summary.cell_status)} cells failed")
    log.close()
    summary.log = str(log.path)
    return summary


def git_commit(folder: Path) -> str | None:
    """The commit of the git repository holding the study file, if there is one."""
    try:
        found = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True,
                               timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return found.stdout.strip() or None if found.returncode == 0 else None


def _message(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _schedule(plan: Plan, store: Store, backend: Any, runner: _Runner, retry_failed: bool,
              events: Events, log: RunLog) -> RunSummary:
    """Submit each task once its dependencies are done, in plan order, as the backend has room."""
    loaded = plan.study
    store.record_study(
        loaded.study.study, loaded.spec_hash, loaded.spec_yaml, loaded.path,
        [(c.cell.cell_id, c.cell.repeat, c.cell.seed, c.cell.params) for c in plan.cells],
        [(c.cell.cell_id, kind, label, h) for c in plan.cells for kind, label, h in c.all()],
        loaded.study.description)
    summary = RunSummary()
    blocked: dict[str, str] = {}  # hash -> the failed task it depends on

    def pending(task: Task) -> bool:
        state = runner.status.get(task.hash)
        return state is None or (state[0] == "failed" and retry_failed)

    tasks = plan.selected_tasks()
    waiting = [t for t in tasks.values() if pending(t)]
    for task in tasks.values():
        if not pending(task):
            state = runner.status[task.hash]
            if state[0] == "failed":
                summary.failed[task.hash] = state[1] or "failed"
            else:
                summary.cached += 1
    events.start(plan, waiting)
    running = 0

    def failure_cause(task: Task) -> str | None:
        for d in task.deps:
            if d in blocked:
                return blocked[d]
            if d in summary.failed:
                return d
        return None

    def record_failure(task: Task, exc: BaseException, seconds: float) -> None:
        log.failure(task, exc)
        message = _message(exc)
        store.fail_task(task.hash, task.kind, task.inputs, message, seconds)
        runner.status[task.hash] = ("failed", message, None)
        summary.failed[task.hash] = message
        events.task_finished(task, "failed")

    while waiting or running:
        for task in list(waiting):
            cause = failure_cause(task)
            if cause is not None:
                blocked[task.hash] = cause
                summary.skipped[task.hash] = cause
                log.line(f"skipped {task.kind} {task.hash}: depends on failed {plan.tasks[cause].kind} {cause}")
                waiting.remove(task)
                events.task_finished(task, "skipped")
            elif running < backend.capacity and all(runner.status.get(d, ("",))[0] == "done" for d in task.deps):
                waiting.remove(task)
                events.task_started(task)
                log.line(f"start {task.kind} {task.hash}")
                try:
                    deps = runner.deps(task)
                except KeyboardInterrupt:
                    raise
                except Exception as exc:  # a dependency's artifact could not be rebuilt
                    record_failure(task, exc, 0.0)
                    continue
                backend.submit(task, deps)
                running += 1
        if not running:
            continue
        for task, out, error, seconds in backend.wait():
            running -= 1
            if error is not None or out is None:
                record_failure(task, error or RuntimeError("no result"), seconds)
                continue
            runner.finish(task, out, seconds)
            log.line(f"done {task.kind} {task.hash} in {seconds:.3f} s")
            if not isinstance(backend, InProcess) and task.kind == "ground_truth":
                events.models_retrained(task.models)
            summary.ran += 1
            events.task_finished(task, "done")
    for cell in plan.selected_cells():
        errors = [f"{plan.tasks[blocked.get(h, h)].kind} failed: {summary.failed[blocked.get(h, h)]}"
                  for _kind, _label, h in cell.all() if blocked.get(h, h) in summary.failed]
        summary.cell_status[cell.cell.cell_id] = ("failed", errors[0]) if errors else ("done", None)
    store.set_cell_status(loaded.study.study, summary.cell_status)
    store.write_pooled(loaded.study.study, pool_study(store.con, loaded.study.study))
    store.write_claims(loaded.study.study, evaluate(store.con, loaded.study.study, loaded.study.claims))
    return summary
