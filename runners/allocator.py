"""The C allocator's settings for a process that computes: freed tensor memory is kept for the next step.

glibc serves an allocation above its mmap threshold (128 KiB at start) from fresh pages and gives freed memory
at the top of the heap back to the system above its trim threshold. A training step allocates and frees the
same few activation tensors (0.1-10 MB each for an ensemble) every step, so every step paid the page faults
of touching fresh memory: on the Iris MLP ensemble of ``benchmarks/retrain.py`` that made elementwise kernels
several times slower than on warm memory. ``keep_freed_memory`` raises the mmap threshold to glibc's maximum
(32 MiB) and the trim threshold to 1 GiB, so those tensors come from memory the process already touched. The
cost is memory: up to 1 GiB of freed memory (more with fragmentation) stays with each process that computes,
every worker and the driver (``inflang.run`` in a notebook sets it for the notebook's process), outside
``--memory-budget``. ``INFLANG_KEEP_FREED_MEMORY=0`` leaves the allocator as it is. Bits do not change (torch
aligns every tensor to 64 bytes either way). Other C libraries (musl, macOS) are left as they are.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3  # mallopt's parameters (malloc.h)
MMAP_THRESHOLD = 32 << 20  # glibc's largest on 64-bit systems
TRIM_THRESHOLD = 1 << 30
TOP_PAD = 64 << 20


@functools.cache
def keep_freed_memory() -> bool:
    """Apply the settings once per process; whether they took (False where the C library is not glibc, or with
    ``INFLANG_KEEP_FREED_MEMORY=0`` in the environment)."""
    if os.environ.get("INFLANG_KEEP_FREED_MEMORY", "1") == "0":
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return all(mallopt(key, value) == 1 for key, value in ((M_MMAP_THRESHOLD, MMAP_THRESHOLD),
                                                           (M_TRIM_THRESHOLD, TRIM_THRESHOLD),
                                                           (M_TOP_PAD, TOP_PAD)))
