"""The scheduler: runs a plan's tasks in dependency order on a backend; in a run, it alone writes the database and
the artifacts. Torch-free: a backend (``runners.executors.backends``) computes tasks from their
inputs and their dependencies' artifact bytes, and hands back rows and an artifact.

A task whose record says 'done' is not run again (also one that another run into the same database finishes
while this one waits to start it); its artifact is read only if a pending task needs it, and
recomputed in this process (deterministically) if it is missing or its bytes do not match the recorded
hash. A task that raises is recorded as 'failed' with its message; tasks depending on it are skipped, and
every other task goes on. Failed tasks are retried only with ``retry_failed``. After the tasks, the study's
metrics are pooled over seeds and its claims evaluated.
"""

from __future__ import annotations

import subprocess
import sys
import traceback
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

import duckdb

from inflang.compiling.cost import ENGINE_INPUT
from inflang.compiling.plan import Plan, Task
from inflang.errors import StorageError, UsageError
from inflang.results.claims import definition, evaluate
from inflang.results.diagnostics import diagnose
from inflang.results.pooling import pool_study, task_aggregates
from inflang.results.store import Store, tasks_without_aggregates
from inflang.running import artifacts

DepBytes = tuple[dict[str, Any], bytes | None]  # a finished dependency: its inputs and its artifact


class Result(Protocol):
    """What a backend returns for a computed task (``runners.entry.Done``)."""

    rows: dict[str, dict[str, list[Any]]]
    artifact: bytes | None
    seconds: float
    engine: str | None  # the retraining engines that computed it (runners.engine), None without retraining
    looped: tuple[str, ...]  # what it ran one at a time because vmap could not batch the module, and why


Compute = Callable[[str, dict[str, Any], dict[str, DepBytes]], Result]  # rebuild one task in this process


class Backend(Protocol):
    capacity: int
    device: str
    where: str
    engine: str
    reports_progress: bool

    def submit(self, key: str, kind: str, inputs: dict[str, Any], deps: dict[str, DepBytes]) -> None: ...

    def wait(self) -> list[tuple[str, Result | None, BaseException | None, float]]: ...

    def close(self) -> None: ...


class Events:
    """Progress callbacks; the CLI draws progress bars from them. The defaults do nothing."""

    def start(self, plan: Plan, pending: list[Task]) -> None: ...

    def task_started(self, task: Task) -> None: ...

    def task_finished(self, task: Task, status: str) -> None: ...

    def models_retrained(self, count: int) -> None: ...

    def notice(self, text: str) -> None:
        """A line the user should see once per run (a study's own module computed one at a time)."""
        print(f"inflang: {text}", file=sys.stderr)


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


class _Artifacts:
    """Finished tasks' artifacts: in memory, on disk, or recomputed; the driver's side of every task."""

    def __init__(self, plan: Plan, store: Store, compute: Compute, engines: Mapping[str, str] | None = None) -> None:
        self.plan, self.store, self.compute = plan, store, compute
        self.engines = engines or {}  # the engine the run hands each task (a rebuild gets it too)
        self.status = store.task_status(list(plan.tasks))
        self.cache: OrderedDict[str, bytes | None] = OrderedDict()

    def bytes_of(self, task_hash: str) -> bytes | None:
        """A finished task's artifact: from memory, from disk, or recomputed when missing or corrupt (None for
        a task that produces none)."""
        if task_hash in self.cache:
            self.cache.move_to_end(task_hash)
            return self.cache[task_hash]
        state = self.status.get(task_hash, ("", None, None))
        loaded = artifacts.load(self.store.artifacts, task_hash, state[2])
        if loaded is None and not (state[0] == "done" and state[2] is None):
            task = self.plan.tasks[task_hash]
            loaded = self.finish(task, self.compute(task.kind, self.inputs(task), self.deps(task)))
        self._remember(task_hash, loaded)
        return loaded

    def inputs(self, task: Task) -> dict[str, Any]:
        """What the task is submitted with: its inputs, and the engine the run chose for it (``ENGINE_INPUT``)."""
        if task.hash not in self.engines:
            return task.inputs
        return {**task.inputs, ENGINE_INPUT: self.engines[task.hash]}

    def deps(self, task: Task) -> dict[str, DepBytes]:
        return {h: (self.plan.tasks[h].inputs, self.bytes_of(h)) for h in task.deps}

    def _remember(self, task_hash: str, data: bytes | None) -> None:
        self.cache[task_hash] = data
        while len(self.cache) > 32:
            self.cache.popitem(last=False)

    def finish(self, task: Task, result: Result) -> bytes | None:
        """Save a finished task's artifact, then its rows and 'done' record in one transaction."""
        try:
            data = result.artifact
            sha = artifacts.save(self.store.artifacts, task.hash, data) if data is not None else None
            self.store.write_task(task.hash, task.kind, task.inputs, result.rows, result.seconds, sha,
                                  result.engine)
        except (OSError, duckdb.Error) as exc:
            reason = getattr(exc, "strerror", None) or str(exc).splitlines()[0]
            raise StorageError(f"cannot write the results of {task.kind} task {task.hash} under "
                               f"{self.store.artifacts.parent} ({reason}); the tasks finished before are saved: "
                               "free space (or fix the folder) and run the same command again") from None
        self.status[task.hash] = ("done", None, sha)
        self._remember(task.hash, data)  # downstream tasks read the saved bytes, as a resumed run would
        return data


def execute(plan: Plan, store: Store, backend: Backend, compute: Compute, *, retry_failed: bool = False,
            events: Events | None = None, threads: int = 1, engines: Mapping[str, str] | None = None) -> RunSummary:
    """Run every selected task of ``plan`` that is not already done on ``backend``; returns what ran, what was
    cached, what failed. ``compute`` rebuilds a missing dependency in this process. ``engines``: the retraining
    engine each task is handed (by hash; ``--engine auto``'s choices, inflang.compiling.pricing.engine_choices)."""
    events = events or Events()
    loaded = plan.study
    run_id = uuid.uuid4().hex[:12]
    store.start_run(run_id, loaded.study.study, backend.where, backend.device, git_commit(Path(loaded.path).parent),
                    backend.engine)
    log = RunLog(store.artifacts / "logs", run_id)
    log.line(f"run {run_id} of study '{loaded.study.study}' ({loaded.path}): {len(plan.selected_tasks())} tasks, "
             f"executor {backend.where}, device {backend.device}, engine {backend.engine}, {threads} thread(s)")
    try:
        summary = _schedule(plan, store, backend, _Artifacts(plan, store, compute, engines), retry_failed, events,
                            log)
    except BaseException as exc:
        if not isinstance(exc, UsageError):  # a database that stayed busy is not waited for a second time
            store.end_run(run_id, "interrupted", 0, 0, 0)
        log.line(f"interrupted: {type(exc).__name__}: {_message(exc)}")
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


def _schedule(plan: Plan, store: Store, backend: Backend, runner: _Artifacts, retry_failed: bool,
              events: Events, log: RunLog) -> RunSummary:
    """Submit each task once its dependencies are done, in plan order, as the backend has room."""
    loaded = plan.study
    store.record_study(
        loaded.study.study, loaded.spec_hash, loaded.spec_yaml, loaded.path,
        [(c.cell.cell_id, c.cell.repeat, c.cell.seed, c.cell.params) for c in plan.cells],
        [(c.cell.cell_id, kind, label, h) for c in plan.cells for kind, label, h in c.all()],
        loaded.study.description, [(c.name, definition(c)) for c in loaded.study.claims])
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
    noticed: set[str] = set()

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
        for key, state in store.finished_elsewhere([t.hash for t in waiting]).items():
            if state[0] == "done":  # another run into the same database finished it meanwhile
                task = plan.tasks[key]
                runner.status[key] = state
                waiting.remove(task)
                summary.cached += 1
                log.line(f"reused {task.kind} {key}: finished by another run")
                events.task_finished(task, "cached")
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
                except StorageError:
                    raise
                except Exception as exc:  # a dependency's artifact could not be rebuilt
                    record_failure(task, exc, 0.0)
                    continue
                backend.submit(task.hash, task.kind, runner.inputs(task), deps)
                running += 1
        if not running:
            continue
        for key, result, error, seconds in backend.wait():
            task = plan.tasks[key]
            running -= 1
            if error is not None or result is None:
                record_failure(task, error or RuntimeError("no result"), seconds)
                continue
            runner.finish(task, result)
            log.line(f"done {task.kind} {task.hash} in {result.seconds:.3f} s"
                     + (f" (engine: {result.engine})" if result.engine else ""))
            for sentence in getattr(result, "looped", ()):
                log.line(f"looped {task.kind} {task.hash}: {sentence}")
                if sentence not in noticed:  # once per run, however many tasks and workers
                    noticed.add(sentence)
                    events.notice(sentence)
            if not backend.reports_progress and task.kind == "ground_truth":
                events.models_retrained(task.models)
            summary.ran += 1
            events.task_finished(task, "done")
    for cell in plan.selected_cells():
        errors = [f"{plan.tasks[blocked.get(h, h)].kind} failed: {summary.failed[blocked.get(h, h)]}"
                  for _kind, _label, h in cell.all() if blocked.get(h, h) in summary.failed]
        summary.cell_status[cell.cell.cell_id] = ("failed", errors[0]) if errors else ("done", None)
    study, claims, adjust = loaded.study.study, loaded.study.claims, loaded.study.claims_adjust
    with store.transaction() as con:  # one write: readers see the cells' states and what is pooled from them
        # a cell left out by --select is done only when every task it reads is (a new estimator leaves it
        # pending), read now: another run of the study (another --select) may have finished its tasks meanwhile
        outside = [c for c in plan.cells if c.cell.cell_id not in summary.cell_status]
        now = store.task_status([h for c in outside for _kind, _label, h in c.all()])
        others: dict[str, tuple[str, str | None]] = {}
        for cell in outside:
            states = [now.get(h, ("pending", None, None)) for _kind, _label, h in cell.all()]
            failed = [f"{plan.tasks[h].kind} failed: {state[1]}" for (_kind, _label, h), state in
                      zip(cell.all(), states, strict=True) if state[0] == "failed"]
            others[cell.cell.cell_id] = (("failed", failed[0]) if failed else
                                         ("done", None) if all(state[0] == "done" for state in states) else
                                         ("pending", None))
        store.set_cell_status(study, {**others, **summary.cell_status})
        store.write_aggregates(task_aggregates(con, tasks_without_aggregates(con, study)))
        store.write_diagnostics(study, diagnose(con, plan.cells))
        store.write_pooled(study, pool_study(con, study))
        verdicts = evaluate(con, study, claims, adjust, loaded.study.test_points.select)
        store.write_claims(study, verdicts, adjust, [definition(c) for c in claims])
    return summary
