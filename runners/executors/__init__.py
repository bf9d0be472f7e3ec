"""Executors run a plan's tasks in dependency order and hand results to the store (the only writer)."""

from runners.executors.local import Events, RunSummary, execute

__all__ = ["Events", "RunSummary", "execute"]
