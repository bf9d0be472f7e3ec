"""Where tasks compute: ``--device cpu | cuda | cuda:N | auto``, and the numerics settings each device gets.

CPU runs are bit-identical across reruns (tested). On CUDA, TF32 is switched off for matrix products and
convolutions (influence needs full float32, and float64 studies must never be rounded to TF32), cuDNN is
made deterministic and ``torch.use_deterministic_algorithms`` is on (warning where an operation has no
deterministic kernel); results then repeat on the same GPU and software, but differ from CPU results in
the last bits (different kernels). Seeded draws are made on the CPU and moved (``generator``, ``here``), so
every device starts from the same weights and batch orders.
"""

from __future__ import annotations

import os
import re

import torch

from runners.allocator import keep_freed_memory
from runners.errors import SetupError


class DeviceError(SetupError):
    """A --device that does not exist here."""


def parse(name: str) -> str:
    """The name checked for form only: cpu | cuda | cuda:N | auto."""
    if name not in ("cpu", "auto") and re.fullmatch(r"cuda(?::\d+)?", name) is None:
        raise DeviceError(f"--device: '{name}' is not one of cpu, cuda, cuda:N, auto")
    return name


def resolve(name: str) -> str:
    """'cpu', 'cuda' (device 0), 'cuda:N' or 'auto' (cuda:0 when CUDA is available, else cpu) -> a device
    of this machine."""
    parse(name)
    if name == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return "cpu"
    match = re.fullmatch(r"cuda(?::(\d+))?", name)
    assert match is not None
    if not torch.cuda.is_available():
        raise DeviceError(f"--device {name}: no CUDA device is available here (torch {torch.__version__}, "
                          f"CUDA build: {torch.version.cuda or 'no'}); use --device cpu or auto")
    index = int(match.group(1) or 0)
    if index >= torch.cuda.device_count():
        raise DeviceError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    return f"cuda:{index}"


def configure(device: str) -> None:
    """Numerics and allocator settings for ``device``, applied once per process before it computes."""
    keep_freed_memory()  # runners.allocator: activations reuse warm memory step after step
    if not device.startswith("cuda"):
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True, warn_only=True)


DEVICE_SHARE = 4  # a chunk of gradients or Hessian-vector products may take 1/DEVICE_SHARE of a GPU's memory


def chunk_bytes(device: torch.device, cpu_budget: int) -> int:
    """Bytes one chunk of per-example gradients or Hessian-vector products may hold on ``device``: the CPU's
    fixed ``cpu_budget``, or on a GPU 1/DEVICE_SHARE of its total memory (at least ``cpu_budget``). The total,
    not the free memory: free memory changes from run to run, and a chunking that changed with it would change
    the last bits of the sums over chunks, which a rerun on the same GPU must repeat."""
    if device.type != "cuda":
        return cpu_budget
    return max(cpu_budget, int(torch.cuda.get_device_properties(device).total_memory) // DEVICE_SHARE)


def generator(seed: int) -> torch.Generator:
    """A seeded CPU generator: random draws (batch orders, probes, projections, initialisations) are made on
    the CPU and moved to the task's device with ``here``, so every device sees the same random numbers."""
    return torch.Generator(device="cpu").manual_seed(seed)


def current() -> torch.device:
    """The device new tensors are created on (the task's ``torch.device`` context; CPU by default). Read from
    a new tensor rather than ``torch.get_default_device``, which torch 2.2 lacks."""
    return torch.empty(0).device


def here(t: torch.Tensor) -> torch.Tensor:
    """``t`` on the device tensors are created on in this task."""
    return t.to(current())
