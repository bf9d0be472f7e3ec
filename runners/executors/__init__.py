"""Backends where tasks compute (this process, a process pool, Ray); the scheduler that runs them is
``inflang.running.scheduler``."""

from runners.executors.backends import InProcess, compute_here, open_backend

__all__ = ["InProcess", "compute_here", "open_backend"]
