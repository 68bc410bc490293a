"""A call running in a daemon thread, and waiting for it in a way a signal cannot break.

medseg overlaps work in threads (the query is read while the supports are, the model loads
while the scans are read, a cohort writes one query while it segments the next) and turns
Ctrl-C and SIGTERM into exceptions in the main thread. ``concurrent.futures.Future`` waits
on a condition written in Python: a signal handler that raises between two of its lines
can leave the condition's lock released under the ``with`` that holds it, and the wait ends
in ``RuntimeError: release unlocked lock`` instead of the interruption. :class:`Pending`
waits with ``Thread.join``, which the interpreter keeps whole when interrupted.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Pending(Generic[T]):
    """``fn(*args)`` started in a daemon thread (one the interpreter does not wait for at
    exit, so a step that hangs cannot keep the process alive); :meth:`result` waits for it.

    Args:
        fn: the call.
        args: its arguments.
        name: the thread's name (seen in a debugger or a traceback dump).
    """

    def __init__(self, fn: Callable[..., T], *args: Any, name: str = "medseg") -> None:
        self._value: T | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._work, args=(fn, *args), daemon=True,
                                        name=name)
        self._thread.start()

    def _work(self, fn: Callable[..., T], *args: Any) -> None:
        try:
            self._value = fn(*args)
        except BaseException as exc:  # noqa: BLE001 - raised by result()
            self._error = exc

    def done(self) -> bool:
        """Whether the call has returned or raised."""
        return not self._thread.is_alive()

    def result(self, timeout: float | None = None) -> T:
        """The call's value, once it returns.

        Args:
            timeout: seconds to wait at most (None: as long as it takes).

        Returns:
            What the call returned.

        Raises:
            TimeoutError: the call is still running after ``timeout`` seconds.
            BaseException: what the call raised.
        """
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"still running after {timeout:g} s")
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]
