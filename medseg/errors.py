"""Errors a user can act on, each with the exit code the CLI returns for it.

Exit codes (also documented in README.md):

====  =====================================================================
0     success
1     unexpected internal error (a bug: please report it with ``-v`` output)
2     usage error (unknown option, bad option value)
3     invalid input (missing/unreadable/unsupported image or label, bad geometry)
4     output problem (exists without ``--overwrite``, not writable, disk full)
5     runtime or device problem (CUDA/MPS not available, out of memory)
6     model problem (checkpoint missing, corrupt, wrong size, offline download)
7     cohort: some queries failed (the others were segmented; see the summary)
130   interrupted (Ctrl-C); no partial output is left behind
143   terminated (SIGTERM, e.g. from a scheduler or ``timeout``); as Ctrl-C
====  =====================================================================
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_INPUT = 3
EXIT_OUTPUT = 4
EXIT_RUNTIME = 5
EXIT_MODEL = 6
EXIT_PARTIAL = 7
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143


class MedsegError(Exception):
    """Base class: a problem the user can fix; ``str(err)`` is the one-line message.

    ``option`` names the library option the message is about (``"mode"``, ``"window"``),
    so the command line can name its own flag (``--mode``) instead.
    """

    exit_code = EXIT_INTERNAL

    def __init__(self, message: str = "", *, option: str | None = None):
        super().__init__(message)
        self.option = option


class UsageError(MedsegError):
    """An option value that cannot work (e.g. a malformed ``--window``)."""

    exit_code = EXIT_USAGE


class InputError(MedsegError):
    """An input image or label cannot be used as given."""

    exit_code = EXIT_INPUT


class OutputError(MedsegError):
    """An output cannot be written (exists, not writable, no space)."""

    exit_code = EXIT_OUTPUT


class DeviceError(MedsegError):
    """The requested compute device is unavailable or ran out of memory."""

    exit_code = EXIT_RUNTIME


class ModelError(MedsegError):
    """A SAM2 checkpoint is missing, corrupt, mismatched or cannot be downloaded."""

    exit_code = EXIT_MODEL


class CohortFailures(MedsegError):
    """Some queries of a cohort failed; the rest were segmented."""

    exit_code = EXIT_PARTIAL


_OOM = ("can't allocate memory", "cannot allocate memory", "bad_alloc", "failed to allocate",
        "out of memory", "memoryerror", "failed to map segment", "defaultcpuallocator")


def is_out_of_memory(exc: BaseException) -> bool:
    """An exception that, whatever its type, says the machine ran out of memory (torch's
    allocator, ITK, the dynamic loader under an address-space limit, numpy)."""
    if isinstance(exc, MemoryError):
        return True
    text = f"{type(exc).__name__}: {exc}".lower()
    return any(k in text for k in _OOM)
