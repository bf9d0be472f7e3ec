"""Errors raised while running a task; the executor marks the cell failed with the message."""

from __future__ import annotations


class TaskFailure(Exception):
    """A run-time failure with a message that says what to change (damping, lr, steps)."""


class DivergenceError(TaskFailure):
    """Training or retraining produced a NaN or infinite loss."""


class SetupError(ValueError):
    """The run cannot start (a device that is not there, a dataset that cannot be fetched): exit 2, nothing
    written."""
