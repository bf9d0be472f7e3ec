"""Ray as the distributed engine: each task is a Ray task (1 CPU, and ``--gpus-per-task`` of a GPU with
``--device cuda``: a fraction such as 0.25 lets four small tasks share one GPU); the driver streams results
back and alone writes the database and the artifacts.

Point it at a cluster with ``--address`` (``ray start --head`` on one machine, ``ray start --address=HEAD``
on the others, then ``--address auto`` on the head); without an address a local Ray is started for the run.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from runners.device import DeviceError, configure, parse
from runners.entry import DepBytes, Done
from runners.errors import SetupError
from runners.executors.pool import run_in_worker


def _one_thread(kind: str, inputs: dict[str, Any], deps: dict[str, DepBytes],
                memory_budget: int | None, device: str, engine: str | None = None) -> Done:
    import torch

    torch.set_num_threads(1)
    configure("cuda" if device.startswith("cuda") else device)  # the allocator too, on every worker
    if device.startswith("cuda"):
        device = "cuda:0"  # Ray makes the GPU it assigned the task the only visible one
    return run_in_worker(kind, inputs, deps, memory_budget, device, engine)


REACH_SECONDS = 10.0  # how long an --address may take to answer before the run gives up


def check_reachable(address: str, timeout: float = REACH_SECONDS) -> None:
    """Fail within ``timeout`` seconds, with one line, when nothing answers at a host:port address (Ray itself
    would retry for minutes). 'auto' and 'local' are Ray's own lookups and are not checked here."""
    if address in ("auto", "local"):
        return
    target = address.split("://", 1)[-1].rstrip("/")
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise SetupError(f"--address {address}: expected HOST:PORT (e.g. 10.0.0.5:6379), 'auto' or ray://HOST:PORT")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as exc:
        raise SetupError(f"--address {address}: nothing answers at {host}:{port} ({exc.strerror or exc}); start "
                         "the cluster with 'ray start --head' there, or check the address") from None


class RayBackend:
    reports_progress = False  # the scheduler counts a retraining task's models when it finishes

    def __init__(self, address: str | None, workers: int, memory_budget: int | None, device: str = "cpu",
                 gpus_per_task: float = 1.0, engine: str | None = None, code_folder: str | None = None) -> None:
        import ray

        self.ray = ray
        self.started = not ray.is_initialized()
        if self.started:
            options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
            if address is None:
                options["num_cpus"] = max(1, workers)
            else:
                check_reachable(address)
                os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "error")  # no wall of retry warnings
                if code_folder is not None:  # the study's own modules, for nodes that do not share this disk
                    options["runtime_env"] = {"working_dir": code_folder}
            try:
                ray.init(address=address, **options)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                hint = ("no Ray cluster is running here; start one with 'ray start --head', or leave out "
                        "--address to run a local Ray" if address == "auto" else "check the address")
                raise SetupError(f"--address {address}: Ray could not connect ({first}); {hint}") from None
        cpus = int(ray.cluster_resources().get("CPU", 1))
        self.capacity = max(1, cpus)
        self.budget = memory_budget
        gpus_here = ray.cluster_resources().get("GPU", 0)
        device = parse(device)
        if device == "auto":
            device = "cuda" if gpus_here else "cpu"
        if device.startswith("cuda") and not gpus_here:
            raise DeviceError(f"--device {device}: the Ray cluster has no GPU (resources: "
                              f"{ray.cluster_resources()})")
        self.device = device
        gpus = gpus_per_task if device.startswith("cuda") else 0  # fractions share one GPU among small tasks
        self.remote = ray.remote(num_cpus=1, num_gpus=gpus)(_one_thread)
        self.refs: dict[Any, str] = {}
        self.engine = engine

    def submit(self, key: str, kind: str, inputs: dict[str, Any], deps: dict[str, DepBytes]) -> None:
        self.refs[self.remote.remote(kind, inputs, deps, self.budget, self.device, self.engine)] = key

    def wait(self) -> list[tuple[str, Done | None, BaseException | None, float]]:
        ready, _ = self.ray.wait(list(self.refs), num_returns=1)
        finished: list[tuple[str, Done | None, BaseException | None, float]] = []
        for ref in ready:
            key = self.refs.pop(ref)
            try:
                result = self.ray.get(ref)
                finished.append((key, result, None, result.seconds))
            except self.ray.exceptions.RayTaskError as exc:
                finished.append((key, None, getattr(exc, "cause", None) or exc, 0.0))
        return finished

    def close(self) -> None:
        for ref in self.refs:
            self.ray.cancel(ref)
        if self.started:
            self.ray.shutdown()
