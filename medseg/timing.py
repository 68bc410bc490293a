"""Wall time per named step, for the pipeline's stages and the engine's steps."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator


class Timer(dict):
    """Seconds per step, summed over repeats: ``with timer("match"): ...``."""

    @contextlib.contextmanager
    def __call__(self, step: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self[step] = self.get(step, 0.0) + time.perf_counter() - t0
