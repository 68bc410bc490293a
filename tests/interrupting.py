"""Interrupting a call where a signal handler would: what Ctrl-C or medseg's SIGTERM
handler does to the main thread, at every point in turn."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import Any


class Interrupt(Exception):
    """What a signal handler raises (``KeyboardInterrupt``, medseg's ``Terminated``)."""


def interrupted_at(k: int, call: Callable[[], Any]) -> bool:
    """``call()`` with :class:`Interrupt` raised at its k-th point where the interpreter runs
    signal handlers (a Python function's start, a C function's return), the import system's
    own code left alone; whether it was raised before ``call`` returned."""
    seen = 0

    def profile(frame, event, arg):
        nonlocal seen
        if event in ("call", "c_return") and not frame.f_code.co_filename.startswith("<"):
            seen += 1
            if seen == k:
                raise Interrupt

    sys.setprofile(profile)
    try:
        call()
    except Interrupt:
        return True
    finally:
        sys.setprofile(None)
    return False


def free(lock: Any, wait: float = 5.0) -> bool:
    """Whether another thread can take ``lock`` (within ``wait`` seconds)."""
    took = threading.Event()

    def take() -> None:
        with lock:
            took.set()

    threading.Thread(target=take, daemon=True).start()
    return took.wait(wait)
