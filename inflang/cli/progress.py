"""The progress of ``inflang run`` on the terminal: a bar per task kind (elapsed and remaining time), a bar of
models retrained, and at the start the price of the pending training and retraining from the rates measured
on this machine (``inflang.compiling.pricing``)."""

from __future__ import annotations

import shlex
from typing import Any

from rich.console import Console

from inflang.compiling.plan import KINDS, Plan
from inflang.running.scheduler import Events
from inflang.units import duration


def quoted(path: str) -> str:
    """A path as a shell command takes it."""
    return shlex.quote(path)


class RichEvents(Events):
    """Progress bars per task kind (elapsed and remaining time) plus a bar of models retrained; at the start,
    the price of the pending training and retraining from the rates measured here (``inflang.compiling.pricing``)."""

    def __init__(self, console: Console, pricing: tuple[int | None, str, str, int] | None = None,
                 study_path: str = "STUDY.yaml") -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.console = console
        self.progress = Progress(TextColumn("{task.description:<22}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=console,
                                 transient=False)
        self.pricing = pricing  # (memory budget, engine, device, threads)
        self.study_path = study_path  # for the command the price hint prints
        self.bars: dict[str, Any] = {}
        self.models_bar: Any = None
        self.models_total = 0
        self.models_done = 0  # planned models of the finished ground-truth tasks
        self.models_live = 0  # what the bar shows: those, and the models retrained so far in running tasks
        self.hinted = False  # whether the hint to calibrate was printed

    def _price(self, pending: list[Any]) -> None:
        if self.pricing is None:
            return
        from inflang.compiling.pricing import Rates, price, timed

        budget, engine, device, threads = self.pricing
        training = [t for t in pending if timed(t)]
        if not training:
            return
        found = price(training, budget, engine, device, threads, Rates())
        known = [p.seconds for p in found.values() if p.seconds is not None]
        if len(known) == len(training):
            self.console.print(f"priced at about {duration(sum(known))} of training and retraining here (rates "
                               "measured on this machine; estimates, metrics and unmeasured compiles come on top)",
                               highlight=False, soft_wrap=True)
            return
        if self.hinted:  # said once per command (--until-settled starts a run per round)
            return
        self.hinted = True
        missing = [t for t in training if found[t.hash].seconds is None]
        counts = [f"{n} {what} task{'s' if n != 1 else ''}" for what, n in (
            ("training", sum(t.kind == "train" for t in missing)),
            ("retraining", sum(t.kind != "train" for t in missing))) if n]
        command = f"inflang plan {quoted(self.study_path)} --calibrate" + (
            f" --device {device}" if device != "cpu" else "") + (f" --threads {threads}" if threads != 1 else "") + (
            f" --engine {engine}" if engine != "auto" else "")
        self.console.print(f"{' and '.join(counts)} have no rate measured here; {command} prices them",
                           highlight=False, markup=False, soft_wrap=True)

    def start(self, plan: Plan, pending: list[Any]) -> None:
        for bar in list(self.progress.task_ids):  # a later round of --until-settled: bars of its own tasks
            self.progress.remove_task(bar)
        self.bars, self.models_bar, self.models_total, self.models_done, self.models_live = {}, None, 0, 0, 0
        self._price(pending)
        counts = {k: 0 for k in KINDS}
        models = 0
        for t in pending:
            counts[t.kind] += 1
            models += t.models if t.kind == "ground_truth" else 0
        for kind in KINDS:
            if counts[kind]:
                self.bars[kind] = self.progress.add_task(kind, total=counts[kind])
        if models:
            self.models_bar = self.progress.add_task("models retrained", total=models)
            self.models_total = models
        self.progress.start()

    def task_started(self, task: Any) -> None: ...

    def task_finished(self, task: Any, status: str) -> None:
        if task.kind in self.bars:
            self.progress.advance(self.bars[task.kind])
        if task.kind == "ground_truth" and self.models_bar is not None:
            # the plan's count is exact except for top_k unions (an upper bound): the bar is trued up per task
            self.models_done += task.models
            self.models_live = min(self.models_done, self.models_total)
            self.progress.update(self.models_bar, completed=self.models_live)

    def models_retrained(self, count: int) -> None:
        if self.models_bar is not None:
            self.models_live = min(self.models_live + count, self.models_total)
            self.progress.update(self.models_bar, completed=self.models_live)

    def notice(self, text: str) -> None:
        self.console.print(f"inflang: {text}", markup=False, highlight=False, soft_wrap=True)

    def stop(self) -> None:
        self.progress.stop()
