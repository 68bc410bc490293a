"""Wall time per named step, for the pipeline's stages and the engine's steps, and what
the user sees of them: a status line per stage on a terminal, a log line with its time
under ``-v``."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator

log = logging.getLogger("medseg")

STAGE_WORDS = {  # what a stage is doing, as the status line says it
    "load": "reading the scans", "frames": "cutting frames", "complete": "completing the "
    "painted structures through the support scan", "locate": "relating the query to the "
    "support (slice correspondence)", "support": "placing the support slices, building the "
    "banks", "match": "matching query slices with the bank", "propagate": "segmenting",
    "postprocess": "cleaning up", "write": "writing the outputs"}


class Timer(dict):
    """Seconds per step, summed over repeats: ``with timer("match"): ...``; ``notify`` is
    told when a step starts (seconds None) and ends (its seconds)."""

    def __init__(self, notify: Callable[[str, float | None], None] | None = None) -> None:
        super().__init__()
        self.notify = notify

    @contextlib.contextmanager
    def __call__(self, step: str) -> Iterator[None]:
        if self.notify:
            self.notify(step, None)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            dt = time.perf_counter() - t0
            self[step] = self.get(step, 0.0) + dt
            if self.notify:
                self.notify(step, dt)


def stage_reporter(show: bool) -> Callable[[str, float | None], None]:
    """Status lines on a terminal (``show`` and stderr is one), and a log line per stage
    with its time (seen with ``-v``)."""
    tty = show and sys.stderr.isatty() and not os.environ.get("MEDSEG_NO_PROGRESS")

    def notify(step: str, seconds: float | None) -> None:
        words = STAGE_WORDS.get(step, step)
        if seconds is None:
            if tty:
                sys.stderr.write(f"\r\x1b[K  {words} ...")
                sys.stderr.flush()
            return
        if tty:
            sys.stderr.write(f"\r\x1b[K  {words}: {seconds:.1f} s\n")
            sys.stderr.flush()
        log.info("stage %s: %.2f s", step, seconds)

    return notify
