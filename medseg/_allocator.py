"""The memory allocator of a medseg command's own process.

On CPU, PyTorch takes every tensor's memory from the C library's ``malloc``. glibc serves a
large block (above a threshold that adapts between 128 KiB and 32 MiB) with a fresh
``mmap`` and gives it back to the system when the block is freed, and it returns the free
top of its heap beyond 128 KiB; the next batch of frames then faults the same memory in
again, page by page. medseg's command-line process keeps that memory instead: blocks up to
glibc's largest threshold come from the heap, and the heap is not trimmed below
:data:`TRIM_THRESHOLD`. What it saves is measured by ``scripts/benchmark_speed.py
--allocator-ab`` (``benchmarks/speed/speed_cpu-256-pair-allocator.*``).

Only the command-line process is tuned (the ``medseg`` command and ``python -m
medseg.cli``), never a process that imports medseg as a library; ``MEDSEG_MALLOC=default``
in the environment keeps glibc's defaults (memory goes back to the system sooner). Other C
libraries (musl, macOS) have no ``mallopt``: nothing is changed there.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc's largest: blocks up to this come from the heap
TRIM_THRESHOLD = 1 << 30  # free heap kept up to this before it is given back
ENV = "MEDSEG_MALLOC"  # "default": leave glibc's thresholds as they are


def tune_allocator() -> dict[str, bool]:
    """Set glibc's thresholds for this process (see the module docstring).

    Returns:
        Per setting whether the C library took it (empty where it has no ``mallopt``).
    """
    if not sys.platform.startswith("linux") or os.environ.get(ENV) == "default":
        return {}
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's own C library
    except (OSError, AttributeError):
        return {}
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return {"mmap_threshold": mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1,
            "trim_threshold": mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1}
