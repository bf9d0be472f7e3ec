"""The local executor: runs a plan's tasks in this process, in dependency order.

A task whose record says 'done' is not run again; its artifact is loaded only if a pending task needs it,
and recomputed (deterministically) if it is missing or its bytes do not match the recorded hash.
A task that raises is recorded as 'failed' with its message; tasks depending on it are skipped, and every
other task goes on. Failed tasks are retried only with ``retry_failed``.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import torch

from inflang.plan import Plan, Task
from inflang.store import Store
from runners import artifacts
from runners.tasks import Context, Dep, run_task


class Events:
    """Progress callbacks; the CLI draws progress bars from them. The defaults do nothing."""

    def start(self, plan: Plan, pending: list[Task]) -> None: ...

    def task_started(self, task: Task) -> None: ...

    def task_finished(self, task: Task, status: str) -> None: ...

    def models_retrained(self, count: int) -> None: ...


@dataclass
class RunSummary:
    ran: int = 0
    cached: int = 0
    failed: dict[str, str] = field(default_factory=dict)  # task hash -> error
    skipped: dict[str, str] = field(default_factory=dict)  # task hash -> the failed dependency's hash
    cell_status: dict[str, tuple[str, str | None]] = field(default_factory=dict)


class _Runner:
    def __init__(self, plan: Plan, store: Store, ctx: Context, events: Events) -> None:
        self.plan = plan
        self.store = store
        self.ctx = ctx
        self.events = events
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
            loaded = self.compute(self.plan.tasks[task_hash])
        self._remember(task_hash, loaded)
        return loaded

    def _remember(self, task_hash: str, arrays: dict[str, torch.Tensor]) -> None:
        self.cache[task_hash] = arrays
        while len(self.cache) > 32:
            self.cache.popitem(last=False)

    def compute(self, task: Task) -> dict[str, torch.Tensor]:
        deps = {h: Dep(self.plan.tasks[h].inputs, self.arrays(h)) for h in task.deps}
        out, seconds = run_task(task.kind, task.inputs, deps, self.ctx)
        sha = artifacts.save(self.store.artifacts, task.hash, out.arrays) if out.arrays else None
        self.store.write_task(task.hash, task.kind, task.inputs, out.rows, seconds, sha)
        self.status[task.hash] = ("done", None, sha)
        # downstream tasks read the saved copy, exactly as a resumed run would (BLAS results can depend on
        # how a tensor sits in memory, and an interrupted run must end with the same bits)
        reloaded = artifacts.load(self.store.artifacts, task.hash, sha) if out.arrays else None
        return reloaded if reloaded is not None else out.arrays


def execute(plan: Plan, store: Store, *, memory_budget: int | None = None, threads: int = 1,
            retry_failed: bool = False, events: Events | None = None) -> RunSummary:
    """Run every task of ``plan`` that is not already done; returns what ran, what was cached, what failed."""
    events = events or Events()
    torch.set_num_threads(threads)
    loaded = plan.study
    run_id = uuid.uuid4().hex[:12]
    store.start_run(run_id, loaded.study.study, "local", "cpu", git_commit(Path(loaded.path).parent))
    try:
        summary = _execute(plan, store, memory_budget, retry_failed, events)
    except BaseException:
        store.end_run(run_id, "interrupted", 0, 0, 0)
        raise
    failed = sum(1 for s, _ in summary.cell_status.values() if s == "failed")
    store.end_run(run_id, "failed" if failed else "done", summary.ran, summary.cached, len(summary.failed))
    return summary


def git_commit(folder: Path) -> str | None:
    """The commit of the git repository holding the study file, if there is one."""
    try:
        found = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True,
                               timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return found.stdout.strip() or None if found.returncode == 0 else None


def _execute(plan: Plan, store: Store, memory_budget: int | None, retry_failed: bool, events: Events) -> RunSummary:
    loaded = plan.study
    store.record_study(
        loaded.study.study, loaded.spec_hash, loaded.spec_yaml, loaded.path,
        [(c.cell.cell_id, c.cell.repeat, c.cell.seed, c.cell.params) for c in plan.cells],
        [(c.cell.cell_id, kind, label, h) for c in plan.cells for kind, label, h in c.all()],
        loaded.study.description)
    ctx = Context(memory_budget=memory_budget, progress=events.models_retrained)
    runner = _Runner(plan, store, ctx, events)
    summary = RunSummary()
    blocked: dict[str, str] = {}  # hash -> root failure hash

    def pending(task: Task) -> bool:
        state = runner.status.get(task.hash)
        return state is None or (state[0] == "failed" and retry_failed)

    todo = [t for t in plan.tasks.values() if pending(t)]
    events.start(plan, todo)
    for task in plan.tasks.values():
        state = runner.status.get(task.hash)
        cause = next((blocked.get(d, d) for d in task.deps if d in blocked or d in summary.failed), None)
        if cause is None:
            cause = next((d for d in task.deps if runner.status.get(d, ("",))[0] == "failed"), None)
        if cause is not None:
            blocked[task.hash] = blocked.get(cause, cause)
            summary.skipped[task.hash] = blocked[task.hash]
            if task in todo:
                events.task_finished(task, "skipped")
            continue
        if not pending(task):
            if state is not None and state[0] == "failed":
                summary.failed[task.hash] = state[1] or "failed"
            else:
                summary.cached += 1
            continue
        events.task_started(task)
        start = time.perf_counter()
        try:
            runner._remember(task.hash, runner.compute(task))
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # any failure of one task: record it and go on with the others
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            store.fail_task(task.hash, task.kind, task.inputs, message, time.perf_counter() - start)
            runner.status[task.hash] = ("failed", message, None)
            summary.failed[task.hash] = message
            events.task_finished(task, "failed")
            continue
        summary.ran += 1
        events.task_finished(task, "done")
    for cell in plan.cells:
        errors = []
        for _kind, _label, h in cell.all():
            root = blocked.get(h, h)
            if root in summary.failed:
                failed_kind = plan.tasks[root].kind
                errors.append(f"{failed_kind} failed: {summary.failed[root]}")
        summary.cell_status[cell.cell.cell_id] = ("failed", errors[0]) if errors else ("done", None)
    store.set_cell_status(loaded.study.study, summary.cell_status)
    return summary
